"""A checkpoint back in memory: its train state, config, task meta and model.

Below every command line (evaluate, search, export, the study runners): a
checkpoint is self-contained (metricjax/checkpoint.py saves the config and
the task's meta beside the state), so restoring needs only the workdir.
"""

import json
import math
import os
from types import ModuleType
from typing import Any, NamedTuple

import flax.linen as nn
import jax
from jax.sharding import Mesh
import ml_collections

from metricjax import checkpoint
from metricjax import config_check
from metricjax import config_utils
from metricjax import parallel
from metricjax import state as state_lib
from metricjax import tasks
from metricjax.errors import UserError


class Restored(NamedTuple):
  step: int
  config: ml_collections.ConfigDict
  meta: Any  # The task's Meta.
  task: ModuleType
  model: nn.Module
  state: state_lib.TrainState
  mesh: Mesh


def restore(workdir: str, step: int | None = None) -> Restored:
  """A checkpoint (default: the latest) with its config, meta and model."""
  mngr = checkpoint.manager(workdir, create=False)
  step = checkpoint.resolve_step(mngr, step)
  saved = checkpoint.restore_meta(mngr, step)
  # Fields added since the checkpoint was written take their defaults.
  config = config_utils.with_defaults(saved["config"])
  try:
    config_check.validate(config)
  except UserError as e:
    raise UserError(f"The config saved with {workdir} (step {step}) is not "
                    f"valid for this version of metricjax: {e}") from None
  task = tasks.of(config)
  meta = task.Meta.from_dict(saved)

  mesh = parallel.create_mesh()
  model, init = task.make_model_and_init(config, meta, state_lib.create_optimizer(config))
  abstract = jax.eval_shape(init, jax.random.key(0))
  state = checkpoint.restore_state(
      mngr, step, checkpoint.abstract_like(abstract, parallel.replicated(mesh)))
  mngr.close()
  return Restored(step, config, meta, task, model, state, mesh)


def best_step(workdir: str, metric: str) -> int:
  """The checkpointed step whose logged `metric` (e.g. val_rsum) is highest.

  Model selection on validation: train with checkpoint_every = eval_every
  so that every validated step has a checkpoint. Ties go to the earliest.
  """
  mngr = checkpoint.manager(workdir, create=False)
  saved = set(mngr.all_steps())
  mngr.close()
  path = os.path.join(workdir, "metrics.jsonl")
  rows = []
  if os.path.exists(path):
    with open(path) as f:
      rows = [json.loads(line) for line in f]
  logged = [(r[metric], r["step"]) for r in rows
            if r.get(metric) is not None and math.isfinite(r[metric])]
  candidates = [(v, -s) for v, s in logged if s in saved]
  if not candidates:
    raise UserError(
        f"No checkpoint of {workdir} has a logged {metric!r} (logged at steps "
        f"{sorted(s for _, s in logged) or 'none'}; checkpoints at "
        f"{sorted(saved) or 'none'}). Train with config.checkpoint_every = "
        "config.eval_every and keep_checkpoints large enough to keep them.")
  return -max(candidates)[1]

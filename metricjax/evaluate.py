r"""Evaluation CLI: checkpoint -> metrics.

  python -m metricjax.evaluate --workdir=DIR [--step=N | --select=val_rsum]
      [--split=test]

Restores the checkpoint with the config and dataset description saved in it,
embeds the evaluation split, and writes DIR/eval/step_N.json (metrics,
num_params, param_bytes, dataset and split sizes, step, config) plus a table
on stdout.
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
from absl import app
from absl import flags

from metricjax import checkpoint
from metricjax import cli
from metricjax import io
from metricjax import models
from metricjax import parallel
from metricjax import state as state_lib
from metricjax import tasks
from metricjax.errors import UserError, exit_on_user_error, parse_flags_or_exit

FLAGS = flags.FLAGS


def _define_flags():
  flags.DEFINE_string("workdir", None, "A directory written by metricjax.train.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("select", None,
                      "Evaluate the checkpoint with the best logged value of "
                      "this metric instead, e.g. val_rsum (model selection "
                      "on validation).")
  flags.DEFINE_string("split", None, "Split to evaluate (default: config.eval_split).")
  cli.define_common_flags()
  flags.mark_flags_as_required(["workdir"])


def format_table(result: dict) -> str:
  ds = result["dataset"]
  splits = ", ".join(f"{k} {v:,}" for k, v in ds["split_sizes"].items())
  model = result["config"]["model"]
  lines = [
      f"workdir     {result['workdir']}  (step {result['step']})",
      f"dataset     {ds['name']}  ({splits}; eval on {ds['eval_split']})",
      f"model       {model.get('name')} {model.get('variant', '')}  "
      f"{result['num_params']:,} params, {result['param_bytes'] / 1e6:.3f} MB",
      "-" * 40,
  ]
  lines += [f"{k:<20}{v:>10.4f}" for k, v in result["metrics"].items()]
  return "\n".join(lines)


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
  config = ml_collections.ConfigDict(saved["config"])
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


def evaluate(workdir: str, step: int | None = None, split: str | None = None) -> dict:
  step, config, meta, task, model, state, mesh = restore(workdir, step)
  split = split or config.eval_split
  metrics, dataset = task.evaluate(config, meta, model, state, split, mesh)
  result = dict(
      step=step, workdir=os.path.abspath(workdir), metrics=metrics,
      num_params=models.count_params(state.params),
      param_bytes=models.param_bytes(state.params), dataset=dataset,
      config=config.to_dict())
  if jax.process_index() == 0:
    io.write_json(os.path.join(workdir, "eval", f"step_{step}.json"), result,
                  indent=2)
  return result


@exit_on_user_error
def main(argv):
  cli.set_up(argv)
  if FLAGS.select and FLAGS.step is not None:
    raise UserError("Give --step or --select, not both.")
  step = best_step(FLAGS.workdir, FLAGS.select) if FLAGS.select else FLAGS.step
  result = evaluate(FLAGS.workdir, step, FLAGS.split)
  if jax.process_index() == 0:
    print(format_table(result))


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=parse_flags_or_exit)

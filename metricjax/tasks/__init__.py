"""Tasks: what a config trains, on which data, and how it is evaluated.

`python -m metricjax.train` and `metricjax.evaluate` are task-agnostic; a task
module (chosen by `config.task`, default "retrieval") provides

  build(config, mesh, tx) -> Task
      loads the training data onto the devices and returns the pieces the
      generic loop in metricjax/train.py needs;
  make_model_and_init(config, meta, tx) -> (model, init)
      the model and `init(rng) -> TrainState`, from the config and the `meta`
      saved with the checkpoint (so evaluation needs no training data);
  evaluate(config, meta, model, state, split, mesh) -> (metrics, dataset)
      metrics (a dict of floats) and a JSON-able description of the data.
"""

import dataclasses
from types import ModuleType
from typing import Any, Callable

import flax.linen as nn

from metricjax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Task:
  meta: dict  # JSON-able; saved with every checkpoint next to the config.
  model: nn.Module
  init: Callable  # rng -> TrainState, jit-able.
  step: Callable  # (state, data) -> (state, metrics), jit-able.
  data: Any  # The device-resident pytree every step reads.
  examples_per_step: int
  epoch_size: int
  validate: Callable | None = None  # state -> metrics, for learning curves.


def get(config) -> ModuleType:
  # Imported lazily: a task's dependencies load only when it is used.
  from metricjax.tasks import retrieval, vse  # pylint: disable=g-import-not-at-top
  tasks = {"retrieval": retrieval, "vse": vse}
  name = config.get("task", "retrieval")
  if name not in tasks:
    raise UserError(f"Unknown config.task {name!r}; known: {', '.join(tasks)}.")
  return tasks[name]

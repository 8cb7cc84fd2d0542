"""Tasks: what a config trains, on which data, and how it is evaluated.

`python -m metricjax.train` and `metricjax.evaluate` know no task; a task
module (chosen by `config.task`, default "retrieval") provides

  identity(config) -> dict
      the settings that must not change when a run resumes (dataset,
      model, ...); compared between the saved and the current config;
  Meta
      a dataclass with `to_dict()` / `from_dict(d)`: what the task learns
      from its training data (dataset description, vocabulary, statistics),
      saved with every checkpoint so evaluation needs no training data;
  make_model_and_init(config, meta, tx) -> (model, init)
      the model and `init(rng) -> TrainState`;
  build(config, mesh, tx) -> Task
      loads the training data onto the devices; the pieces of training;
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
  """What the generic loop (metricjax/train.py) needs from a task."""
  meta: Any  # The task's Meta; saved with every checkpoint.
  model: nn.Module
  init: Callable  # rng -> TrainState, jit-able.
  # The two halves of a training step (metricjax/step.py joins them):
  sample: Callable  # (rng, data) -> batch, jit-able; rng from (seed, step).
  # (params, loss_params, batch_stats, batch) -> (loss, new batch_stats).
  loss: Callable
  # What `sample` reads: the device-resident dataset, or (streaming) the
  # shapes of the batches `stream` yields.
  data: Any
  examples_per_step: int
  epoch_size: int
  validate: Callable | None = None  # state -> metrics, for learning curves.
  # Streaming input: start_step -> iterator of the global batches of steps
  # start_step + 1, ...; None when `data` lives on the devices.
  stream: Callable | None = None


def get(name: str) -> ModuleType:
  # Imported lazily: a task's dependencies load only when it is used.
  from metricjax.tasks import retrieval, vse  # pylint: disable=g-import-not-at-top
  tasks = {"retrieval": retrieval, "vse": vse}
  if name not in tasks:
    raise UserError(f"Unknown config.task {name!r}; known: {', '.join(tasks)}.")
  return tasks[name]


def of(config) -> ModuleType:
  """The task module of a config."""
  return get(config.get("task", "retrieval"))

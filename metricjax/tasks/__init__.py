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

from types import ModuleType

from metricjax.errors import UserError
from metricjax.tasks import retrieval
from metricjax.tasks import vse
from metricjax.tasks.task import Task  # pylint: disable=unused-import

TASKS = {"retrieval": retrieval, "vse": vse}


def get(name: str) -> ModuleType:
  if name not in TASKS:
    raise UserError(f"Unknown config.task {name!r}; known: {', '.join(TASKS)}.")
  return TASKS[name]


def of(config) -> ModuleType:
  """The task module of a config."""
  return get(config.task)

"""The Task record: what a task's build() hands the generic training loop."""

import dataclasses
from typing import Any, Callable

import flax.linen as nn


@dataclasses.dataclass(frozen=True)
class Task:
  """What the generic loop (metricjax/train.py) needs from a task."""
  meta: Any  # The task's Meta; saved with every checkpoint.
  model: nn.Module
  init: Callable  # rng -> TrainState, jit-able.
  # The two halves of a training step (metricjax/step.py joins them):
  sample: Callable  # (rng, data) -> batch, jit-able; rng from (seed, step).
  # (params, loss_params, batch_stats, batch, loss_state, key) ->
  # (loss, (new batch_stats, new loss_state)); metricjax/step.py says more.
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

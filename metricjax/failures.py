"""How a training run stops: on SIGTERM (preemption), or on a non-finite
step.

SIGTERM is what cloud schedulers send before taking a machine back; the
loop (metricjax/train.py) then checkpoints the step it is at and raises
Preempted, which the CLI turns into PREEMPTED_EXIT_CODE. A step whose loss
or gradients are NaN or infinite stops the run before any checkpoint of it
is written, or is skipped and counted with config.skip_nonfinite_steps.
"""

import contextlib
import math
import os
import signal
import threading

import jax

from metricjax.errors import UserError

# 128 + SIGTERM, the shell's code for "terminated": a scheduler neither takes
# the run for finished (0) nor for a bad command (2, UserError).
PREEMPTED_EXIT_CODE = 143


class Preempted(Exception):
  """train() stopped early on SIGTERM, after checkpointing `step`."""

  def __init__(self, step: int, workdir: str):
    super().__init__(
        f"Stopped by SIGTERM at step {step}; its checkpoint is saved in "
        f"{os.path.join(workdir, 'checkpoints')}. Run the same command again "
        "to resume.")
    self.step = step


@contextlib.contextmanager
def stop_on_sigterm():
  """Yields an Event set by SIGTERM while the block runs; the previous
  handler comes back after. Signals reach only the main thread, so
  elsewhere (a notebook's worker thread) nothing is installed."""
  requested = threading.Event()
  if threading.current_thread() is not threading.main_thread():
    yield requested
    return
  previous = signal.signal(signal.SIGTERM, lambda *_: requested.set())
  try:
    yield requested
  finally:
    signal.signal(signal.SIGTERM, previous)


class FiniteGuard:
  """Reads each step's "finite" flag, in step order: stops the run on the
  first non-finite step, or counts it when skipping is on."""

  def __init__(self, config, skipped: int, last_checkpoint: int | None):
    self.config = config
    self.skip = bool(config.skip_nonfinite_steps)
    self.skipped = skipped
    self.last_checkpoint = last_checkpoint

  def check(self, step: int, metrics: dict) -> None:
    if bool(jax.device_get(metrics["finite"])):
      return
    if self.skip:
      self.skipped += 1
      return
    loss, grad_norm = (float(jax.device_get(metrics[k]))
                       for k in ("loss", "grad_norm"))
    what = ("the loss" if not math.isfinite(loss) else "a gradient")
    kept = (f"the last good checkpoint (step {self.last_checkpoint}) is kept"
            if self.last_checkpoint else "no checkpoint had been written yet")
    raise UserError(
        f"Training stopped at step {step}: {what} became non-finite "
        f"(loss={loss}, grad_norm={grad_norm}); {kept} and no checkpoint of "
        f"step {step} or later was written. Likely cause: a learning rate too "
        f"high for this model (config.learning_rate="
        f"{self.config.learning_rate}) or exploding gradients: lower "
        "config.learning_rate or set config.grad_clip_norm (e.g. 1.0); with "
        "bfloat16 compute, an overflow; or a corrupt training example. To "
        "skip such steps instead, set "
        "config.skip_nonfinite_steps=True.")

"""Orbax checkpoints in WORKDIR/checkpoints: the train state plus a JSON
"meta" item (config, dataset description) so a checkpoint is self-contained
for evaluation. Orbax writes each step to a temporary directory and renames
it when complete, so a killed run never leaves a half-written checkpoint
under a step's name (tests/e2e/test_reliability.py). A failed write (disk full)
is a UserError naming the step; the checkpoints before it stay usable."""

import contextlib
import os

import jax
import orbax.checkpoint as ocp

from metricjax import state as state_lib
from metricjax.errors import one_line
from metricjax.errors import UserError


def manager(workdir: str, *, max_to_keep: int = 3,
            create: bool = True) -> ocp.CheckpointManager:
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not create and not os.path.isdir(directory):
    raise UserError(
        f"No checkpoints in {workdir!r}: {directory} does not exist. Point "
        "--workdir at a directory written by `python -m metricjax.train`.")
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
  return ocp.CheckpointManager(directory, options=options,
                               item_names=("state", "meta"))


def _write_failed(mngr, what: str, e: Exception) -> UserError:
  steps = sorted(mngr.all_steps())
  if not steps:
    kept = "no earlier checkpoint exists"
  elif len(steps) == 1:
    kept = f"the checkpoint of step {steps[0]} is intact"
  else:
    kept = f"the checkpoints of steps {', '.join(map(str, steps))} are intact"
  return UserError(
      f"Could not write {what} in {mngr.directory} ({type(e).__name__}: "
      f"{one_line(e)}); {kept}. Free disk space (or fix the directory's "
      "permissions) and run the same command again: it resumes from the "
      "latest intact checkpoint.")


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
  """Starts writing a checkpoint of `step`; the device-to-host copy is done
  when this returns, the files are written in the background (see wait)."""
  try:
    # force: the training loop, not Orbax's save policy, decides when.
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
              force=True)
  except Exception as e:  # This save, or the previous one in the background.
    raise _write_failed(mngr, f"the checkpoint of step {step}", e) from e


def wait(mngr: ocp.CheckpointManager) -> None:
  """Waits until the checkpoint being written is complete on disk."""
  try:
    mngr.wait_until_finished()
  except Exception as e:
    raise _write_failed(mngr, "a checkpoint", e) from e


@contextlib.contextmanager
def finishing(mngr: ocp.CheckpointManager):
  """Waits for the checkpoint in flight and closes `mngr` when the block
  exits, however it exits, so that a stopped run still completes it."""
  try:
    yield mngr
  finally:
    try:
      wait(mngr)
    finally:
      mngr.close()


def resolve_step(mngr: ocp.CheckpointManager, step: int | None) -> int:
  steps = mngr.all_steps()
  if not steps:
    raise UserError(
        f"No checkpoint found in {mngr.directory}. Train first with "
        "`python -m metricjax.train --config=... --workdir=...`.")
  if step is None:
    return max(steps)
  if step not in steps:
    raise UserError(f"No checkpoint for step {step} in {mngr.directory}; "
                    f"available steps: {', '.join(map(str, sorted(steps)))}.")
  return step


def restore_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
  try:
    return mngr.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]
  except Exception as e:  # Orbax raises many types for a foreign directory.
    raise UserError(
        f"{mngr.directory}/{step} is not a readable metricjax checkpoint "
        f"({type(e).__name__}: {e}). Point --workdir at a directory written by "
        "`python -m metricjax.train`.") from e


def restore_state(mngr: ocp.CheckpointManager, step: int, abstract_state):
  """Restores into the shapes, dtypes and shardings of `abstract_state`.
  A checkpoint written before TrainState had loss_state restores into a
  state whose loss_state is empty (no cross-batch memory)."""
  restore = lambda item: mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(item)))["state"]
  try:
    return restore(abstract_state)
  except (ValueError, KeyError, TypeError) as e:
    if not jax.tree.leaves(abstract_state.loss_state):
      try:
        old = restore(state_lib.TrainStateWithoutLossState(
            **{k: getattr(abstract_state, k) for k in
               state_lib.TrainStateWithoutLossState.__dataclass_fields__}))
        return abstract_state.replace(
            **{k: getattr(old, k) for k in old.__dataclass_fields__},
            loss_state={})
      except (ValueError, KeyError, TypeError):
        pass  # Not that either: report the first error.
    # Orbax's words for a tree of other shapes or structure.
    raise UserError(
        f"The checkpoint {mngr.directory}/{step} does not fit this config's "
        f"model and optimiser ({type(e).__name__}: {one_line(e)}). It was "
        "written with another config: resume with that config, or use a new "
        "--workdir.") from e


def abstract_like(tree, sharding):
  """ShapeDtypeStructs of `tree` (arrays or eval_shape output) on `sharding`."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)

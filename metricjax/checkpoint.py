"""Orbax checkpoints in WORKDIR/checkpoints: the train state plus a JSON
"meta" item (config, dataset description) so a checkpoint is self-contained
for evaluation. Orbax writes each step to a temporary directory and renames
it when complete, so a killed run never leaves a half-written checkpoint."""

import os

import jax
import orbax.checkpoint as ocp

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


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))


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
  """Restores into the shapes, dtypes and shardings of `abstract_state`."""
  return mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))["state"]


def abstract_like(tree, sharding):
  """ShapeDtypeStructs of `tree` (arrays or eval_shape output) on `sharding`."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)

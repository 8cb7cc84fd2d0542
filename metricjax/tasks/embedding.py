"""Batched, sharded inference over host arrays of inputs."""

from typing import Callable

import jax
import numpy as np
from tqdm import tqdm

from metricjax import parallel


def batched_apply(apply: Callable, variables, inputs: tuple[np.ndarray, ...], *,
                  batch_size: int, mesh, desc: str) -> dict[str, np.ndarray]:
  """apply(variables, *batch) -> {name: (B, ...)} over every row of `inputs`.

  Rows go in batches sharded over the mesh; `apply` should be jitted once by
  the caller, so repeated calls (validation) do not compile again.
  """
  parallel.check_divisible(batch_size, mesh, "config.eval.batch_size")
  n = len(inputs[0])
  chunks = []
  for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch",
                    dynamic_ncols=True, mininterval=1.0):
    batch = [np.asarray(x[start:start + batch_size]) for x in inputs]
    # Pad the last batch so every call has one shape (one compilation).
    pad = batch_size - len(batch[0])
    if pad:
      batch = [np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
               for x in batch]
    out = jax.device_get(apply(variables, *(parallel.global_batch(x, mesh)
                                            for x in batch)))
    chunks.append({k: v[:len(v) - pad] for k, v in out.items()})
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def embed(model, variables, images: np.ndarray, *, batch_size: int, mesh,
          desc: str = "embed") -> dict[str, np.ndarray]:
  """Model outputs for every image, in batches sharded over the mesh."""
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  return batched_apply(apply, variables, (images,), batch_size=batch_size,
                       mesh=mesh, desc=desc)

"""Batched, sharded inference over a host array of inputs."""

import jax
import numpy as np
from tqdm import tqdm

from metricjax import parallel


def embed(model, variables, images: np.ndarray, *, batch_size: int, mesh,
          desc: str = "embed") -> dict[str, np.ndarray]:
  """Model outputs for every image, in batches sharded over the mesh."""
  parallel.check_divisible(batch_size, mesh, "config.eval.batch_size")
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  n = len(images)
  chunks = []
  for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch",
                    dynamic_ncols=True, mininterval=1.0):
    batch = images[start:start + batch_size]
    # Pad the last batch so every call has one shape (one compilation).
    pad = batch_size - len(batch)
    if pad:
      batch = np.concatenate([batch, np.zeros((pad, *batch.shape[1:]), batch.dtype)])
    out = jax.device_get(apply(variables, parallel.global_batch(batch, mesh)))
    chunks.append({k: v[:len(v) - pad] for k, v in out.items()})
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}

"""Batched, sharded inference over host arrays: embeddings, backbone features.

One loop serves every "run a jitted function over all rows of a dataset"
job (evaluation, validation, FNE feature extraction, search indexes). Each
batch is one global array sharded over the mesh; with several processes
each feeds only its own rows of it and every process gets the whole output.
"""

from typing import Callable, Iterator, Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np
from tqdm import tqdm

from metricjax import parallel
from metricjax import xla_routing


def iterate_batches(apply: Callable, variables, inputs: Sequence, *,
                    batch_size: int, mesh, desc: str
                    ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
  """Yields (start, rows, outputs) for consecutive batches of `inputs`.

  apply(variables, *batch) -> {name: (batch_size, ...)} must be jitted by the
  caller once, so repeated passes (validation) do not compile again.
  `inputs` are arrays, or sequences whose slices are arrays (lazily decoded
  images); row i of every input belongs together. `outputs` holds the first
  `rows` (the real, unpadded) rows of the batch as host arrays.
  """
  parallel.check_divisible(batch_size, mesh, "the inference batch size")
  num_processes, index = jax.process_count(), jax.process_index()
  per_process = batch_size // num_processes
  n = len(inputs[0])
  for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch",
                    dynamic_ncols=True, mininterval=1.0,
                    disable=index != 0):
    batch = [np.asarray(x[start:start + batch_size]) for x in inputs]
    rows = len(batch[0])
    # Pad the last batch so every call has one shape (one compilation).
    if rows < batch_size:
      batch = [np.concatenate([x, np.zeros((batch_size - rows, *x.shape[1:]),
                                           x.dtype)]) for x in batch]
    # This process's share of the global batch.
    local = [x[index * per_process:(index + 1) * per_process] for x in batch]
    out = apply(variables, *(parallel.global_batch(x, mesh) for x in local))
    out = (jax.device_get(out) if num_processes == 1
           else multihost_utils.process_allgather(out, tiled=True))
    yield start, rows, {k: np.asarray(v)[:rows] for k, v in out.items()}


def batched_apply(apply: Callable, variables, inputs: Sequence, *,
                  batch_size: int, mesh, desc: str) -> dict[str, np.ndarray]:
  """{name: (N, ...)}: `iterate_batches`' outputs for all N rows, joined."""
  chunks = [out for _, _, out in iterate_batches(
      apply, variables, inputs, batch_size=batch_size, mesh=mesh, desc=desc)]
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def eval_apply(model, routing: str = xla_routing.DEFAULT) -> Callable:
  """(variables, images) -> the model's outputs in evaluation mode, jitted
  with the XLA:CPU routing; built once, applied to every batch."""
  return xla_routing.jit(lambda v, x: model.apply(v, x, train=False),
                         routing=routing)


def embed(model, variables, images: np.ndarray, *, batch_size: int, mesh,
          desc: str = "embed", routing: str = xla_routing.DEFAULT
          ) -> dict[str, np.ndarray]:
  """The model's outputs ({"embedding": ..., ["logits": ...]}) per image."""
  return batched_apply(eval_apply(model, routing), variables, (images,),
                       batch_size=batch_size, mesh=mesh, desc=desc)

r"""Exact nearest-neighbour search, index files and the query CLI.

  python -m metricjax.search build --workdir=DIR [--step=N] \
      --dataset=SPEC --split=S --out=INDEX.npz
  python -m metricjax.search query --index=INDEX.npz \
      (--image=PATH | --images=DIR) [--k=10] [--json] [--model=M.jaxexport]

`knn` is exact: float32 scores at Precision.HIGHEST, ties to the lower
reference index. References are scanned in chunks (metricjax/ops/topk.py),
so no queries x references matrix is ever built, and with several devices
each searches its shard of the references before a global top-k merge.

An index file is one .npz (embeddings, labels, ids, and a JSON header with
the format version, the metric, the class names and the model reference:
workdir, step and a SHA-256 of the model's variables), written atomically.
Querying with another model than the one that built the index is an error,
since the embeddings would not be comparable.
"""

import dataclasses
import functools
import hashlib
import json
import os
import sys
import zipfile

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P
import numpy as np

from metricjax import parallel
from metricjax.errors import UserError
from metricjax.io import atomic_write
from metricjax.ops import topk
from metricjax.ops.similarity import l2_normalize

METRICS = topk.METRICS
# Score block held at once: 1024 x 4096 float32 is 16 MiB, and measured on a
# 2-core CPU this shape beat larger and smaller ones (tools/README.md).
QUERY_CHUNK = 1024
REF_CHUNK = 4096
BLOCK = 32

try:
  # The scan carries of the kernel start as constants and become
  # device-varying; the replication check would reject that.
  _shard_map = functools.partial(jax.shard_map, check_vma=False)
except AttributeError:  # jax < 0.7
  from jax.experimental.shard_map import shard_map
  _shard_map = functools.partial(shard_map, check_rep=False)


# --- knn ---------------------------------------------------------------------


def _query_chunk(num_queries: int) -> int:
  # Few queries are padded to a power of two, so repeated small searches
  # (the CLI, an interactive session) reuse a handful of compilations.
  return min(QUERY_CHUNK, max(8, 1 << (num_queries - 1).bit_length()))


def _ref_chunk(num_refs: int, k: int) -> int:
  # Large k (retrieval metrics need k = R) wants wide chunks: every chunk
  # costs a top-k merge of 2k candidates.
  return min(num_refs, max(REF_CHUNK, -(-8 * k // BLOCK) * BLOCK))



@functools.partial(jax.jit, static_argnames=(
    "k", "metric", "query_chunk", "ref_chunk", "num_valid", "mesh"))
def _search(queries, refs, exclude, *, k, metric, query_chunk, ref_chunk,
            num_valid, mesh):
  """Padded queries x (padded, maybe sharded) refs -> global top k."""
  if metric == "cosine":
    queries = l2_normalize(queries)
  kernel = functools.partial(
      topk.chunked_top_k, k=k, metric=metric, query_chunk=query_chunk,
      ref_chunk=ref_chunk, block=BLOCK)
  if mesh is None:
    values, indices = kernel(queries, refs, 0, num_valid, exclude)
  else:
    shard = refs.shape[0] // mesh.devices.size

    def local(q, r, excl):
      offset = lax.axis_index(parallel.DATA_AXIS) * shard
      if shard >= k:
        v, i = kernel(q, r, offset, num_valid, excl)
      else:  # Small shards: each gives all it has, padded to k.
        v, i = kernel(q, r, offset, num_valid, excl, k=shard,
                      ref_chunk=shard)
        v = jnp.pad(v, ((0, 0), (0, k - shard)), constant_values=-jnp.inf)
        i = jnp.pad(i, ((0, 0), (0, k - shard)), constant_values=-1)
      # Shards in device order hold ascending indices, so the stable top_k
      # of the concatenation still breaks ties by the lower index.
      v = lax.all_gather(v, parallel.DATA_AXIS, axis=1, tiled=True)
      i = lax.all_gather(i, parallel.DATA_AXIS, axis=1, tiled=True)
      v, pos = lax.top_k(v, k)
      return v, jnp.take_along_axis(i, pos, axis=1)

    values, indices = _shard_map(
        local, mesh=mesh, in_specs=(P(), P(parallel.DATA_AXIS), P()),
        out_specs=(P(), P()))(queries, refs, exclude)
  if metric == "l2":
    # Ranking used q.r - |r|^2 / 2; report squared distances, like FAISS.
    sq = jnp.sum(jnp.square(queries), axis=-1, keepdims=True)
    values = jnp.maximum(sq - 2.0 * values, 0.0)
  return values, indices


@dataclasses.dataclass(frozen=True)
class References:
  """References placed for `knn`: padded and sharded over the mesh once, so
  repeated searches (an Index) do not copy them again."""
  array: jax.Array
  num_valid: int
  mesh: object  # jax.sharding.Mesh, or None: one device.

  @classmethod
  def place(cls, references, *, k_hint: int = 1, mesh=None) -> "References":
    references = jnp.asarray(references, jnp.float32)
    if references.ndim != 2:
      raise ValueError(f"references must be (N, D), got {references.shape}")
    n = references.shape[0]
    mesh = parallel.create_mesh() if mesh is None else mesh
    devices = mesh.devices.size
    # Sharding pays only when each shard is a real search; a shard must
    # also hold at least k rows for its top k.
    if devices == 1 or -(-n // devices) < max(k_hint, REF_CHUNK // 8):
      return cls(references, n, None)
    pad = -n % devices
    if pad:
      references = jnp.pad(references, ((0, pad), (0, 0)))
    return cls(jax.device_put(references, parallel.batch_sharding(mesh)), n,
               mesh)


def knn(queries, references, k: int, *, metric: str = "cosine", exclude=None,
        mesh=None):
  """Exact k nearest references of every query.

  Args:
    queries: (Q, D) array.
    references: (N, D) array, or `References` placed earlier.
    k: neighbours per query, 1 <= k <= N (N - 1 with `exclude`).
    metric: "cosine" (cosine similarity, descending), "ip" (inner product,
      descending) or "l2" (squared euclidean distance, ascending).
    exclude: optional (Q,) ints, a reference index per query that is never
      returned (-1: none); leave-one-out retrieval passes arange(Q).
    mesh: device mesh (axis "data") to shard the references over; default
      all devices.

  Returns:
    (scores, indices), each (Q, k), numpy float32 and int32, best first;
    among equal scores the lower reference index comes first.
  """
  if metric not in METRICS:
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
  if not isinstance(references, References):
    references = References.place(references, k_hint=k, mesh=mesh)
  queries = jnp.asarray(queries, jnp.float32)
  refs = references.array
  if queries.ndim != 2 or queries.shape[1] != refs.shape[1]:
    raise ValueError(f"queries must be (Q, {refs.shape[1]}) like the "
                     f"references, got {queries.shape}")
  n = references.num_valid
  limit = n - (exclude is not None)
  if not 1 <= k <= limit:
    raise ValueError(f"k={k} must be in [1, {limit}] for {n} references"
                     + (" with one excluded per query" if exclude is not None
                        else ""))
  num_queries = queries.shape[0]
  if num_queries == 0:
    return np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)
  chunk = _query_chunk(num_queries)
  pad = -num_queries % chunk
  exclude = (jnp.full((num_queries,), -1, jnp.int32) if exclude is None
             else jnp.asarray(exclude, jnp.int32).reshape(num_queries))
  queries = jnp.pad(queries, ((0, pad), (0, 0)))
  exclude = jnp.pad(exclude, (0, pad), constant_values=-1)
  shard_rows = refs.shape[0] // (references.mesh.devices.size
                                 if references.mesh is not None else 1)
  values, indices = _search(
      queries, refs, exclude, k=k, metric=metric, query_chunk=chunk,
      ref_chunk=_ref_chunk(shard_rows, k), num_valid=n, mesh=references.mesh)
  values, indices = jax.device_get((values, indices))
  return values[:num_queries], indices[:num_queries]

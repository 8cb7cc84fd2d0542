"""Exact k nearest neighbours: chunked over the references, sharded over devices.

`knn` is exact: float32 scores at Precision.HIGHEST, ties to the lower
reference index. References are scanned in chunks (ops/topk.py), so no
queries x references matrix is ever built, and with several devices each
searches its shard of the references before a global top-k merge.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P
import numpy as np

from metricjax import parallel
from metricjax.ops import topk
from metricjax.ops.similarity import l2_normalize

METRICS = topk.METRICS
# Score block held at once: 512 x 8192 float32 is 16 MiB. On the 2-core CPU
# of tools/results/search.md, with 2,000 queries and 200k references, blocks from
# 256 x 16384 to 1000 x 8192 took within 15% of the same time, and 2000 x
# 2048 up to 1.5x longer; this one was among the fastest at 64 and 128 dims.
QUERY_CHUNK = 512
REF_CHUNK = 8192
# Run length of the block top-k (ops/topk.py); 16 and 64 were slower.
BLOCK = 32
# Sharding pays only when each device gets at least this many references.
MIN_SHARD_ROWS = 512
# Below this many scores (64 MiB of float32) a query chunk takes all the
# references at once.
MAX_BLOCK_ELEMENTS = 2**24
# Above this k (retrieval metrics need k = R, up to thousands) a query chunk
# always takes whole rows of references, with fewer queries to stay within
# MAX_BLOCK_ELEMENTS: one top_k per query instead of a top_k per reference
# chunk and a merge of 2k candidates each time. At 100k x 64, k = 1000 on
# the 2-core EPYC of tools/results/search.md, 1,024 queries took 6.5 s in chunks of
# 512 x 8192 and 1.2-1.4 s in whole rows of 64 queries.
LARGE_K = 64

try:
  # The scan carries of the kernel start as constants and become
  # device-varying; the replication check would reject that.
  _shard_map = functools.partial(jax.shard_map, check_vma=False)
except AttributeError:  # jax < 0.7
  from jax.experimental.shard_map import shard_map
  _shard_map = functools.partial(shard_map, check_rep=False)


def _query_chunk(num_queries: int, k: int = 1, num_refs: int = 0) -> int:
  # Few queries are padded to a power of two, so repeated small searches
  # (the CLI, an interactive session) reuse a handful of compilations; many
  # are split into equal chunks of a multiple of 8, so little is padding.
  most = QUERY_CHUNK
  if k > LARGE_K and num_refs:
    most = max(8, MAX_BLOCK_ELEMENTS // num_refs // 8 * 8)
  if num_queries <= min(64, most):
    return max(8, 1 << (num_queries - 1).bit_length())
  num_chunks = -(-num_queries // most)
  return -(-num_queries // (num_chunks * 8)) * 8


def _ref_chunk(num_refs: int, k: int, query_chunk: int) -> int:
  # One chunk when the whole block fits the budget, or k is large (above).
  if query_chunk * num_refs <= MAX_BLOCK_ELEMENTS or k > LARGE_K:
    return num_refs
  return min(num_refs, max(REF_CHUNK, -(-8 * k // BLOCK) * BLOCK))


_STATIC = ("k", "metric", "query_chunk", "ref_chunk", "block", "num_valid",
           "mesh")


@functools.cache
def _jitted_search(options: tuple = ()):
  """_search compiled with XLA compiler options (sorted (name, value)
  pairs); () for jax's defaults."""
  kwargs = {"compiler_options": dict(options)} if options else {}
  return jax.jit(_search, static_argnames=_STATIC, **kwargs)


def _search(queries, refs, exclude, *, k, metric, query_chunk, ref_chunk,
            block, num_valid, mesh):
  """Padded queries x (padded, maybe sharded) refs -> global top k."""
  if metric == "cosine":
    queries = l2_normalize(queries)
  kernel = functools.partial(
      topk.chunked_top_k, k=k, metric=metric, query_chunk=query_chunk,
      ref_chunk=ref_chunk, block=block)
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
    # A shard should also hold at least k rows for its top k.
    if devices == 1 or -(-n // devices) < max(k_hint, MIN_SHARD_ROWS):
      return cls(references, n, None)
    pad = -n % devices
    if pad:
      references = jnp.pad(references, ((0, pad), (0, 0)))
    return cls(jax.device_put(references, parallel.batch_sharding(mesh)), n,
               mesh)


def knn(queries, references, k: int, *, metric: str = "cosine", exclude=None,
        mesh=None, compiler_options: dict | None = None):
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
    compiler_options: XLA compiler options of the search (e.g. which
      XLA:CPU kernels run its matmul, metricjax/xla_routing.py); default
      jax's.

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
  shard_rows = refs.shape[0] // (references.mesh.devices.size
                                 if references.mesh is not None else 1)
  chunk = _query_chunk(num_queries, k, shard_rows)
  pad = -num_queries % chunk
  exclude = (jnp.full((num_queries,), -1, jnp.int32) if exclude is None
             else jnp.asarray(exclude, jnp.int32).reshape(num_queries))
  queries = jnp.pad(queries, ((0, pad), (0, 0)))
  exclude = jnp.pad(exclude, (0, pad), constant_values=-1)
  search = _jitted_search(tuple(sorted((compiler_options or {}).items())))
  values, indices = search(
      queries, refs, exclude, k=k, metric=metric, query_chunk=chunk,
      ref_chunk=_ref_chunk(shard_rows, k, chunk), block=BLOCK, num_valid=n,
      mesh=references.mesh)
  values, indices = jax.device_get((values, indices))
  return values[:num_queries], indices[:num_queries]

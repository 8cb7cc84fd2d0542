"""Exact top-k of query-reference scores, chunked so memory stays bounded.

The kernel of `metricjax.ops.knn.knn`. Scores are float32 dot products at
Precision.HIGHEST; "larger is better" throughout (the l2 metric ranks by
q.r - |r|^2 / 2, which orders references like -|q - r|^2). Ties go to the
lower reference index: `lax.top_k` is stable, reference chunks are visited
in ascending order, and every merge puts the lower indices first.

Only a (query_chunk, ref_chunk) block of scores exists at a time. Its top k
is found in two steps: the max of every run of `block` scores, the top k of
those maxima, then the top k of the k winning runs. The best k scores lie
in the k runs with the best maxima (each of those runs holds a score at
least as good), so this is exact, and it replaces a top_k over ref_chunk
scores per query (2x slower in total on XLA:CPU, tools/results/search.md) with a
vectorised max and two small top_ks.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from metricjax.ops.similarity import l2_normalize

METRICS = ("cosine", "ip", "l2")


def block_top_k(scores: jax.Array, k: int, block: int):
  """lax.top_k(scores, k) of (Q, N) scores via per-block maxima (see above).

  Same values and indices as lax.top_k, ties included, when N is a
  multiple of `block`; otherwise (or when it would not pay) it is top_k.
  """
  q, n = scores.shape
  if n % block or n // block < 2 * k:
    return lax.top_k(scores, k)
  runs = scores.reshape(q, n // block, block)
  _, best_runs = lax.top_k(jnp.max(runs, axis=-1), k)
  # Ascending run order keeps candidate positions in index order, so the
  # stable top_k below still breaks ties by the lower index.
  best_runs = jnp.sort(best_runs, axis=1)
  candidates = jnp.take_along_axis(runs, best_runs[:, :, None], axis=1)
  values, pos = lax.top_k(candidates.reshape(q, k * block), k)
  run = jnp.take_along_axis(best_runs, pos // block, axis=1)
  return values, run * block + pos % block


def merge_top_k(values_a, indices_a, values_b, indices_b, k: int):
  """Top k of two candidate lists; on ties `a` comes first, so `a` should
  hold the lower indices."""
  values, pos = lax.top_k(jnp.concatenate([values_a, values_b], axis=1), k)
  indices = jnp.take_along_axis(
      jnp.concatenate([indices_a, indices_b], axis=1), pos, axis=1)
  return values, indices


@functools.partial(jax.jit, static_argnames=(
    "k", "metric", "query_chunk", "ref_chunk", "block"))
def chunked_top_k(queries: jax.Array, refs: jax.Array, offset, num_valid,
                  exclude: jax.Array | None = None, *, k: int, metric: str,
                  query_chunk: int, ref_chunk: int, block: int):
  """Top-k references of every query, scanning references chunk by chunk.

  Args:
    queries: (Q, D) float32, Q a multiple of query_chunk; already
      normalised for "cosine".
    refs: (N, D) float32, rows with global indices offset .. offset + N - 1.
      N >= ref_chunk.
    offset: global index of refs[0] (a device's shard starts there).
    num_valid: rows with a global index >= num_valid are padding, never
      returned.
    exclude: optional (Q,) int32 global index per query that must not be
      returned (the query itself, in leave-one-out retrieval); -1 for none.
    k: neighbours per query; at most the number of valid rows.
    metric: "cosine", "ip" or "l2".
    query_chunk, ref_chunk: the score block held in memory at once.
    block: run length of `block_top_k`.

  Returns:
    (values, indices), each (Q, k): ranking scores (for l2: q.r - |r|^2/2)
    best first, and int32 global indices.
  """
  n = refs.shape[0]
  num_chunks = -(-n // ref_chunk)
  queries = queries.reshape(-1, query_chunk, queries.shape[-1])
  if exclude is None:
    exclude = jnp.full(queries.shape[:2], -1, jnp.int32)
  exclude = exclude.reshape(queries.shape[:2])
  # Once per call, not once per query chunk: each would read all references.
  half_sq_norm = (0.5 * jnp.sum(jnp.square(refs), axis=-1) if metric == "l2"
                  else None)

  def search_query_chunk(args):
    q, excl = args

    def step(best, c):
      # The last chunk is shifted back to end at n rather than padded (no
      # copy of the references); rows it shares with the previous chunk are
      # masked so that none is returned twice.
      first = c * ref_chunk
      start = jnp.minimum(first, n - ref_chunk)
      rows = lax.dynamic_slice_in_dim(refs, start, ref_chunk)
      if metric == "cosine":
        rows = l2_normalize(rows)
      scores = jnp.matmul(q, rows.T, precision=lax.Precision.HIGHEST)
      if metric == "l2":
        scores -= lax.dynamic_slice_in_dim(half_sq_norm, start, ref_chunk)
      local = start + jnp.arange(ref_chunk, dtype=jnp.int32)
      index = offset + local
      keep = (local >= first)[None, :] & (index < num_valid)[None, :]
      keep &= index[None, :] != excl[:, None]
      scores = jnp.where(keep, scores, -jnp.inf)
      values, pos = block_top_k(scores, k, block)
      return merge_top_k(*best, values, offset + start + pos, k), None

    init = (jnp.full((query_chunk, k), -jnp.inf, jnp.float32),
            jnp.full((query_chunk, k), -1, jnp.int32))
    best, _ = lax.scan(step, init, jnp.arange(num_chunks))
    return best

  values, indices = lax.map(search_query_chunk, (queries, exclude))
  return values.reshape(-1, k), indices.reshape(-1, k)

r"""Re-ranking of retrieval results: k-reciprocal encoding and query expansion.

Both work on any (query, gallery) embeddings, or on one set that queries
itself (`gallery=None`: leave-one-out, each query's own row is the
self-match, excluded by `neighbours`). `python -m metricjax.evaluate
--rerank=k_reciprocal|query_expansion` reports the metrics before and after.

k-reciprocal encoding (Zhong et al., "Re-ranking Person Re-identification
with k-reciprocal Encoding", CVPR 2017), as the authors' reference
`re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)` computes
it (zhunzhong07/person-re-ranking; tests/test_rerank.py checks the two agree
within float32 tolerance):

- All N = Q + G rows (N = Q with `gallery=None`) are ranked against each
  other by the squared euclidean distance d(i, j) (of the L2-normalised
  embeddings with metric="cosine"), divided by the largest d(i, .) of the
  row.
- R(i, k1): the j among the k1 + 1 nearest of i that have i among their
  k1 + 1 nearest. Each j of R(i, k1) whose R(j, round(k1 / 2)) shares more
  than 2/3 of its members with R(i, k1) adds them (the expansion).
- V(i, j) = exp(-d(i, j)) over that set, normalised to sum 1; local query
  expansion replaces V(i) by the mean of V over the k2 nearest of i.
- Jaccard distance 1 - sum_k min(V(i, k), V(j, k)) / sum_k max(...), and
  the result (1 - lambda) * jaccard + lambda * d: a distance, smaller is
  closer.

Memory. The reference builds dense N x N float matrices (the distances, V,
its expansion): 14.6 GB each at Stanford Online Products' 60,502 images.
Here nothing N x N is ever held: the nearest neighbours come from blocks of
at most `chunk_size` x N distances (2**23 elements, 32 MiB of float32, by
default), computed, reduced to the top max(k1 + 1, k2) and dropped; the
k-reciprocal sets are rows of indices and V is a sparse matrix, (index,
weight) rows of at most a few times k1 entries before the k2 expansion and
k2 times that after it. Held in all: N x max(k1 + 1, k2) neighbour indices,
V's nonzeros (about N x k2 x 2 k1 at most), and one chunk_size x N block of
distances and of Jaccard sums at a time. `neighbours(rows, k)` gives the
re-ranked top k of some queries from one such block; `k_reciprocal` returns
the dense Q x G result, so use it where Q x G fits (the evaluation CLI does
not: it asks for neighbours chunk by chunk).

Query expansion: each query is replaced by the normalised sum of itself and
its k nearest gallery embeddings, weighted by their cosine similarity to it
raised to alpha (alpha = 0: average query expansion, Chum et al. 2007;
alpha > 0: alpha-weighted query expansion, Radenovic et al., TPAMI 2018;
negative similarities weigh 0). With `dba=True` the gallery is first
augmented the same way with its own k nearest (other) gallery embeddings
(database-side augmentation). Ranking is then by cosine similarity of the
expanded embeddings; memory is that of two exact k-NN searches
(metricjax.ops.knn, chunked).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import scipy.sparse

from metricjax.ops.knn import knn

METRICS = ("cosine", "l2")
METHODS = ("k_reciprocal", "query_expansion")
# Elements of one block of distances (and of Jaccard sums): 32 MiB of float32.
_BLOCK_ELEMENTS = 2**23
# Rows per step while building the k-reciprocal sets.
_SET_CHUNK = 512


def _embeddings(x, metric: str, name: str) -> np.ndarray:
  x = np.asarray(x, np.float32)
  if x.ndim != 2:
    raise ValueError(f"{name} must be (rows, dim), got shape {x.shape}")
  if metric == "cosine":
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  return x


def _squared_distances(chunk, rows, x, norms):
  """chunk x N squared euclidean distances; 0 where a row meets itself."""
  dots = jnp.matmul(chunk, x.T, precision=lax.Precision.HIGHEST)
  sq = jnp.sum(chunk * chunk, axis=1)[:, None] + norms[None, :] - 2.0 * dots
  sq = jnp.maximum(sq, 0.0)
  return jnp.where(jnp.arange(x.shape[0])[None, :] == rows[:, None], 0.0, sq)


@functools.partial(jax.jit, static_argnames=("k",))
def _nearest_block(chunk, rows, x, norms, *, k):
  sq = _squared_distances(chunk, rows, x, norms)
  _, indices = lax.top_k(-sq, k)  # ties: the lower index first
  return indices, jnp.max(sq, axis=1)


@functools.partial(jax.jit, static_argnames=("first",))
def _final_block(chunk, rows, x, norms, row_max, jaccard, lambda_value, *,
                 first):
  original = _squared_distances(chunk, rows, x, norms) / row_max[:, None]
  original = original[:, first:]
  return (1.0 - lambda_value) * jaccard + lambda_value * original


@functools.partial(jax.jit, static_argnames=("k",))
def _top_k_smallest(distances, self_column, *, k):
  cols = jnp.arange(distances.shape[1])
  distances = jnp.where(cols[None, :] == self_column[:, None], jnp.inf,
                        distances)
  _, indices = lax.top_k(-distances, k)
  return indices


def _unique_rows(members: np.ndarray, fill: int) -> np.ndarray:
  """Each row's distinct values >= 0, sorted, padded with `fill`."""
  s = np.sort(np.where(members < 0, fill, members), axis=1)
  dup = np.zeros_like(s, bool)
  dup[:, 1:] = s[:, 1:] == s[:, :-1]
  s = np.sort(np.where(dup, fill, s), axis=1)
  width = max(1, int((s < fill).sum(axis=1).max(initial=0)))
  return s[:, :width]


class KReciprocal:
  """k-reciprocal encoding of a query and a gallery set (module docstring).

  Built once (the nearest neighbours of every row, the sparse V); then
  `distances(rows)` and `neighbours(rows, k)` give re-ranked results of any
  queries, one chunk at a time.

  Attributes:
    num_queries, num_gallery: Q and G.
    same_set: the queries are the gallery (gallery=None).
    nearest: (N, max(k1 + 1, k2)) the initial ranking's nearest rows of each
      of the N = Q + G rows (queries first), self first.
    reciprocal: list of N int arrays, R(i, k1) of each row (sorted).
    v: scipy CSR (N, N), V after the k2 expansion.
  """

  def __init__(self, query, gallery=None, *, k1: int = 20, k2: int = 6,
               lambda_value: float = 0.3, metric: str = "cosine",
               chunk_size: int | None = None):
    check_k_reciprocal_args(k1, k2, lambda_value)
    if metric not in METRICS:
      raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    query = _embeddings(query, metric, "query")
    self.same_set = gallery is None
    if self.same_set:
      x = query
    else:
      gallery = _embeddings(gallery, metric, "gallery")
      if gallery.shape[1] != query.shape[1]:
        raise ValueError(f"query and gallery dims differ: {query.shape[1]} "
                         f"and {gallery.shape[1]}")
      x = np.concatenate([query, gallery])
    n = len(x)
    if n < 2:
      raise ValueError(f"k-reciprocal re-ranking needs 2 rows or more, got {n}")
    self.num_queries = len(query)
    self.num_gallery = n if self.same_set else n - len(query)
    self._first = 0 if self.same_set else len(query)
    self.k1, self.k2, self.lambda_value = int(k1), int(k2), float(lambda_value)
    self.chunk_size = int(chunk_size or max(8, _BLOCK_ELEMENTS // n))
    self._x = jnp.asarray(x)
    self._x_host = x
    self._norms = jnp.sum(self._x * self._x, axis=1)
    self._norms_host = np.sum(x * x, axis=1)

    # The initial ranking: nearest rows and the largest distance of each.
    width = min(max(self.k1 + 1, self.k2), n)
    nearest, row_max = [], []
    for rows, chunk in self._chunks(np.arange(n)):
      idx, mx = _nearest_block(chunk, rows, self._x, self._norms, k=width)
      nearest.append(np.asarray(idx))
      row_max.append(np.asarray(mx))
    self.nearest = np.concatenate(nearest)[:n]
    row_max = np.concatenate(row_max)[:n]
    self._row_max_host = np.where(row_max > 0, row_max, 1.0).astype(np.float32)
    self._row_max = jnp.asarray(self._row_max_host)
    self._build_v()

  def _chunks(self, rows: np.ndarray):
    """(padded rows, -1 as padding; their embeddings), chunk_size at a time."""
    c = self.chunk_size
    for s in range(0, len(rows), c):
      part = rows[s:s + c]
      padded = np.full((c,), -1, np.int32)
      padded[:len(part)] = part
      yield padded, self._x[np.maximum(padded, 0)]

  def _original(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Normalised squared distances of the pairs (i, j) (same shapes)."""
    x = self._x_host
    dots = np.einsum("...d,...d->...", x[i], x[j])
    sq = np.maximum(self._norms_host[i] + self._norms_host[j] - 2 * dots, 0)
    sq = np.where(i == j, 0.0, sq).astype(np.float32)
    return sq / self._row_max_host[i]

  def _build_v(self):
    n = len(self._x_host)
    a = min(self.k1 + 1, n)
    b = min(int(np.around(self.k1 / 2.0)) + 1, n)
    t1, t2 = self.nearest[:, :a], self.nearest[:, :b]
    everyone = np.arange(n)
    # R(j, round(k1/2)) of every row, -1 where not reciprocal.
    half = np.where((t2[t2] == everyone[:, None, None]).any(-1), t2, -1)
    half_len = (half >= 0).sum(-1)
    self.reciprocal = []
    rows_v, cols_v, weights_v = [], [], []
    for s in range(0, n, _SET_CHUNK):
      r = everyone[s:s + _SET_CHUNK]
      near = t1[r]
      is_recip = (t1[near] == r[:, None, None]).any(-1)
      recip = np.where(is_recip, near, -1)  # (m, a)
      cand = half[near]  # (m, a, b): R(j, k1/2) of each j
      inside = ((cand[..., None] == recip[:, None, None, :])
                & (cand[..., None] >= 0)).any(-1).sum(-1)
      # The reference's test, literally: len(intersection) > 2/3 * len.
      accept = is_recip & (inside > 2.0 / 3 * half_len[near])
      members = np.concatenate(
          [recip, np.where(accept[..., None], cand, -1).reshape(len(r), -1)],
          axis=1)
      members = _unique_rows(members, n)
      valid = members < n
      safe = np.where(valid, members, 0)
      rowi = np.broadcast_to(r[:, None], members.shape)
      w = np.exp(-self._original(rowi, safe)).astype(np.float32)
      w = np.where(valid, w, 0.0).astype(np.float32)
      w /= w.sum(axis=1, keepdims=True)
      rows_v.append(rowi[valid])
      cols_v.append(members[valid])
      weights_v.append(w[valid])
      self.reciprocal += [np.sort(row[row >= 0]) for row in recip]
    v = scipy.sparse.csr_matrix(
        (np.concatenate(weights_v),
         (np.concatenate(rows_v), np.concatenate(cols_v))), shape=(n, n),
        dtype=np.float32)
    if self.k2 != 1:  # Local query expansion: the mean of V over k2 nearest.
      k2 = min(self.k2, n)
      avg = scipy.sparse.csr_matrix(
          (np.ones(n * k2, np.float32),
           (np.repeat(everyone, k2), self.nearest[:, :k2].reshape(-1))),
          shape=(n, n))
      v = (avg @ v).tocsr()
      v.data = (v.data / np.float32(self.k2)).astype(np.float32)
    v.eliminate_zeros()
    v.sort_indices()
    self.v = v
    self._v_columns = v.tocsc()

  def _jaccard(self, rows: np.ndarray) -> np.ndarray:
    """(len(rows), N) Jaccard distances of rows to every row, via the
    inverted index (V's columns): only pairs sharing a nonzero are touched."""
    n = self.v.shape[0]
    sub = self.v[rows].tocoo()
    cols = self._v_columns
    lengths = np.diff(cols.indptr)[sub.col]
    total = int(lengths.sum())
    starts = np.repeat(cols.indptr[sub.col], lengths)
    offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths,
                                           lengths)
    at = starts + offsets
    mins = np.minimum(np.repeat(sub.data, lengths), cols.data[at])
    key = np.repeat(sub.row, lengths).astype(np.int64) * n + cols.indices[at]
    shared = np.bincount(key, weights=mins, minlength=len(rows) * n)
    shared = shared.reshape(len(rows), n).astype(np.float32)
    return 1.0 - shared / (2.0 - shared)

  def distances(self, rows) -> np.ndarray:
    """(len(rows), G) re-ranked distances of the queries `rows` (smaller is
    closer); with same_set, column i of query i is its self-match."""
    rows = np.asarray(rows, np.int64).reshape(-1)
    if len(rows) and (rows.min() < 0 or rows.max() >= self.num_queries):
      raise ValueError(f"query rows must be in [0, {self.num_queries})")
    out = []
    for padded, chunk in self._chunks(rows):
      m = int((padded >= 0).sum())
      jac = np.ones((len(padded), self.num_gallery), np.float32)
      jac[:m] = self._jaccard(padded[:m])[:, self._first:]
      block = _final_block(chunk, padded, self._x, self._norms,
                           self._row_max[np.maximum(padded, 0)], jac,
                           jnp.float32(self.lambda_value), first=self._first)
      out.append(np.asarray(block)[:m])
    if not out:
      return np.zeros((0, self.num_gallery), np.float32)
    return np.concatenate(out)

  def neighbours(self, rows, k: int) -> np.ndarray:
    """(len(rows), k) gallery indices of the queries `rows`, re-ranked,
    nearest first (ties: the lower index); with same_set, a query's own row
    is never among them. The signature of metrics.ranking_metrics."""
    rows = np.asarray(rows, np.int64).reshape(-1)
    limit = self.num_gallery - int(self.same_set)
    if not 1 <= k <= limit:
      raise ValueError(f"k={k} must be in [1, {limit}]")
    out = []
    for s in range(0, len(rows), self.chunk_size):
      part = rows[s:s + self.chunk_size]
      block = self.distances(part)
      self_column = part if self.same_set else np.full(len(part), -1)
      pad = self.chunk_size - len(part)
      block = np.pad(block, ((0, pad), (0, 0)))
      self_column = np.pad(self_column, (0, pad), constant_values=-1)
      idx = _top_k_smallest(block, self_column, k=k)
      out.append(np.asarray(idx)[:len(part)])
    if not out:
      return np.zeros((0, k), np.int32)
    return np.concatenate(out).astype(np.int32)


def check_k_reciprocal_args(k1, k2, lambda_value) -> None:
  if not isinstance(k1, (int, np.integer)) or k1 < 1:
    raise ValueError(f"k1 must be an integer >= 1, got {k1!r}")
  if not isinstance(k2, (int, np.integer)) or k2 < 1:
    raise ValueError(f"k2 must be an integer >= 1, got {k2!r}")
  if not 0.0 <= float(lambda_value) <= 1.0:
    raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value!r}")


def k_reciprocal(query, gallery=None, *, k1: int = 20, k2: int = 6,
                 lambda_value: float = 0.3, metric: str = "cosine",
                 chunk_size: int | None = None) -> np.ndarray:
  """k-reciprocal re-ranked distances (Zhong et al. 2017; module docstring).

  Args:
    query: (Q, D) embeddings.
    gallery: (G, D) embeddings; None: the queries are the gallery
      (leave-one-out; the diagonal is then each query's self-match).
    k1, k2, lambda_value: the paper's parameters (20, 6, 0.3 there).
    metric: "cosine" (euclidean distance of the L2-normalised embeddings)
      or "l2" (of the embeddings as given).
    chunk_size: rows per block of distances (default: 2**23 // N).

  Returns:
    (Q, G) float32 distances, smaller is closer: (1 - lambda_value) *
    Jaccard distance + lambda_value * squared distance / its row maximum.
    Dense: for large sets use `KReciprocal(...).neighbours` instead.
  """
  rr = KReciprocal(query, gallery, k1=k1, k2=k2, lambda_value=lambda_value,
                   metric=metric, chunk_size=chunk_size)
  return rr.distances(np.arange(rr.num_queries))


def _expand(base, pool, k: int, alpha: float, exclude) -> np.ndarray:
  """normalise(base + sum over base's k nearest in pool of max(s, 0)^alpha x)."""
  sims, idx = knn(base, pool, k, metric="ip", exclude=exclude)
  weights = np.power(np.maximum(sims, 0.0), np.float32(alpha))
  out = base + np.einsum("qk,qkd->qd", weights, pool[idx])
  return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


class QueryExpansion:
  """Expanded query (and, with dba, gallery) embeddings; the re-ranking is
  cosine search over them. Attributes: query, gallery (L2-normalised),
  same_set, num_queries, num_gallery."""

  def __init__(self, query, gallery=None, *, k: int = 5, alpha: float = 3.0,
               dba: bool = False):
    check_query_expansion_args(k, alpha)
    query = _embeddings(query, "cosine", "query")
    self.same_set = gallery is None
    gallery = query if self.same_set else _embeddings(gallery, "cosine",
                                                      "gallery")
    if gallery.shape[1] != query.shape[1]:
      raise ValueError(f"query and gallery dims differ: {query.shape[1]} "
                       f"and {gallery.shape[1]}")
    limit = len(gallery) - int(self.same_set or dba)
    if k > limit:
      raise ValueError(f"k={k} must be at most {limit} for {len(gallery)} "
                       "gallery rows" + (" (one excluded per row)"
                                         if self.same_set or dba else ""))
    rows = np.arange(len(gallery))
    if dba:  # Each gallery row with its k nearest others.
      gallery = _expand(gallery, gallery, k, alpha, rows)
    self.query = _expand(query, gallery, k, alpha,
                         np.arange(len(query)) if self.same_set else None)
    self.gallery = gallery
    self.num_queries, self.num_gallery = len(query), len(gallery)

  def similarities(self, rows) -> np.ndarray:
    """(len(rows), G) cosine similarities of the expanded queries `rows`
    (larger is closer); with same_set, column i of query i is itself."""
    rows = np.asarray(rows, np.int64).reshape(-1)
    return self.query[rows] @ self.gallery.T

  def neighbours(self, rows, k: int) -> np.ndarray:
    """(len(rows), k) gallery indices of the expanded queries `rows`, best
    first; with same_set, a query's own row is never among them."""
    rows = np.asarray(rows, np.int64).reshape(-1)
    _, idx = knn(self.query[rows], self.gallery, k, metric="ip",
                 exclude=rows if self.same_set else None)
    return idx


def check_query_expansion_args(k, alpha) -> None:
  if not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k must be an integer >= 1, got {k!r}")
  if not float(alpha) >= 0.0:
    raise ValueError(f"alpha must be >= 0, got {alpha!r}")


def query_expansion(query, gallery=None, *, k: int = 5, alpha: float = 3.0,
                    dba: bool = False) -> np.ndarray:
  """Query-expanded similarities (module docstring).

  Args:
    query: (Q, D) embeddings.
    gallery: (G, D) embeddings; None: the queries are the gallery
      (leave-one-out: a query's own row is not among its k expansion
      neighbours; the diagonal of the result is its self-match).
    k: gallery neighbours averaged into each query (and gallery row, dba).
    alpha: weight exponent, similarity ** alpha; 0 is average QE, 3 is
      Radenovic et al.'s alpha-QE.
    dba: database-side augmentation of the gallery first.

  Returns:
    (Q, G) float32 cosine similarities of the expanded embeddings, larger
    is closer.
  """
  qe = QueryExpansion(query, gallery, k=k, alpha=alpha, dba=dba)
  return qe.similarities(np.arange(qe.num_queries))


def reranker(method: str, query, gallery=None, **kwargs):
  """`KReciprocal` or `QueryExpansion` by name ("k_reciprocal",
  "query_expansion"), with its keyword arguments."""
  if method == "k_reciprocal":
    return KReciprocal(query, gallery, **kwargs)
  if method == "query_expansion":
    return QueryExpansion(query, gallery, **kwargs)
  raise ValueError(f"re-ranking method must be one of {METHODS}, got "
                   f"{method!r}")

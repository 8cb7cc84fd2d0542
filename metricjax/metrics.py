"""Evaluation metrics, returned as plain dicts of Python floats.

Retrieval metrics follow "A Metric Learning Reality Check" (Musgrave et al.,
ECCV 2020) and agree with pytorch-metric-learning's AccuracyCalculator:

- R, for a query, is the number of references sharing its label (the query
  itself not counted when the query set is the reference set).
- precision_at_1: the nearest reference has the query's label.
- r_precision: correct references among the top R, divided by R.
- map_at_r: 1/R sum_{i<=R} P(i) [i-th neighbour correct], P(i) the precision
  of the top i.
- recall_at_{k}: the query has at least one correct reference in its top k
  (the "Recall@K" of metric-learning papers, not the IR recall).

"Lone" queries, whose label has no reference (R = 0: a class with one test
image, in self-query), are left out of every average, as AccuracyCalculator
does: they cannot be answered correctly and R-precision and MAP@R are
undefined for them; their count is `num_queries_without_positive`. If every
query is lone the metrics are NaN.

Ranking is by cosine similarity (both sides normalised), found by the
exact `metricjax.ops.knn.knn`; among equal similarities the lower reference
index ranks first, so results are deterministic.
"""

import functools
import logging
import math
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from metricjax.ops.knn import knn
from metricjax.ops.knn import References

# Similarity rows kept in memory at once by the cross-modal metrics: 2**24
# float32 is 64 MiB.
_CHUNK_ELEMENTS = 2**24
# Fewer chunks than this finish quickly and get no progress bar.
_PROGRESS_MIN_CHUNKS = 5


@functools.partial(jax.jit, static_argnames=("ks",))
def _chunk_metrics(indices, query_labels, r, reference_labels, *, ks):
  """Per-query hits of one chunk of queries, from their ranked neighbours."""
  k = indices.shape[1]
  correct = reference_labels[indices] == query_labels[:, None]
  rank = jnp.arange(1, k + 1)
  hits = correct & (rank[None, :] <= r[:, None])
  safe_r = jnp.maximum(r, 1).astype(jnp.float32)  # lone rows dropped later
  precision_at_i = jnp.cumsum(hits, axis=1) / rank
  out = {
      "precision_at_1": correct[:, 0],
      "r_precision": jnp.sum(hits, axis=1) / safe_r,
      "map_at_r": jnp.sum(jnp.where(hits, precision_at_i, 0.0), 1) / safe_r,
  }
  for kk in ks:
    out[f"recall_at_{kk}"] = jnp.any(correct[:, :min(kk, k)], axis=1)
  return out


def retrieval_metrics(query, query_labels, reference=None,
                      reference_labels=None, *, ks: Sequence[int] = (1, 5, 10),
                      chunk_size: int | None = None) -> dict[str, float]:
  """Precision@1, R-precision, MAP@R and Recall@k of cosine retrieval.

  Args:
    query: (Q, D) embeddings.
    query_labels: (Q,) integer labels.
    reference: (M, D) embeddings; None retrieves among the queries
      themselves, each query excluded from its own results.
    reference_labels: (M,) integer labels, given with reference.
    ks: the k of each recall_at_{k}.
    chunk_size: queries per block of the metric computation (the neighbour
      search chunks on its own). Every block has this shape (the last is
      padded), so it compiles once.

  Returns:
    {"precision_at_1", "r_precision", "map_at_r", "recall_at_{k}"...} as
    floats, averaged over the queries that are not lone (module docstring),
    and "num_queries_without_positive", the number of lone queries (int).
  """
  query = np.asarray(query, np.float32)
  same_source = reference is None
  if same_source:
    if reference_labels is not None:
      raise ValueError("reference_labels given without reference")
  elif reference_labels is None:
    raise ValueError("reference given without reference_labels")
  reference = query if same_source else np.asarray(reference, np.float32)
  if len(query) != len(np.asarray(query_labels).reshape(-1)) or (
      not same_source and len(reference) != len(
          np.asarray(reference_labels).reshape(-1))):
    raise ValueError("embeddings and labels must have the same length")
  placed = None

  def neighbours(rows, k):
    nonlocal placed
    if placed is None:  # The references are placed once.
      placed = References.place(reference, k_hint=k)
    _, indices = knn(query[rows], placed, k, metric="cosine",
                     exclude=rows if same_source else None)
    return indices

  return ranking_metrics(neighbours, query_labels, reference_labels, ks=ks,
                         chunk_size=chunk_size)


def ranking_metrics(neighbours, query_labels, reference_labels=None, *,
                    ks: Sequence[int] = (1, 5, 10),
                    chunk_size: int | None = None) -> dict[str, float]:
  """`retrieval_metrics` of any ranking: the same keys and definitions, with
  the neighbours given by a function instead of cosine search (a re-ranking,
  metricjax.rerank, or another distance).

  Args:
    neighbours: `neighbours(rows, k)` -> (len(rows), k) ints, the indices of
      the k best references of the queries `rows` (a numpy int array of
      query indices), best first; with reference_labels None, a query's own
      index must not be among them. Called once per chunk of queries, so
      only chunk_size x k indices are held at once.
    query_labels: (Q,) integer labels.
    reference_labels: (M,) integer labels; None: the queries are the
      references (leave-one-out).
    ks: the k of each recall_at_{k}.
    chunk_size: queries per call of `neighbours` (default: about 2**24
      neighbour indices per chunk).

  Returns:
    As retrieval_metrics.
  """
  same_source = reference_labels is None
  query_labels = np.asarray(query_labels).reshape(-1)
  reference_labels = query_labels if same_source else np.asarray(
      reference_labels).reshape(-1)
  ks = tuple(int(k) for k in ks)
  if any(k < 1 for k in ks):
    raise ValueError(f"ks must be positive, got {ks}")

  # Dense int32 ids: arbitrary (int64, sparse) labels compare the same way.
  _, ids = np.unique(np.concatenate([query_labels, reference_labels]),
                     return_inverse=True)
  query_ids = ids[:len(query_labels)].astype(np.int32)
  reference_ids = ids[len(query_labels):].astype(np.int32)
  counts = np.bincount(reference_ids, minlength=ids.max(initial=0) + 1)
  r = counts[query_ids] - int(same_source)
  not_lone = r > 0

  num_refs = len(reference_labels) - int(same_source)
  k = min(max(int(r.max(initial=0)), max(ks)), num_refs)
  names = ["precision_at_1", "r_precision", "map_at_r"]
  names += [f"recall_at_{kk}" for kk in ks]
  lone = int(np.sum(~not_lone))
  if not not_lone.any():
    logging.warning("retrieval_metrics: no query label is in the reference "
                    "set; every metric is NaN.")
    return {**{name: math.nan for name in names},
            "num_queries_without_positive": lone}

  num_queries = len(query_labels)
  if chunk_size is None:
    chunk_size = max(1, _CHUNK_ELEMENTS // k)
  chunk_size = min(int(chunk_size), num_queries)
  num_chunks = -(-num_queries // chunk_size)
  pad = num_chunks * chunk_size - num_queries
  query_ids = np.pad(query_ids, (0, pad))
  r_padded = np.pad(r, (0, pad)).astype(np.int32)
  # Each chunk of queries is ranked (exactly, metricjax.ops.knn, for
  # retrieval_metrics) and scored on its own, so only a chunk's neighbours
  # (chunk_size x k) are ever held, however many queries.
  reference_ids = jnp.asarray(reference_ids)
  parts = {name: [] for name in names}
  for c in range(num_chunks):
    s = slice(c * chunk_size, (c + 1) * chunk_size)
    rows = np.arange(num_queries)[s]
    indices = np.asarray(neighbours(rows, k), np.int32)
    if indices.shape != (len(rows), k):
      raise ValueError(f"neighbours(rows, {k}) gave {indices.shape}, "
                       f"expected {(len(rows), k)}")
    indices = np.pad(indices, ((0, chunk_size - len(rows)), (0, 0)))
    out = _chunk_metrics(indices, query_ids[s], r_padded[s], reference_ids,
                         ks=ks)
    for name in names:
      parts[name].append(np.asarray(out[name]))
  result = {
      name: float(np.mean(np.concatenate(parts[name])[:num_queries][not_lone],
                          dtype=np.float64))
      for name in names
  }
  result["num_queries_without_positive"] = lone
  return result


def accuracy(logits, labels) -> float:
  """Share of rows whose arg-max logit is the label."""
  logits, labels = np.asarray(logits), np.asarray(labels)
  return float(np.mean(np.argmax(logits, axis=-1) == labels))


# --- Cross-modal (image <-> caption) retrieval -------------------------------
#
# VSE++ evaluation semantics (fartashf/vsepp evaluation.py, i2t and t2i):
# caption j describes image j // captions_per_image; scores are dot products
# of the embeddings as given (the models L2-normalise them). Image
# annotation (i2t) ranks all captions for each image and takes the best rank
# of its own captions; image retrieval (t2i) ranks all images for each
# caption and takes the rank of its image. R@k is the percentage of queries
# ranked below k (0-based), medr = floor(median(0-based rank)) + 1.
# Ties count against the query (a negative scoring exactly as high as the
# true item is ranked before it), so a collapsed model, all scores equal,
# scores R@k ~ 0 rather than 100; without ties this is VSE++'s argsort.

_CROSSMODAL_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr", "t2i_r1",
                    "t2i_r5", "t2i_r10", "t2i_medr", "rsum")


@functools.partial(jax.jit, static_argnames=("captions_per_image",))
def _i2t_ranks(images, captions, first, *, captions_per_image):
  """0-based rank of the best own caption of each image of the chunk."""
  sim = jnp.matmul(images, captions.T, precision=jax.lax.Precision.HIGHEST)
  owner = jnp.arange(captions.shape[0]) // captions_per_image
  own = owner[None, :] == (first + jnp.arange(images.shape[0]))[:, None]
  best = jnp.max(jnp.where(own, sim, -jnp.inf), axis=1)
  return jnp.sum((sim >= best[:, None]) & ~own, axis=1)


@functools.partial(jax.jit, static_argnames=("captions_per_image",))
def _t2i_ranks(captions, images, first, *, captions_per_image):
  """0-based rank of the own image of each caption of the chunk."""
  sim = jnp.matmul(captions, images.T, precision=jax.lax.Precision.HIGHEST)
  own_image = (first + jnp.arange(captions.shape[0])) // captions_per_image
  own = jnp.arange(images.shape[0])[None, :] == own_image[:, None]
  true = jnp.sum(jnp.where(own, sim, 0.0), axis=1)
  return jnp.sum((sim >= true[:, None]) & ~own, axis=1)


def _chunked_ranks(fn, queries, refs, captions_per_image, desc):
  n = len(queries)
  chunk = max(1, min(n, _CHUNK_ELEMENTS // max(1, len(refs))))
  num_chunks = -(-n // chunk)
  queries = jnp.pad(queries, ((0, num_chunks * chunk - n), (0, 0)))
  ranks = []
  for c in tqdm.tqdm(range(num_chunks), desc=desc, unit="chunk",
                     file=sys.stderr, leave=False,
                     disable=num_chunks < _PROGRESS_MIN_CHUNKS):
    ranks.append(np.asarray(fn(queries[c * chunk:(c + 1) * chunk], refs,
                               c * chunk,
                               captions_per_image=captions_per_image)))
  return np.concatenate(ranks)[:n]


def _rank_summary(ranks: np.ndarray, prefix: str) -> dict[str, float]:
  out = {f"{prefix}_r{k}": float(100.0 * np.mean(ranks < k))
         for k in (1, 5, 10)}
  out[f"{prefix}_medr"] = float(np.floor(np.median(ranks)) + 1)
  return out


def crossmodal_metrics(image_emb, caption_emb, *,
                       captions_per_image: int = 5) -> dict[str, float]:
  """Image annotation and retrieval recalls, VSE++ semantics (see above).

  Args:
    image_emb: (N, D), one row per image.
    caption_emb: (N * captions_per_image, D); caption j belongs to image
      j // captions_per_image.
    captions_per_image: captions per image (5 for Flickr and COCO).

  Returns:
    i2t_r1, i2t_r5, i2t_r10 (percent), i2t_medr (1-based), the same for
    t2i, and rsum (the six recalls summed). NaN everywhere when an
    embedding is not finite.
  """
  image_emb = np.asarray(image_emb, np.float32)
  caption_emb = np.asarray(caption_emb, np.float32)
  if image_emb.ndim != 2 or caption_emb.ndim != 2:
    raise ValueError("embeddings must be 2-D (rows, dim)")
  if len(caption_emb) != len(image_emb) * captions_per_image:
    raise ValueError(
        f"{len(caption_emb)} captions for {len(image_emb)} images; expected "
        f"{captions_per_image} per image, caption j of image "
        f"j // {captions_per_image}")
  if not (np.isfinite(image_emb).all() and np.isfinite(caption_emb).all()):
    logging.warning("crossmodal_metrics: non-finite embeddings; every metric "
                    "is NaN.")
    return {k: math.nan for k in _CROSSMODAL_KEYS}
  images, captions = jnp.asarray(image_emb), jnp.asarray(caption_emb)
  out = _rank_summary(_chunked_ranks(_i2t_ranks, images, captions,
                                     captions_per_image, "i2t"), "i2t")
  out.update(_rank_summary(_chunked_ranks(_t2i_ranks, captions, images,
                                          captions_per_image, "t2i"), "t2i"))
  out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i")
                    for k in (1, 5, 10))
  return out


def coco_1k_5fold(image_emb, caption_emb, *, captions_per_image: int = 5,
                  fold_size: int = 1000) -> dict[str, float]:
  """"COCO 1K": crossmodal_metrics on 5 folds of fold_size images, averaged.

  Fold f holds images [f * fold_size, (f + 1) * fold_size) and their
  captions. Every key is averaged, medr included (so it may be fractional),
  as VSE++'s evalrank(fold5=True) does.
  """
  image_emb = np.asarray(image_emb)
  if len(image_emb) != 5 * fold_size:
    raise ValueError(f"COCO 1K needs 5 x {fold_size} test images, got "
                     f"{len(image_emb)}")
  caption_emb = np.asarray(caption_emb)
  step = fold_size * captions_per_image
  folds = [crossmodal_metrics(image_emb[f * fold_size:(f + 1) * fold_size],
                              caption_emb[f * step:(f + 1) * step],
                              captions_per_image=captions_per_image)
           for f in range(5)]
  return {k: float(np.mean([m[k] for m in folds])) for k in _CROSSMODAL_KEYS}

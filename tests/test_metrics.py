"""Retrieval metrics against pytorch-metric-learning's AccuracyCalculator;
cross-modal (image-caption) metrics against VSE++'s evaluation."""

import math

import numpy as np
import pytest

from metricjax import metrics

PML_KEYS = {"precision_at_1": "precision_at_1", "r_precision": "r_precision",
            "map_at_r": "mean_average_precision_at_r"}


def pml_metrics(query, query_labels, reference=None, reference_labels=None,
                knn="cosine"):
  """PML's three metrics; skips the calling test when PML is absent."""
  torch = pytest.importorskip("torch")
  pml_accuracy = pytest.importorskip(
      "pytorch_metric_learning.utils.accuracy_calculator")
  pml_distances = pytest.importorskip("pytorch_metric_learning.distances")
  pml_inference = pytest.importorskip("pytorch_metric_learning.utils.inference")
  # CustomKNN ranks by cosine like we do; the default FaissKNN ranks by L2,
  # the same order once the embeddings are normalised.
  knn_func = (pml_inference.CustomKNN(pml_distances.CosineSimilarity())
              if knn == "cosine" else None)
  calc = pml_accuracy.AccuracyCalculator(
      include=tuple(PML_KEYS.values()), device=torch.device("cpu"),
      knn_func=knn_func)
  out = calc.get_accuracy(query, query_labels, reference, reference_labels)
  return {ours: out[theirs] for ours, theirs in PML_KEYS.items()}


def numpy_recall(query, query_labels, reference, reference_labels, ks):
  """Recall@k transcribed directly: sort every similarity, drop self."""
  same_source = reference is None
  if same_source:
    reference, reference_labels = query, query_labels
  q = query / np.linalg.norm(query, axis=1, keepdims=True)
  r = reference / np.linalg.norm(reference, axis=1, keepdims=True)
  sim = q.astype(np.float64) @ r.T.astype(np.float64)
  if same_source:
    np.fill_diagonal(sim, -np.inf)
  order = np.argsort(-sim, axis=1, kind="stable")
  correct = reference_labels[order] == query_labels[:, None]
  if same_source:
    correct = correct[:, :-1]  # self, last after -inf
  count = (reference_labels[None, :] == query_labels[:, None]).sum(1)
  not_lone = count - int(same_source) > 0
  return {f"recall_at_{k}": correct[not_lone, :k].any(1).mean() for k in ks}


def random_set(rng, n, num_classes, dim=8):
  # Class structure so the metrics are neither 0 nor 1.
  centers = rng.normal(size=(num_classes, dim))
  labels = rng.integers(0, num_classes, n)
  return (centers[labels] + 1.5 * rng.normal(size=(n, dim))).astype(
      np.float32), labels


def check(got, want, ks):
  got = dict(got)
  assert type(got.pop("num_queries_without_positive", 0)) is int
  for key in PML_KEYS:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-6, err_msg=key)
  assert set(got) == set(PML_KEYS) | {f"recall_at_{k}" for k in ks}
  assert all(type(v) is float for v in got.values())


@pytest.mark.parametrize("seed", [0, 1])
def test_same_source_matches_pml(seed):
  rng = np.random.default_rng(seed)
  x, labels = random_set(rng, 120, 6)
  ks = (1, 5, 10)
  got = metrics.retrieval_metrics(x, labels, ks=ks)
  check(got, pml_metrics(x, labels), ks)
  for key, value in numpy_recall(x, labels, None, None, ks).items():
    assert got[key] == pytest.approx(value, abs=1e-12), key
  assert got["recall_at_1"] == got["precision_at_1"]


def test_same_source_matches_pml_faiss():
  rng = np.random.default_rng(2)
  x, labels = random_set(rng, 100, 5)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  check(metrics.retrieval_metrics(x, labels),
        pml_metrics(x, labels, knn="faiss"), (1, 5, 10))


@pytest.mark.parametrize("seed", [0, 1])
def test_separate_reference_matches_pml(seed):
  rng = np.random.default_rng(seed + 10)
  x, labels = random_set(rng, 150, 7)
  query, query_labels = x[:50], labels[:50]
  ref, ref_labels = x[50:], labels[50:]
  ks = (1, 3, 200)  # 200 > the reference count: recall over all of it
  got = metrics.retrieval_metrics(query, query_labels, ref, ref_labels, ks=ks)
  check(got, pml_metrics(query, query_labels, ref, ref_labels), ks)
  for key, value in numpy_recall(query, query_labels, ref, ref_labels,
                                 ks).items():
    assert got[key] == pytest.approx(value, abs=1e-12), key
  assert got["recall_at_200"] == 1.0


def test_lone_queries_are_left_out():
  rng = np.random.default_rng(3)
  x, labels = random_set(rng, 80, 4)
  # Same source: label 9 occurs once, so that query has no relevant item.
  labels = labels.copy()
  labels[17] = 9
  got = metrics.retrieval_metrics(x, labels)
  assert got.pop("num_queries_without_positive") == 1
  check(got, pml_metrics(x, labels), (1, 5, 10))
  for key, value in numpy_recall(x, labels, None, None, (1, 5, 10)).items():
    assert got[key] == pytest.approx(value, abs=1e-12), key

  # Separate reference: queries whose label no reference has count for
  # nothing, exactly as if they had not been asked.
  query, query_labels = x[:30], labels[:30].copy()
  ref, ref_labels = x[30:], labels[30:]
  query_labels[:5] = 7
  got = metrics.retrieval_metrics(query, query_labels, ref, ref_labels)
  check(got, pml_metrics(query, query_labels, ref, ref_labels), (1, 5, 10))
  want = metrics.retrieval_metrics(query[5:], query_labels[5:], ref, ref_labels)
  # The 5 relabelled queries and query 17, whose label 9 is unique.
  assert got.pop("num_queries_without_positive") == 6
  assert want.pop("num_queries_without_positive") == 1
  assert got == want


def test_all_lone_is_nan():
  x = np.eye(4, dtype=np.float32)
  got = metrics.retrieval_metrics(x, np.arange(4), ks=(1, 2))
  assert got.pop("num_queries_without_positive") == 4
  assert len(got) == 5 and all(math.isnan(v) for v in got.values())


@pytest.mark.parametrize("same_source", [True, False])
def test_chunking_is_exact(same_source):
  rng = np.random.default_rng(4)
  x, labels = random_set(rng, 103, 5)  # 103 = 14 * 7 + 5: a padded chunk
  args = (x, labels) if same_source else (x[:60], labels[:60], x[60:],
                                          labels[60:])
  whole = metrics.retrieval_metrics(*args, chunk_size=10_000)
  for chunk_size in (7, 16):
    assert metrics.retrieval_metrics(*args, chunk_size=chunk_size) == whole


def test_ties_rank_lower_index_first():
  # Two identical references with different labels: the first one wins.
  ref = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
  query = np.array([[2.0, 0.1]], np.float32)
  first = metrics.retrieval_metrics(query, [0], ref, [0, 1, 2], ks=(1,))
  second = metrics.retrieval_metrics(query, [1], ref, [0, 1, 2], ks=(1,))
  assert first["precision_at_1"] == 1.0
  assert second["precision_at_1"] == 0.0
  assert second["map_at_r"] == 0.0  # R = 1, and rank 1 is wrong


def test_accuracy():
  logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
  assert metrics.accuracy(logits, np.array([1, 0, 0])) == pytest.approx(2 / 3)


# --- Cross-modal metrics vs VSE++'s evaluation.py -----------------------------


def vsepp_i2t(images, captions):
  """evaluation.i2t, transcribed (images repeated 5 times per image)."""
  npts = images.shape[0] // 5
  ranks = np.zeros(npts)
  for index in range(npts):
    im = images[5 * index].reshape(1, images.shape[1])
    d = np.dot(im, captions.T).flatten()
    inds = np.argsort(d)[::-1]
    rank = 1e20
    for i in range(5 * index, 5 * index + 5, 1):
      tmp = np.where(inds == i)[0][0]
      if tmp < rank:
        rank = tmp
    ranks[index] = rank
  r1 = 100.0 * len(np.where(ranks < 1)[0]) / len(ranks)
  r5 = 100.0 * len(np.where(ranks < 5)[0]) / len(ranks)
  r10 = 100.0 * len(np.where(ranks < 10)[0]) / len(ranks)
  medr = np.floor(np.median(ranks)) + 1
  return r1, r5, r10, medr


def vsepp_t2i(images, captions):
  """evaluation.t2i, transcribed."""
  npts = images.shape[0] // 5
  ims = np.array([images[i] for i in range(0, len(images), 5)])
  ranks = np.zeros(5 * npts)
  for index in range(npts):
    queries = captions[5 * index:5 * index + 5]
    d = np.dot(queries, ims.T)
    inds = np.zeros(d.shape)
    for i in range(len(inds)):
      inds[i] = np.argsort(d[i])[::-1]
      ranks[5 * index + i] = np.where(inds[i] == index)[0][0]
  r1 = 100.0 * len(np.where(ranks < 1)[0]) / len(ranks)
  r5 = 100.0 * len(np.where(ranks < 5)[0]) / len(ranks)
  r10 = 100.0 * len(np.where(ranks < 10)[0]) / len(ranks)
  medr = np.floor(np.median(ranks)) + 1
  return r1, r5, r10, medr


def correlated_embeddings(n_images, seed, noise):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(n_images, 16))
  caps = np.repeat(images, 5, axis=0) + noise * rng.normal(size=(5 * n_images,
                                                                 16))
  images /= np.linalg.norm(images, axis=1, keepdims=True)
  caps /= np.linalg.norm(caps, axis=1, keepdims=True)
  return images.astype(np.float32), caps.astype(np.float32)


@pytest.mark.parametrize("n_images, noise", [(40, 2.5), (40, 6.0), (37, 4.0)])
def test_crossmodal_metrics_match_vsepp(n_images, noise):
  images, caps = correlated_embeddings(n_images, n_images, noise)
  # Float64 scores of the float32 embeddings, as the metrics compute them.
  im64, cap64 = images.astype(np.float64), caps.astype(np.float64)
  sims = im64 @ cap64.T
  assert len(np.unique(sims)) == sims.size  # Ties-free: ranks are defined.
  got = metrics.crossmodal_metrics(images, caps)
  i2t = vsepp_i2t(np.repeat(im64, 5, axis=0), cap64)
  t2i = vsepp_t2i(np.repeat(im64, 5, axis=0), cap64)
  want = dict(zip(("i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr"), i2t))
  want.update(zip(("t2i_r1", "t2i_r5", "t2i_r10", "t2i_medr"), t2i))
  want["rsum"] = sum(i2t[:3]) + sum(t2i[:3])
  assert set(got) == set(want)
  for k in want:
    assert got[k] == pytest.approx(want[k], abs=1e-9), k
  assert all(isinstance(v, float) for v in got.values())
  # The cases are informative: neither perfect nor chance.
  assert 0 < got["t2i_r1"] < 100 and got["i2t_medr"] + got["t2i_medr"] > 2


def test_crossmodal_metrics_known_ranks_and_ties():
  # 2 images, 1 caption each, along the axes: caption 0 scores image 1 higher.
  images = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
  caps = np.array([[0.1, 0.9], [0.0, 1.0]], np.float32)
  got = metrics.crossmodal_metrics(images, caps, captions_per_image=1)
  # i2t: image 0 ranks caption 0 first (0.1 > 0.0); image 1 ranks caption 1
  # first (1.0 > 0.9). t2i: caption 0 ranks image 0 second.
  assert got["i2t_r1"] == 100.0 and got["t2i_r1"] == 50.0
  assert got["t2i_medr"] == 1.0  # floor(median(0, 1)) + 1
  # All scores equal (a collapsed model): ties count against the query.
  flat = metrics.crossmodal_metrics(np.ones((4, 3)), np.ones((20, 3)))
  assert flat["i2t_r1"] == 0.0 and flat["t2i_r1"] == 0.0
  assert flat["t2i_medr"] == 4.0
  with pytest.raises(ValueError, match="per image"):
    metrics.crossmodal_metrics(np.ones((4, 3)), np.ones((19, 3)))


def test_coco_1k_5fold_averages_folds():
  images, caps = correlated_embeddings(50, 7, 2.0)
  got = metrics.coco_1k_5fold(images, caps, fold_size=10)
  folds = [metrics.crossmodal_metrics(images[10 * f:10 * f + 10],
                                      caps[50 * f:50 * f + 50])
           for f in range(5)]
  for k in got:
    assert got[k] == pytest.approx(np.mean([m[k] for m in folds]))
  with pytest.raises(ValueError, match="5 x 10"):
    metrics.coco_1k_5fold(images[:40], caps[:200], fold_size=10)

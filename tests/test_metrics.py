"""Retrieval metrics against pytorch-metric-learning's AccuracyCalculator."""

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

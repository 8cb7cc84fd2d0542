"""NMI / AMI of k-means on embeddings."""

import numpy as np

from metricjax.clustering import clustering_metrics


def test_separated_classes_score_one_and_noise_scores_zero():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(8), 20)
  centres = rng.normal(size=(8, 16)) * 10
  clean = centres[labels] + rng.normal(size=(160, 16)) * 0.1
  out = clustering_metrics(clean, labels)
  assert out["nmi"] > 0.99 and out["ami"] > 0.99
  noise = clustering_metrics(rng.normal(size=(160, 16)), labels)
  assert noise["ami"] < 0.1 and noise["nmi"] < out["nmi"]


def test_deterministic_and_ordered():
  rng = np.random.default_rng(1)
  labels = np.repeat(np.arange(4), 10)
  x = np.eye(4)[labels] + rng.normal(size=(40, 4)) * 0.3
  out = clustering_metrics(x, labels, seed=3)
  assert 0 < out["ami"] <= out["nmi"] <= 1
  # Same seed, same clusters: deterministic.
  assert clustering_metrics(x, labels, seed=3) == out

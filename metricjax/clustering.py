"""Clustering quality of embeddings: NMI and AMI of a k-means clustering.

As pytorch-metric-learning's AccuracyCalculator reports them (and the
field's papers tabulate NMI): k-means of the L2-normalised test embeddings
into as many clusters as the test split has classes, its cluster ids
compared with the labels by normalised and adjusted mutual information
(scikit-learn's, arithmetic normalisation). k-means is seeded, so the
figures are reproducible; a single initialisation (n_init=1), as faiss'
k-means in AccuracyCalculator.
"""

import math

import numpy as np


def clustering_metrics(embeddings, labels, *, seed: int = 0,
                       max_iter: int = 100) -> dict[str, float]:
  """{"nmi", "ami"} of k-means(embeddings, #classes) against labels."""
  from sklearn import cluster  # pylint: disable=g-import-not-at-top
  from sklearn import metrics  # pylint: disable=g-import-not-at-top
  x = np.asarray(embeddings, np.float32)
  labels = np.asarray(labels).reshape(-1)
  if x.ndim != 2 or len(x) != len(labels):
    raise ValueError(f"embeddings {x.shape} and labels {labels.shape} do not "
                     "match")
  k = len(np.unique(labels))
  if not np.isfinite(x).all() or k < 2 or k >= len(x):
    return {"nmi": math.nan, "ami": math.nan}
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  assigned = cluster.KMeans(n_clusters=k, n_init=1, max_iter=max_iter,
                            random_state=seed).fit_predict(x)
  return {"nmi": float(metrics.normalized_mutual_info_score(labels, assigned)),
          "ami": float(metrics.adjusted_mutual_info_score(labels, assigned))}

"""The retrieval task's photo-benchmark conventions: recall ks per
benchmark (from each source), In-Shop query -> gallery, skipped rows out
of the metrics; what the host pipeline cannot train."""

import types

import numpy as np
import pytest

import replicas
from metricjax.config_utils import base_config
from metricjax.data import load_dataset
from metricjax.data import sources
from metricjax.errors import UserError
from metricjax.tasks import retrieval_eval
from metricjax.tasks import retrieval_inputs


def _config(ks):
  config = base_config()
  config.eval.update(dict(ks=ks, clustering=True, kmeans_max_iter=50))
  return config


def test_conventions():
  assert sources.recall_ks("cub") == (1, 2, 4, 8)
  assert sources.recall_ks("cars196") == (1, 2, 4, 8)
  assert sources.recall_ks("sop") == (1, 10, 100, 1000)
  assert sources.recall_ks("inshop") == (1, 10, 20, 30, 40, 50)
  assert sources.recall_ks("csv:/any/file.csv") == (1, 2, 4, 8)
  assert sources.convention("InShop").clustering
  assert not sources.convention("mnist").clustering
  assert sources.benchmarks() == ("cub", "cars196", "sop", "inshop")


def test_inshop_queries_only_the_gallery(tmp_path):
  replicas.make_inshop(str(tmp_path))
  ds = load_dataset("inshop", "test", data_dir=str(tmp_path))
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(ds.num_classes, 8))
  centres[:, 7] = 0
  emb = centres[ds.labels] + 0.01 * rng.normal(size=(len(ds), 8))
  emb[:, 7] = 0
  # Queries share a large component no gallery image has: it leaves the
  # cosine ranking of the gallery as it was but makes every query the
  # nearest neighbour of the others. Only the gallery is ranked.
  emb[ds.is_query, 7] = 100
  keep = np.ones(len(ds), bool)
  metrics = retrieval_eval.split_metrics(_config((1, 10)), ds, emb, keep,
                                         clustering=True)
  assert metrics["recall_at_1"] == 1.0
  assert set(metrics) >= {"recall_at_10", "map_at_r", "nmi", "ami"}
  # Self-retrieval over the same rows would find the other queries first.
  same = retrieval_eval.split_metrics(
      _config((1,)), ds.__class__(**{**ds.__dict__, "is_query": None,
                                     "is_gallery": None}), emb, keep,
      clustering=False)
  assert same["recall_at_1"] < 1.0 and "nmi" not in same


def test_skipped_rows_are_left_out(tmp_path):
  replicas.make_sop(str(tmp_path))
  ds = load_dataset("sop", "test", data_dir=str(tmp_path))
  emb = np.eye(ds.num_classes)[ds.labels].astype(np.float32)
  keep = np.ones(len(ds), bool)
  keep[0] = False
  emb[0] = -1.0  # A black view's embedding: would be a wrong neighbour.
  metrics = retrieval_eval.split_metrics(_config((1, 2)), ds, emb, keep,
                                         clustering=False)
  assert metrics["precision_at_1"] == 1.0


def test_views_losses_need_a_second_view_the_host_does_not_make():
  # Refused by name before the (conflicting) augment message.
  config = base_config()
  config.augment = True
  config.loss.name = "vicreg"
  with pytest.raises(UserError, match="one view per image"):
    retrieval_inputs.Photos().check(config, types.SimpleNamespace(name="cub"),
                                    val_size=0, val_classes=0)

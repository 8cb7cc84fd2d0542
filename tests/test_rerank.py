"""metricjax.rerank: k-reciprocal encoding against the authors' reference,
query expansion, their memory-bounded chunking, and evaluate --rerank.

The reference is Zhong et al.'s `re_ranking(q_g_dist, q_q_dist, g_g_dist,
k1, k2, lambda_value)` (zhunzhong07/person-re-ranking, numpy, taking
distance matrices: Houjing Huang's version), as vendored verbatim in the
PyPI package torchreid 0.2.5 (torchreid/reid/utils/rerank.py; the dev
extra installs it). Its file is loaded alone, so torchreid's own imports
(torch, its models) never run. Without the package the reference tests
are skipped, saying so.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from metricjax import metrics
from metricjax import rerank
from helpers import REPO
from helpers import xla_flags


def _reference():
  spec = importlib.util.find_spec("torchreid")
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("the k-reciprocal reference needs torchreid==0.2.5 (pip "
                "install -e '.[dev]'), which vendors the authors' re_ranking")
  path = os.path.join(list(spec.submodule_search_locations)[0], "reid",
                      "utils", "rerank.py")
  if not os.path.exists(path):
    pytest.skip(f"this torchreid has no {path}")
  module_spec = importlib.util.spec_from_file_location("_zhong_rerank", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.re_ranking


def _clustered(n, dim, classes, seed):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, dim))
  labels = rng.integers(0, classes, n)
  x = centres[labels] + 0.8 * rng.normal(size=(n, dim))
  return x.astype(np.float32), labels


def _dist(a, b):
  """Euclidean distances, float64 then float32, as a user would pass."""
  a, b = a.astype(np.float64), b.astype(np.float64)
  return np.sqrt(np.maximum(((a[:, None] - b[None]) ** 2).sum(-1), 0)
                 ).astype(np.float32)


def _normalise(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (7, 3, 0.1), (5, 1, 0.5)])
def test_k_reciprocal_matches_reference(k1, k2, lam):
  re_ranking = _reference()
  x, _ = _clustered(90, 8, 6, seed=k1)
  q, g = x[:30], x[30:]
  expected = re_ranking(_dist(q, g), _dist(q, q), _dist(g, g), k1=k1, k2=k2,
                        lambda_value=lam)
  got = rerank.k_reciprocal(q, g, k1=k1, k2=k2, lambda_value=lam, metric="l2")
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-6)
  # metric="cosine" is the same on L2-normalised embeddings.
  qn, gn = _normalise(q), _normalise(g)
  expected = re_ranking(_dist(qn, gn), _dist(qn, qn), _dist(gn, gn), k1=k1,
                        k2=k2, lambda_value=lam)
  np.testing.assert_allclose(
      rerank.k_reciprocal(q, g, k1=k1, k2=k2, lambda_value=lam), expected,
      rtol=1e-5, atol=2e-6)


def test_leave_one_out_matches_reference_split():
  """gallery=None re-ranks the set among itself: the reference's result for
  any split of the set into query and gallery is that block."""
  re_ranking = _reference()
  x, _ = _clustered(60, 6, 5, seed=3)
  full = rerank.k_reciprocal(x, metric="l2", k1=6, k2=3)
  q, g = x[:25], x[25:]
  expected = re_ranking(_dist(q, g), _dist(q, q), _dist(g, g), k1=6, k2=3)
  np.testing.assert_allclose(full[:25, 25:], expected, rtol=1e-5, atol=2e-6)


def test_reciprocal_sets_of_a_constructed_example():
  """Two tight pairs far apart, and a loner: on a line at 0, 1, 10, 11, 30.
  With k1 = 1 a row's 2 nearest are itself and its partner, so R is the
  pair; the loner's nearest other (11) has it outside its 2 nearest."""
  x = np.array([[0.0], [1.0], [10.0], [11.0], [30.0]], np.float32)
  rr = rerank.KReciprocal(x, k1=1, k2=1, metric="l2")
  sets = [r.tolist() for r in rr.reciprocal]
  assert sets == [[0, 1], [0, 1], [2, 3], [2, 3], [4]]
  np.testing.assert_array_equal(rr.nearest[:, 0], np.arange(5))
  # V of the loner is itself alone; of a pair member, weights exp(-d) of
  # the pair, normalised by the row's largest squared distance.
  v = rr.v.toarray()
  np.testing.assert_allclose(v[4], [0, 0, 0, 0, 1])
  d = np.array([0.0, 1.0]) / 900.0  # row 0: (0-30)^2 is its largest
  np.testing.assert_allclose(v[0, :2], np.exp(-d) / np.exp(-d).sum(),
                             rtol=1e-6)
  # Pairs share the support of V (weights differ a little, each row is
  # normalised by its own largest distance): Jaccard near 0, 1 elsewhere.
  dist = rerank.k_reciprocal(x, k1=1, k2=1, lambda_value=0.0, metric="l2")
  assert dist[0, 0] == pytest.approx(0, abs=1e-6) and 0 < dist[0, 1] < 0.01
  np.testing.assert_allclose(dist[0, 2:], [1, 1, 1], atol=1e-6)


def test_lambda_one_is_the_original_distance():
  x, _ = _clustered(40, 5, 4, seed=1)
  q, g = x[:10], x[10:]
  got = rerank.k_reciprocal(q, g, lambda_value=1.0, metric="l2", k1=5)
  sq = _dist(q, np.concatenate([q, g])).astype(np.float64) ** 2
  expected = (sq / sq.max(axis=1, keepdims=True))[:, 10:]
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_chunk_size_does_not_change_the_result():
  x, _ = _clustered(70, 6, 5, seed=2)
  q, g = x[:20], x[20:]
  whole = rerank.k_reciprocal(q, g, k1=8, k2=3, chunk_size=1000)
  for chunk in (8, 13):  # The same up to the matmul's rounding (an ulp).
    np.testing.assert_allclose(
        rerank.k_reciprocal(q, g, k1=8, k2=3, chunk_size=chunk), whole,
        rtol=1e-6, atol=1e-7)
  rr = rerank.KReciprocal(x, k1=8, k2=3, chunk_size=16)
  rows = np.arange(70)
  dense = rr.distances(rows)
  np.fill_diagonal(dense, np.inf)
  np.testing.assert_array_equal(rr.neighbours(rows, 5),
                                np.argsort(dense, axis=1, kind="stable")[:, :5])


def test_bad_arguments():
  x = np.zeros((5, 2), np.float32)
  for kwargs in (dict(k1=0), dict(k2=0), dict(lambda_value=1.5),
                 dict(metric="dot")):
    with pytest.raises(ValueError):
      rerank.KReciprocal(x, **kwargs)
  with pytest.raises(ValueError):
    rerank.QueryExpansion(x, k=5)  # 4 others at most
  with pytest.raises(ValueError):
    rerank.reranker("nope", x)


def _qe_by_hand(q, g, k, alpha, exclude_self):
  q, g = _normalise(q.astype(np.float64)), _normalise(g.astype(np.float64))
  sims = q @ g.T
  if exclude_self:
    np.fill_diagonal(sims, -np.inf)
  out = []
  for i in range(len(q)):
    top = np.argsort(-sims[i], kind="stable")[:k]
    w = np.maximum(sims[i, top], 0) ** alpha
    out.append(q[i] + w @ g[top])
  return _normalise(np.array(out))


@pytest.mark.parametrize("alpha", [0.0, 3.0])
def test_query_expansion(alpha):
  x, _ = _clustered(50, 6, 5, seed=4)
  q, g = x[:15], x[15:]
  expanded = _qe_by_hand(q, g, 3, alpha, False)
  np.testing.assert_allclose(
      rerank.query_expansion(q, g, k=3, alpha=alpha),
      expanded @ _normalise(g.astype(np.float64)).T, atol=1e-5)
  # Average QE (alpha = 0) is the plain mean of the query and its k nearest.
  if alpha == 0:
    gn = _normalise(g)
    top = np.argsort(-(_normalise(q) @ gn.T), axis=1)[:, :3]
    mean = _normalise(_normalise(q) + gn[top].sum(1))
    np.testing.assert_allclose(rerank.QueryExpansion(q, g, k=3, alpha=0).query,
                               mean, atol=1e-5)
  # Database-side augmentation: the gallery expanded by its k other nearest.
  qe = rerank.QueryExpansion(q, g, k=3, alpha=alpha, dba=True)
  np.testing.assert_allclose(qe.gallery, _qe_by_hand(g, g, 3, alpha, True),
                             atol=1e-5)
  # Leave-one-out: a query never expands with, nor retrieves, itself.
  qe = rerank.QueryExpansion(x, k=3, alpha=alpha)
  np.testing.assert_allclose(qe.query, _qe_by_hand(x, x, 3, alpha, True),
                             atol=1e-5)
  nb = qe.neighbours(np.arange(50), 4)
  assert not (nb == np.arange(50)[:, None]).any()


def test_ranking_metrics_of_cosine_neighbours_is_retrieval_metrics():
  x, labels = _clustered(80, 6, 8, seed=5)
  xn = _normalise(x)

  def cosine(rows, k):
    s = xn[rows] @ xn.T
    s[np.arange(len(rows)), rows] = -np.inf
    return np.argsort(-s, axis=1, kind="stable")[:, :k]

  expected = metrics.retrieval_metrics(x, labels, ks=(1, 4))
  got = metrics.ranking_metrics(cosine, labels, ks=(1, 4), chunk_size=7)
  assert got == pytest.approx(expected)
  # A re-ranker's neighbours plug in the same way.
  rr = rerank.KReciprocal(x, k1=6, k2=3)
  out = metrics.ranking_metrics(rr.neighbours, labels, ks=(1, 4))
  assert set(out) == set(expected)


def test_evaluate_cli_reranks(tiny_run, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_run[0], workdir)
  env = dict(os.environ, XLA_FLAGS=xla_flags(), PYTHONPATH=REPO + os.pathsep
             + os.environ.get("PYTHONPATH", ""))
  for method, extra in (("k_reciprocal", ["--rerank_k1=5", "--rerank_k2=2"]),
                        ("query_expansion", ["--rerank_k=2"])):
    proc = subprocess.run(
        [sys.executable, "-m", "metricjax.evaluate", f"--workdir={workdir}",
         f"--rerank={method}", *extra], capture_output=True, text=True,
        env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    step = tiny_run[1]["step"]
    with open(os.path.join(workdir, "eval", f"step_{step}.json")) as f:
      result = json.load(f)
    assert result["metrics"] == pytest.approx(tiny_run[1]["metrics"])
    reranked = result["reranked"]
    assert reranked["method"] == method
    assert set(reranked["metrics"]) == set(result["metrics"]) - {
        "nmi", "ami", "accuracy", "num_skipped_corrupt"}
    assert "reranked" in proc.stdout and "precision_at_1" in proc.stdout
  for bad in (["--rerank=nope"], ["--rerank=k_reciprocal", "--rerank_k1=0"]):
    proc = subprocess.run(
        [sys.executable, "-m", "metricjax.evaluate", f"--workdir={workdir}",
         *bad], capture_output=True, text=True, env=env, cwd=REPO,
        timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    error = proc.stderr.strip().split("\n\n")[-1]  # test_bad_input's check
    assert error.startswith("Error") and "--rerank" in error


@pytest.mark.parametrize("roles", [True, False], ids=["inshop", "self_query"])
def test_task_reranked_metrics_lambda_one_is_plain(tmp_path, roles):
  """Through the retrieval task: In-Shop re-ranks its gallery for its
  queries, other splits the rows among themselves (self excluded); with
  lambda = 1 the ranking, so the metrics, are the plain ones."""
  import replicas
  from metricjax.config_utils import base_config
  from metricjax.data import load_dataset
  from metricjax.tasks import retrieval_eval
  replicas.make_inshop(str(tmp_path))
  ds = load_dataset("inshop", "test", data_dir=str(tmp_path))
  if not roles:
    ds = ds.__class__(**{**ds.__dict__, "is_query": None, "is_gallery": None})
  rng = np.random.default_rng(0)
  emb = (rng.normal(size=(ds.num_classes, 8))[ds.labels]
         + 0.3 * rng.normal(size=(len(ds), 8))).astype(np.float32)
  keep = np.ones(len(ds), bool)
  keep[1] = False
  config = base_config()
  config.eval.ks = (1, 2)
  plain = retrieval_eval.split_metrics(config, ds, emb, keep, clustering=False)
  same = retrieval_eval.reranked_metrics(
      config, ds, emb, keep,
      dict(method="k_reciprocal", params=dict(k1=3, k2=1, lambda_value=1.0)))
  assert same == pytest.approx(plain)
  qe = retrieval_eval.reranked_metrics(
      config, ds, emb, keep,
      dict(method="query_expansion", params=dict(k=1, alpha=0.0, dba=True)))
  assert set(qe) == set(plain)

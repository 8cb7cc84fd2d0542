"""metricjax.ops.knn: exact, chunked, sharded k nearest neighbours."""

import jax
import numpy as np
import pytest

from metricjax import parallel
from metricjax import xla_routing
from metricjax.ops import knn as knn_lib


def brute_force(queries, refs, metric):
  """Exact ranking scores in float64: larger is better."""
  q, r = queries.astype(np.float64), refs.astype(np.float64)
  if metric == "cosine":
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    r = r / np.linalg.norm(r, axis=1, keepdims=True)
  if metric == "l2":
    return -np.sum(np.square(q[:, None] - r[None]), axis=-1)
  return q @ r.T


def brute_force_knn(queries, refs, k, metric):
  scores = brute_force(queries, refs, metric)
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  values = np.take_along_axis(scores, order, axis=1)
  return (-values if metric == "l2" else values), order


def assert_exact_neighbours(queries, refs, metric, indices, atol=1e-5):
  """Each rank holds a reference as good as brute force's at that rank (in
  float64): the same list up to float32 near-ties, which may swap."""
  exact = brute_force(queries, refs, metric)
  want = -np.sort(-exact, axis=1)[:, :indices.shape[1]]
  np.testing.assert_allclose(np.take_along_axis(exact, indices, axis=1), want,
                             rtol=0, atol=atol)
  assert (np.sort(indices, axis=1)[:, :-1] != np.sort(indices, axis=1)[:, 1:]).all()


@pytest.fixture
def small_chunks(monkeypatch):
  # Several query and reference chunks, a shifted last chunk, and the
  # block top-k, on small inputs.
  monkeypatch.setattr(knn_lib, "QUERY_CHUNK", 16)
  monkeypatch.setattr(knn_lib, "REF_CHUNK", 256)
  monkeypatch.setattr(knn_lib, "MAX_BLOCK_ELEMENTS", 16 * 100)


@pytest.mark.parametrize("metric", knn_lib.METRICS)
@pytest.mark.parametrize("num_refs, k", [(1000, 1), (1000, 3), (1000, 10),
                                         (300, 300), (7, 5)])
def test_knn_matches_brute_force(metric, num_refs, k, small_chunks):
  if num_refs == 1000:  # Several reference chunks, the last one shifted.
    assert knn_lib._ref_chunk(num_refs, k, 16) == 256
  rng = np.random.default_rng(num_refs + k)
  refs = rng.normal(size=(num_refs, 12)).astype(np.float32)
  queries = rng.normal(size=(77, 12)).astype(np.float32)  # 5 chunks of 16.
  scores, indices = knn_lib.knn(queries, refs, k, metric=metric)
  want_scores, want_indices = brute_force_knn(queries, refs, k, metric)
  assert scores.dtype == np.float32 and indices.dtype == np.int32
  assert_exact_neighbours(queries, refs, metric, indices)
  assert np.mean(indices == want_indices) > 0.999
  np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("k", [3, 20])  # Block top-k; plain top_k.
def test_ties_go_to_the_lower_index(metric, k, small_chunks):
  # Small integers: every score is exact in float32, so ties are real ties.
  rng = np.random.default_rng(0)
  refs = rng.integers(-2, 3, size=(1500, 6)).astype(np.float32)
  queries = rng.integers(-2, 3, size=(40, 6)).astype(np.float32)
  _, indices = knn_lib.knn(queries, refs, k, metric=metric)
  np.testing.assert_array_equal(
      indices, brute_force_knn(queries, refs, k, metric)[1])
  same = np.ones((600, 4), np.float32)
  np.testing.assert_array_equal(
      knn_lib.knn(same[:3], same, 5, metric=metric)[1],
      np.broadcast_to(np.arange(5), (3, 5)))


@pytest.mark.parametrize("k", [3, 20])
def test_compiler_options_reach_the_search_and_keep_its_results(
    k, small_chunks):
  # The matmul on Eigen instead of YNNPACK (tools/bench_search.py's
  # eigen_dot): the same neighbours, ties included.
  reduce_only = "LIBRARY_FUSION_TYPE_REDUCE"
  if jax.default_backend() != "cpu" or not xla_routing.option_supported(
      xla_routing.YNN_OPTION, reduce_only):
    pytest.skip("XLA:CPU's YNN routing option")
  options = {xla_routing.YNN_OPTION: reduce_only}
  rng = np.random.default_rng(4)
  refs = rng.integers(-2, 3, size=(1500, 6)).astype(np.float32)
  queries = rng.integers(-2, 3, size=(40, 6)).astype(np.float32)
  for metric in ("ip", "l2"):
    _, indices = knn_lib.knn(queries, refs, k, metric=metric,
                             compiler_options=options)
    np.testing.assert_array_equal(
        indices, brute_force_knn(queries, refs, k, metric)[1])
  with pytest.raises(Exception, match="xla_cpu_no_such_option"):
    knn_lib.knn(queries, refs, k,
                compiler_options={"xla_cpu_no_such_option": True})


def test_exclude_drops_one_reference_per_query(small_chunks):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(500, 8)).astype(np.float32)
  _, indices = knn_lib.knn(x, x, 4, exclude=np.arange(500))
  scores = brute_force(x, x, "cosine")
  np.fill_diagonal(scores, -np.inf)
  np.testing.assert_array_equal(
      indices, np.argsort(-scores, axis=1, kind="stable")[:, :4])


@pytest.mark.parametrize("metric", knn_lib.METRICS)
def test_sharded_equals_one_device(metric):
  assert jax.device_count() == 8
  rng = np.random.default_rng(2)
  refs = rng.integers(-3, 4, size=(5003, 16)).astype(np.float32)
  queries = rng.integers(-3, 4, size=(21, 16)).astype(np.float32)
  if metric == "cosine":  # Integer data would tie up to rounding.
    refs += rng.normal(size=refs.shape).astype(np.float32)
  placed = knn_lib.References.place(refs, k_hint=10)
  assert placed.mesh is not None and placed.mesh.devices.size == 8
  one = parallel.create_mesh(jax.devices()[:1])
  s8, i8 = knn_lib.knn(queries, placed, 10, metric=metric)
  s1, i1 = knn_lib.knn(queries, refs, 10, metric=metric, mesh=one)
  np.testing.assert_array_equal(i8, i1)
  np.testing.assert_allclose(s8, s1, rtol=1e-6, atol=1e-6)
  assert_exact_neighbours(queries, refs, metric, i1)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_agrees_with_faiss_flat(metric):
  faiss = pytest.importorskip("faiss")
  rng = np.random.default_rng(3)
  refs = rng.normal(size=(3000, 32)).astype(np.float32)
  queries = rng.normal(size=(50, 32)).astype(np.float32)
  flat = (faiss.IndexFlatIP if metric == "ip" else faiss.IndexFlatL2)(32)
  flat.add(refs)
  want_scores, want_indices = flat.search(queries, 10)
  scores, indices = knn_lib.knn(queries, refs, 10, metric=metric)
  np.testing.assert_array_equal(indices, want_indices)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-4)


def test_knn_rejects_bad_arguments():
  x = np.zeros((4, 3), np.float32)
  with pytest.raises(ValueError, match="k=5"):
    knn_lib.knn(x, x, 5)
  with pytest.raises(ValueError, match="k=4"):
    knn_lib.knn(x, x, 4, exclude=np.arange(4))
  with pytest.raises(ValueError, match="metric"):
    knn_lib.knn(x, x, 1, metric="hamming")
  with pytest.raises(ValueError, match="queries"):
    knn_lib.knn(np.zeros((2, 5)), x, 1)


# --- Index -------------------------------------------------------------------

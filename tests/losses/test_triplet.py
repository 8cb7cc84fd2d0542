"""Triplet, Shadow, contrastive, NT-Xent and cross-batch memory losses.

Values and gradients are checked against pytorch-metric-learning where it is
installed (those tests skip otherwise).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metricjax.losses import REGISTRY
from metricjax.losses import contrastive
from metricjax.losses import shadow
from metricjax.losses import triplet
from metricjax.losses import xbm

RTOL, ATOL = 1e-5, 1e-6


def _pml():
  torch = pytest.importorskip("torch")
  pml = pytest.importorskip("pytorch_metric_learning")
  del pml
  # pylint: disable-next=g-import-not-at-top
  from pytorch_metric_learning import distances, losses, miners
  return torch, distances, losses, miners


def _batch(seed, n=24, dim=8, classes=4):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, dim)).astype(np.float32)
  return x, rng.integers(0, classes, n).astype(np.int32)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _value_and_grad(fn, kwargs, x, labels):
  return jax.value_and_grad(lambda e: fn(e, labels, **dict(kwargs)))(x)


def _ours(fn, x, labels, **kwargs):
  # Static (fn, kwargs): batches of one shape share one compilation.
  v, g = _value_and_grad(fn, tuple(sorted(kwargs.items())), jnp.asarray(x),
                         jnp.asarray(labels))
  return float(v), np.asarray(g)


def _theirs(torch, loss, x, labels, miner=None, **kwargs):
  t = torch.tensor(x, requires_grad=True)
  tl = torch.tensor(labels, dtype=torch.long)
  indices = None
  if miner is not None:  # mined against the reference set when there is one
    refs = [kwargs[k] for k in ("ref_emb", "ref_labels") if k in kwargs]
    indices = miner(t, tl, *refs)
  value = loss(t, tl, indices, **kwargs)
  value.backward()
  return value.item(), t.grad.numpy()


def _assert_same(ours, theirs):
  np.testing.assert_allclose(ours[0], theirs[0], rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-4, atol=1e-6)


def _pml_distance(distances, distance, normalize):
  if distance == "cosine":
    return distances.CosineSimilarity()
  return distances.LpDistance(normalize_embeddings=normalize,
                              power=2 if distance == "squared_euclidean" else 1)


_DISTANCES = [("euclidean", True), ("euclidean", False),
              ("squared_euclidean", True), ("cosine", True)]


@pytest.mark.parametrize("mining", ["all", "hard", "semihard"])
@pytest.mark.parametrize("distance,normalize", _DISTANCES)
def test_triplet_matches_pml(mining, distance, normalize):
  torch, distances, losses, miners = _pml()
  x, labels = _batch(0)
  margin = 0.05 if mining == "all" else 0.2  # semi-hard needs a window
  dist = _pml_distance(distances, distance, normalize)
  miner = {"all": None,
           "hard": miners.BatchHardMiner(distance=dist),
           "semihard": miners.TripletMarginMiner(
               margin=margin, type_of_triplets="semihard", distance=dist),
           }[mining]
  theirs = _theirs(torch, losses.TripletMarginLoss(margin=margin,
                                                   distance=dist),
                   x, labels, miner)
  ours = _ours(triplet.triplet_margin_loss, x, labels, margin=margin,
               distance=distance, mining=mining, normalize=normalize)
  assert theirs[0] > 0
  _assert_same(ours, theirs)


def test_triplet_pml_default():
  torch, _, losses, _ = _pml()
  x, labels = _batch(1)
  _assert_same(_ours(triplet.triplet_margin_loss, x, labels),
               _theirs(torch, losses.TripletMarginLoss(), x, labels))


@pytest.mark.parametrize("kwargs,pml_kwargs", [
    ({}, {}),
    ({"pos_margin": 1.0, "neg_margin": 0.0, "distance": "cosine"},
     {"pos_margin": 1, "neg_margin": 0, "distance": "cosine"}),
    ({"pos_margin": 0.5, "neg_margin": 3.0, "normalize": False},
     {"pos_margin": 0.5, "neg_margin": 3.0, "distance": "unnormalized"}),
])
def test_contrastive_matches_pml(kwargs, pml_kwargs):
  torch, distances, losses, _ = _pml()
  x, labels = _batch(2)
  pml_kwargs = dict(pml_kwargs)
  if "distance" in pml_kwargs:
    pml_kwargs["distance"] = (
        distances.CosineSimilarity() if pml_kwargs["distance"] == "cosine"
        else distances.LpDistance(normalize_embeddings=False))
  _assert_same(_ours(contrastive.contrastive_loss, x, labels, **kwargs),
               _theirs(torch, losses.ContrastiveLoss(**pml_kwargs), x, labels))


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_ntxent_matches_pml(temperature):
  torch, _, losses, _ = _pml()
  x, labels = _batch(3)
  _assert_same(
      _ours(contrastive.ntxent_loss, x, labels, temperature=temperature),
      _theirs(torch, losses.NTXentLoss(temperature=temperature), x, labels))


def _pml_pair_loss(losses, miners, name):
  """PML's (loss, miner) for a registered pair loss with its defaults."""
  if name == "ms":
    return losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner()
  return {"triplet": losses.TripletMarginLoss, "ntxent": losses.NTXentLoss,
          "contrastive": losses.ContrastiveLoss}[name](), None


@pytest.mark.parametrize("seed", [4, 30])
@pytest.mark.parametrize("name", ["triplet", "contrastive", "ntxent", "ms"])
def test_reference_set_matches_pml(name, seed):
  torch, _, losses, miners = _pml()
  x, labels = _batch(seed, n=12)
  r, ref_labels = _batch(seed + 1, n=20)
  fn = REGISTRY[name].fn
  pml_loss, miner = _pml_pair_loss(losses, miners, name)
  ours = _ours(functools.partial(fn, ref_embeddings=jnp.asarray(r),
                                 ref_labels=jnp.asarray(ref_labels)),
               x, labels)
  theirs = _theirs(torch, pml_loss, x, labels, miner,
                   ref_emb=torch.tensor(r),
                   ref_labels=torch.tensor(ref_labels, dtype=torch.long))
  assert theirs[0] > 0
  _assert_same(ours, theirs)


@pytest.mark.parametrize("name", ["contrastive", "triplet", "ntxent", "ms"])
def test_xbm_matches_pml_over_batches(name):
  torch, _, losses, miners = _pml()
  pml_loss, miner = _pml_pair_loss(losses, miners, name)
  dim, memory_size = 8, 40  # three batches of 16 wrap the ring
  memory = losses.CrossBatchMemory(pml_loss, dim, memory_size=memory_size,
                                   miner=miner)
  state = xbm.xbm_init(memory_size, dim)
  step = jax.jit(jax.value_and_grad(
      lambda e, l, s: xbm.xbm_loss(REGISTRY[name].fn, s, e, l), has_aux=True))
  for b in range(3):
    x, labels = _batch(10 + b, n=16)
    (value, state), grad = step(jnp.asarray(x), jnp.asarray(labels), state)
    theirs = _theirs(torch, memory, x, labels)
    _assert_same((float(value), np.asarray(grad)), theirs)
    assert int(state.ptr) == memory.queue_idx
  np.testing.assert_array_equal(np.asarray(state.labels),
                                memory.label_memory.numpy())
  np.testing.assert_allclose(np.asarray(state.embeddings),
                             memory.embedding_memory.numpy())


_PML_NAMES = ["triplet", "contrastive", "ntxent"]


@pytest.mark.parametrize("labels", [np.zeros(10, np.int32),
                                    np.arange(10, dtype=np.int32)],
                         ids=["one_class", "all_distinct"])
def test_degenerate_batches(labels):
  torch, _, losses, miners = _pml()
  x, _ = _batch(6, n=10)
  cases = [("triplet", {}, losses.TripletMarginLoss(), None),
           ("triplet", {"mining": "hard"}, losses.TripletMarginLoss(),
            miners.BatchHardMiner()),
           ("triplet", {"mining": "semihard"}, losses.TripletMarginLoss(),
            miners.TripletMarginMiner(0.05, type_of_triplets="semihard")),
           ("contrastive", {}, losses.ContrastiveLoss(), None),
           ("ntxent", {}, losses.NTXentLoss(), None)]
  for name, kwargs, pml_loss, miner in cases:
    ours = _ours(REGISTRY[name].fn, x, labels, **kwargs)
    _assert_same(ours, _theirs(torch, pml_loss, x, labels, miner))
    if name != "contrastive":  # it has only positive or only negative pairs
      assert ours[0] == 0.0 and not np.any(ours[1])
  for mining in ("all", "hard", "semihard"):
    value, grad = _ours(shadow.shadow_margin_loss, x, labels, mining=mining)
    assert value == 0.0 and not np.any(grad)


@pytest.mark.parametrize("name,kwargs", [
    ("triplet", {}), ("triplet", {"mining": "hard"}),
    ("triplet", {"mining": "semihard", "margin": 0.2}),
    ("shadow", {}), ("shadow", {"mining": "hard"}), ("contrastive", {}),
    ("ntxent", {}), ("ms", {})])
def test_padding_mask(name, kwargs):
  x, labels = _batch(7, n=20)
  pad = 6
  xp = np.concatenate([x, np.full((pad, x.shape[1]), np.nan, np.float32)])
  xp[-1] = 0.0  # zeros and NaN padding both
  lp = np.concatenate([labels, labels[:pad]])
  mask = jnp.arange(len(xp)) < len(x)
  fn = REGISTRY[name].fn
  value, grad = _ours(fn, x, labels, **kwargs)
  value_p, grad_p = _ours(functools.partial(fn, mask=mask), xp, lp, **kwargs)
  np.testing.assert_allclose(value_p, value, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(grad_p[:len(x)], grad, rtol=1e-5, atol=1e-7)
  assert np.all(grad_p[len(x):] == 0.0)


@pytest.mark.parametrize("name", ["triplet", "ms"])
def test_xbm_padding_mask(name):
  dim, memory_size, pad = 8, 32, 5
  fn = functools.partial(xbm.xbm_loss, REGISTRY[name].fn)
  step = jax.jit(jax.value_and_grad(
      lambda e, l, s, m: fn(s, e, l, mask=m), has_aux=True))
  state, state_p = xbm.xbm_init(memory_size, dim), xbm.xbm_init(memory_size,
                                                                 dim)
  for b in range(3):
    x, labels = _batch(20 + b, n=12)
    (value, state), grad = step(x, labels, state, None)
    xp = np.concatenate([x[:4], np.full((pad, dim), np.nan, np.float32), x[4:]])
    lp = np.concatenate([labels[:4], np.zeros(pad, np.int32), labels[4:]])
    mask = np.ones(len(xp), bool)
    mask[4:4 + pad] = False
    (value_p, state_p), grad_p = step(xp, lp, state_p, mask)
    np.testing.assert_allclose(value_p, value, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(grad_p)[mask], grad, rtol=1e-5,
                               atol=1e-7)
    assert np.all(np.asarray(grad_p)[~mask] == 0.0)
  assert int(state_p.ptr) == int(state.ptr) == 36 % memory_size
  np.testing.assert_array_equal(state_p.valid, state.valid)
  np.testing.assert_array_equal(state_p.embeddings, state.embeddings)
  np.testing.assert_array_equal(state_p.labels, state.labels)


def test_xbm_enqueue_ring_and_stop_gradient():
  state = xbm.xbm_init(5, 2)
  x = jnp.arange(8.0).reshape(4, 2)
  state = xbm.xbm_enqueue(state, x, jnp.arange(4))
  state = xbm.xbm_enqueue(state, x + 100, jnp.arange(4) + 10,
                          mask=jnp.array([True, False, True, True]))
  np.testing.assert_array_equal(state.labels, [12, 13, 2, 3, 10])
  np.testing.assert_array_equal(state.valid, [True] * 5)
  assert int(state.ptr) == 2
  grad = jax.grad(lambda e: jnp.sum(xbm.xbm_enqueue(
      xbm.xbm_init(5, 2), e, jnp.arange(4)).embeddings))(x)
  assert not np.any(grad)
  with pytest.raises(ValueError):
    xbm.xbm_enqueue(xbm.xbm_init(3, 2), x, jnp.arange(4))


def test_shadow_hand_computed():
  # Unnormalised: ||a|| = 2, shadows 2 and -1, so delta+ = 0 (p = a + 10v,
  # v _|_ a) and delta- = 3; margin 4 leaves 1.
  a, p, n = jnp.array([[2.0, 0.0]]), jnp.array([[2.0, 10.0]]), jnp.array(
      [[-1.0, 0.0]])
  assert float(shadow.shadow_loss(a, p, n, margin=4.0, normalize=False)) == 1.0
  np.testing.assert_allclose(
      shadow.shadow_distance(a, jnp.concatenate([p, n])), [[0.0, 3.0]])
  # Second triplet: ||a|| = 1, shadows 0.5 and 2: relu(0.5 - 1 + 1) = 0.5.
  a2 = jnp.array([[2.0, 0.0], [1.0, 0.0]])
  p2 = jnp.array([[2.0, 10.0], [0.5, 3.0]])
  n2 = jnp.array([[-1.0, 0.0], [2.0, -7.0]])
  np.testing.assert_allclose(
      shadow.shadow_loss(a2, p2, n2, margin=1.0, normalize=False),
      (0.0 + 0.5) / 2)
  # Normalised: delta = 1 - cos; cos(a, p) = 1/sqrt(2), cos(a, n) = 0.
  value = shadow.shadow_loss(jnp.array([[3.0, 0.0]]), jnp.array([[1.0, 1.0]]),
                             jnp.array([[0.0, 5.0]]), margin=1.0)
  np.testing.assert_allclose(value, (1 - 2 ** -0.5) - 1.0 + 1.0, rtol=1e-6)


def test_shadow_safe_at_zero_anchor():
  zero = jnp.zeros((1, 3))
  p, n = jnp.ones((1, 3)), -jnp.ones((1, 3))
  for normalize in (True, False):
    value, grads = jax.value_and_grad(
        lambda a, p, n: shadow.shadow_loss(a, p, n, margin=0.3,
                                           normalize=normalize),
        argnums=(0, 1, 2))(zero, p, n)
    np.testing.assert_allclose(value, 0.3)  # both shadows are 0
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_shadow_is_half_squared_triplet_on_unit_norm():
  rng = np.random.default_rng(8)
  a, p, n = (rng.normal(size=(50, 16)).astype(np.float32) for _ in range(3))
  a, p, n = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (a, p, n))
  m = 0.3
  sq = lambda u, v: np.sum((u - v) ** 2, axis=1)
  triplet_value = np.mean(np.maximum(sq(a, p) - sq(a, n) + 2 * m, 0.0))
  for normalize in (True, False):
    np.testing.assert_allclose(
        shadow.shadow_loss(a, p, n, margin=m, normalize=normalize),
        0.5 * triplet_value, rtol=1e-5)


@pytest.mark.parametrize("mining", ["all", "hard", "semihard"])
def test_shadow_margin_is_half_squared_triplet(mining):
  x, labels = _batch(9, n=32, dim=16)
  m = 0.15
  value, grad = _ours(shadow.shadow_margin_loss, x, labels, margin=m,
                      mining=mining)
  t_value, t_grad = _ours(triplet.triplet_margin_loss, x, labels,
                          margin=2 * m, distance="squared_euclidean",
                          mining=mining)
  assert value > 0
  np.testing.assert_allclose(value, 0.5 * t_value, rtol=1e-5)
  np.testing.assert_allclose(grad, 0.5 * t_grad, rtol=1e-4, atol=1e-6)


def _brute_triplet(x, labels, margin, semihard):
  """float64 (N, N, N) reference: mean of the positive triplet losses."""
  x = x.astype(np.float64)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  d = np.sqrt(np.maximum(np.sum((x[:, None] - x[None]) ** 2, -1), 0.0))
  same = labels[:, None] == labels[None]
  valid = (same & ~np.eye(len(x), dtype=bool))[:, :, None] & ~same[:, None, :]
  gap = d[:, None, :] - d[:, :, None]  # d(a,n) - d(a,p), indexed [a, p, n]
  loss = margin - gap
  keep = valid & (loss > 0)
  if semihard:
    keep &= gap > 0
  return loss[keep].sum() / max(keep.sum(), 1)


@pytest.mark.parametrize("mining", ["all", "semihard"])
def test_sorted_prefix_matches_float64(mining):
  x, labels = _batch(11, n=160, dim=32, classes=12)
  value = triplet.triplet_margin_loss(jnp.asarray(x), jnp.asarray(labels),
                                      margin=0.1, mining=mining)
  np.testing.assert_allclose(
      value, _brute_triplet(x, labels, 0.1, mining == "semihard"), rtol=2e-5)


@pytest.mark.parametrize("mining", ["all", "semihard"])
def test_triplet_n1024_memory_is_quadratic(mining):
  n = 1024
  x, labels = _batch(12, n=n, dim=64, classes=n // 8)
  f = jax.jit(jax.value_and_grad(functools.partial(
      triplet.triplet_margin_loss, margin=0.1, mining=mining)))
  compiled = f.lower(jnp.asarray(x), jnp.asarray(labels)).compile()
  value, grad = compiled(jnp.asarray(x), jnp.asarray(labels))
  assert np.isfinite(value) and value > 0
  assert np.all(np.isfinite(grad))
  memory = compiled.memory_analysis()
  if memory is not None:  # not every backend reports it
    assert memory.temp_size_in_bytes < 64 * n * n * 4


def test_registry_signature():
  x, labels = _batch(13, n=12)
  mask = jnp.arange(12) < 10
  for name in ("triplet", "shadow", "contrastive", "ntxent"):
    loss = REGISTRY[name]
    assert loss.input == "embedding"
    value = jax.jit(functools.partial(loss.fn, mask=mask))(x, labels)
    assert value.shape == () and np.isfinite(value)


def test_unknown_options_raise():
  x, labels = _batch(14, n=6)
  with pytest.raises(ValueError, match="mining"):
    triplet.triplet_margin_loss(x, labels, mining="easy")
  with pytest.raises(ValueError, match="distance"):
    contrastive.contrastive_loss(x, labels, distance="manhattan")

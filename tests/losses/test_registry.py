"""The losses of issue 10 (proxy, margin-softmax, circle, SupCon, lifted,
margin, SoftTriple, FastAP, tuplet, intra-pair variance) against
pytorch-metric-learning: values and gradients w.r.t. the embeddings and the
learnable parameters, on random batches (float64 PML vs float32 here), with
PML's own parameters copied in. Also padding masks, the reference set where
PML takes `ref_emb`, the init functions, and sharded == unsharded for every
registered loss.
"""

import functools
from typing import Any, Callable, NamedTuple

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import pytest

from metricjax.losses import REGISTRY
from loss_harness import close_to_largest

NUM_CLASSES, DIM = 5, 8


def _pml():
  torch = pytest.importorskip("torch")
  pytest.importorskip("pytorch_metric_learning")
  # pylint: disable-next=g-import-not-at-top
  from pytorch_metric_learning import losses
  return torch, losses


class Case(NamedTuple):
  name: str  # REGISTRY key
  kwargs: dict  # our hyperparameters; PML's constructor gets pml_kwargs
  pml: Callable[..., Any]  # (losses module, **pml_kwargs) -> PML loss
  params: dict  # our keyword -> PML attribute
  pml_kwargs: dict | None = None  # defaults to kwargs
  ref: bool = False  # PML takes ref_emb


def _learnable(cls_name, **fixed):
  def make(losses, **kw):
    return getattr(losses, cls_name)(num_classes=NUM_CLASSES,
                                     embedding_size=DIM, **fixed, **kw)
  return make


def _plain(cls_name):
  return lambda losses, **kw: getattr(losses, cls_name)(**kw)


CASES = [
    Case("proxy_anchor", {}, _learnable("ProxyAnchorLoss"),
         {"proxies": "proxies"}),
    Case("proxy_anchor", {"margin": 0.3, "alpha": 8.0},
         _learnable("ProxyAnchorLoss"), {"proxies": "proxies"}),
    Case("proxy_nca", {}, _learnable("ProxyNCALoss"), {"proxies": "proxies"}),
    Case("proxy_nca", {"softmax_scale": 10.0}, _learnable("ProxyNCALoss"),
         {"proxies": "proxies"}),
    Case("normalized_softmax", {}, _learnable("NormalizedSoftmaxLoss"),
         {"W": "W"}),
    Case("cosface", {}, _learnable("CosFaceLoss"), {"W": "W"}),
    Case("cosface", {"margin": 0.2, "scale": 16.0}, _learnable("CosFaceLoss"),
         {"W": "W"}),
    Case("arcface", {}, _learnable("ArcFaceLoss"), {"W": "W"}),
    Case("arcface", {"margin": 60.0, "scale": 8.0}, _learnable("ArcFaceLoss"),
         {"W": "W"}),
    Case("subcenter_arcface", {}, _learnable("SubCenterArcFaceLoss"),
         {"W": "W"}),
    Case("subcenter_arcface", {"sub_centers": 2, "margin": 10.0},
         _learnable("SubCenterArcFaceLoss"), {"W": "W"}),
    # Issue 31's learnable losses at their defaults (their other settings,
    # miners and regularizers: test_weight_losses.py).
    Case("large_margin_softmax", {}, _learnable("LargeMarginSoftmaxLoss"),
         {"W": "W"}),
    Case("sphereface", {}, _learnable("SphereFaceLoss"), {"W": "W"}),
    Case("p2sgrad", {}, lambda losses, **kw: losses.P2SGradLoss(
        DIM, NUM_CLASSES, **kw), {"weight": "weight"}),
    Case("circle", {}, _plain("CircleLoss"), {}, ref=True),
    Case("circle", {"m": 0.25, "gamma": 16.0}, _plain("CircleLoss"), {},
         ref=True),
    Case("supcon", {}, _plain("SupConLoss"), {}, ref=True),
    Case("supcon", {"temperature": 0.5}, _plain("SupConLoss"), {}, ref=True),
    Case("lifted_structure", {}, _plain("LiftedStructureLoss"), {}, ref=True),
    Case("lifted_structure", {"neg_margin": 0.5, "pos_margin": 0.2},
         _plain("LiftedStructureLoss"), {}, ref=True),
    Case("generalized_lifted_structure", {},
         _plain("GeneralizedLiftedStructureLoss"), {}, ref=True),
    Case("generalized_lifted_structure", {"neg_margin": 0.5, "pos_margin": 0.2},
         _plain("GeneralizedLiftedStructureLoss"), {}, ref=True),
    Case("margin", {"learn_beta": True, "nu": 0.1},
         lambda losses, **kw: losses.MarginLoss(num_classes=NUM_CLASSES, **kw),
         {"beta": "beta"}, ref=True),
    Case("margin", {"learn_beta": True, "nu": 0.1, "margin": 0.1},
         _plain("MarginLoss"), {"beta": "beta"}, ref=True),
    Case("margin", {}, _plain("MarginLoss"), {}, ref=True),
    Case("soft_triple", {}, _learnable("SoftTripleLoss"), {"fc": "fc"}),
    Case("soft_triple", {"centers_per_class": 3, "la": 5.0, "gamma": 0.5,
                         "margin": 0.1},
         _learnable("SoftTripleLoss"), {"fc": "fc"}),
    Case("fastap", {}, _plain("FastAPLoss"), {}),
    Case("fastap", {"num_bins": 4}, _plain("FastAPLoss"), {}),
    Case("tuplet_margin", {}, _plain("TupletMarginLoss"), {}, ref=True),
    Case("tuplet_margin", {"margin": 20.0, "scale": 8.0},
         _plain("TupletMarginLoss"), {}, ref=True),
    Case("intra_pair_variance", {}, _plain("IntraPairVarianceLoss"), {},
         ref=True),
    Case("intra_pair_variance", {"pos_eps": 0.1, "neg_eps": 0.2},
         _plain("IntraPairVarianceLoss"), {}, ref=True),
]
IDS = [f"{c.name}-{i}" for i, c in enumerate(CASES)]


def _first_cases(cases):
  seen, out = set(), []
  for c in cases:
    if c.name not in seen:
      seen.add(c.name)
      out.append(c)
  return out


def _batch(seed, n=24, dim=DIM, classes=NUM_CLASSES):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, dim)).astype(np.float32)
  return x, rng.integers(0, classes, n).astype(np.int32)


# Static (fn, kwargs): seeds of one shape share one compilation.
@functools.partial(jax.jit, static_argnums=(0, 1))
def _value_and_grad(fn, kwargs, x, labels, params, extra):
  return jax.value_and_grad(
      lambda e, p: fn(e, labels, **p, **extra, **dict(kwargs)),
      argnums=(0, 1))(x, params)


def _ours(case, x, labels, params, **extra):
  value, (gx, gp) = _value_and_grad(
      REGISTRY[case.name].fn, tuple(sorted(case.kwargs.items())),
      jnp.asarray(x), jnp.asarray(labels), params, extra)
  return float(value), np.asarray(gx), {k: np.asarray(v) for k, v in gp.items()}


def _pml_case(case, seed):
  """PML's loss in float64 and its initial parameters, as float32 arrays."""
  torch, losses = _pml()
  torch.manual_seed(seed)
  loss = case.pml(losses, **(case.kwargs if case.pml_kwargs is None
                             else case.pml_kwargs))
  params = {k: np.asarray(getattr(loss, a).detach().numpy(), np.float32)
            for k, a in case.params.items()}
  for k, a in case.params.items():  # exactly the float32 values we use
    getattr(loss, a).data = torch.tensor(params[k], dtype=torch.float64)
  return torch, loss, params


def _theirs(torch, case, loss, x, labels, **kwargs):
  t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
  value = loss(t, torch.tensor(labels, dtype=torch.long), **kwargs)
  value.backward()
  # No grad at all (None) where PML returns its constant zero loss.
  grads = {k: np.zeros(getattr(loss, a).shape) if getattr(loss, a).grad is None
           else getattr(loss, a).grad.numpy() for k, a in case.params.items()}
  return value.item(), t.grad.numpy(), grads


def _assert_same(ours, theirs):
  close_to_largest(ours[0], theirs[0], rtol=1e-4)
  close_to_largest(ours[1], theirs[1])
  assert ours[2].keys() == theirs[2].keys()
  for k in ours[2]:
    close_to_largest(ours[2][k], theirs[2][k])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_pml(case, seed):
  torch, loss, params = _pml_case(case, seed)
  x, labels = _batch(seed)
  theirs = _theirs(torch, case, loss, x, labels)
  ours = _ours(case, x, labels, {k: jnp.asarray(v) for k, v in params.items()})
  assert theirs[0] != 0.0
  _assert_same(ours, theirs)


REF_CASES = [c for c in CASES if c.ref]


@pytest.mark.skipif(not REF_CASES, reason="no loss with a reference set yet")
@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("case", REF_CASES,
                         ids=[f"{c.name}-{i}" for i, c in enumerate(REF_CASES)])
def test_reference_set_matches_pml(case, seed):
  torch, loss, params = _pml_case(case, seed)
  x, labels = _batch(seed, n=12)
  r, ref_labels = _batch(seed + 100, n=20)
  theirs = _theirs(torch, case, loss, x, labels,
                   ref_emb=torch.tensor(r, dtype=torch.float64),
                   ref_labels=torch.tensor(ref_labels, dtype=torch.long))
  ours = _ours(case, x, labels, {k: jnp.asarray(v) for k, v in params.items()},
               ref_embeddings=jnp.asarray(r), ref_labels=jnp.asarray(ref_labels))
  assert theirs[0] != 0.0
  _assert_same(ours, theirs)


def _init_params(name, seed=0, **kwargs):
  init = REGISTRY[name].init
  if init is None:
    return {}
  return init(jax.random.key(seed), num_classes=NUM_CLASSES,
              embedding_dim=DIM, **kwargs)


PADDED = 30  # Rows of a masked batch: 24 real (_batch's default) + 6.


def _padded(x, labels, seed=0):
  """x and labels padded to PADDED rows (NaN, zero and overflowing rows,
  a -1 label) interleaved with the real ones; -> (xp, lp, mask, order)."""
  pad = PADDED - len(x)
  rng = np.random.default_rng(seed)
  xp = np.concatenate([x, np.full((pad, DIM), np.nan, np.float32)])
  xp[-1], xp[-2] = 0.0, 1e30  # zeros, overflowing norms and NaN padding
  lp = np.concatenate([labels, rng.integers(0, NUM_CLASSES, pad - 1), [-1]])
  order = rng.permutation(len(xp))  # padding interleaved with real rows
  return xp[order], lp[order].astype(np.int32), order < len(x), order


@pytest.mark.parametrize("case", _first_cases(CASES),
                         ids=[c.name for c in _first_cases(CASES)])
def test_padding_mask(case):
  # Jitted at test_matches_pml's shape (its compilation, reused) and at
  # PADDED rows with a mask (reused by test_degenerate_batches_match_pml).
  x, labels = _batch(7)
  params = _init_params(case.name, **case.kwargs)
  xp, lp, mask, order = _padded(x, labels)
  value, gx, gp = _ours(case, x, labels, params)
  value_p, gx_p, gp_p = _ours(case, xp, lp, params, mask=jnp.asarray(mask))
  np.testing.assert_allclose(value_p, value, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gx_p[mask], gx[order[mask]], rtol=1e-4,
                             atol=1e-6)
  assert np.all(gx_p[~mask] == 0.0)
  for k in gp:
    np.testing.assert_allclose(gp_p[k], gp[k], rtol=1e-4, atol=1e-6)


# Losses whose PML counterpart takes no labels: their init is checked in
# their own module.
_OWN_INIT_TESTS = {"manifold": "test_ranking_losses.py"}


def _init_cases():
  return [n for n, l in REGISTRY.items()
          if l.init is not None and n not in _OWN_INIT_TESTS]


@pytest.mark.parametrize("name", _init_cases())
def test_init_matches_pml_layout_and_scale(name):
  """Keys are the loss's keywords; shapes, dtype and spread as PML's."""
  torch, losses = _pml()
  case = next(c for c in CASES if c.name == name and c.params)
  params = _init_params(name, **case.kwargs)
  torch.manual_seed(0)
  pml_loss = case.pml(losses, **(case.kwargs if case.pml_kwargs is None
                                 else case.pml_kwargs))
  assert set(params) == set(case.params)
  for k, attr in case.params.items():
    theirs = getattr(pml_loss, attr).detach().numpy()
    assert params[k].shape == theirs.shape and params[k].dtype == jnp.float32
    if theirs.size > 1:
      np.testing.assert_allclose(np.std(params[k]), np.std(theirs), rtol=0.5)
    np.testing.assert_allclose(np.mean(params[k]), np.mean(theirs),
                               atol=0.5 * np.std(theirs) + 1e-6)
  value = jax.jit(functools.partial(REGISTRY[name].fn, **params))(
      *map(jnp.asarray, _batch(1)))
  assert np.isfinite(value)


def _registry_inputs(name, loss, n=16):
  x, labels = _batch(8, n=n)
  if loss.input == "triplets":
    rng = np.random.default_rng(9)
    return tuple(rng.normal(size=(n, DIM)).astype(np.float32)
                 for _ in range(3)), {}
  if loss.input in ("image_text", "views"):
    rng = np.random.default_rng(9)
    return tuple(rng.normal(size=(n, DIM)).astype(np.float32)
                 for _ in range(2)), {}
  if loss.input == "unlabelled":  # manifold: meta classes in [0, K)
    params = _init_params(name)
    k = next(iter(params.values())).shape[0]
    return (x, (np.arange(n) % k).astype(np.int32)), params
  if loss.input == "logits":
    x = np.random.default_rng(9).normal(size=(n, NUM_CLASSES)).astype(
        np.float32)
  return (x, labels), _init_params(name)


@functools.cache
def _registry_value_and_grad(name):
  """Jitted value and gradients (w.r.t. the float inputs and the loss's
  parameters) of a registered loss at its defaults; one per loss, so the
  tests below that call it on inputs of one shape share a compilation."""
  fn = REGISTRY[name].fn
  return jax.jit(jax.value_and_grad(
      lambda fl, i, p: fn(*fl, *i, **p), argnums=(0, 2)))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_sharded_equals_unsharded(name):
  assert len(jax.devices()) == 8
  loss = REGISTRY[name]
  args, params = _registry_inputs(name, loss)
  floats = tuple(a for a in args if a.dtype == np.float32)
  ints = tuple(a for a in args if a.dtype != np.float32)  # labels, last
  f = _registry_value_and_grad(name)
  want_value, want_grads = f(floats, ints, params)
  sharding = NamedSharding(Mesh(jax.devices(), ("data",)), P("data"))
  put = lambda t: tuple(jax.device_put(jnp.asarray(a), sharding) for a in t)
  value, grads = f(put(floats), put(ints), params)
  assert put(floats)[0].sharding == sharding
  np.testing.assert_allclose(value, want_value, rtol=1e-5, atol=1e-6)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("labels", [np.zeros(10, np.int32),
                                    np.arange(10, dtype=np.int32) % NUM_CLASSES],
                         ids=["one_class", "pairs_per_class"])
def test_degenerate_batches_match_pml(labels):
  # Our side as a masked batch of PADDED rows: test_padding_mask's
  # compilations (it checks that the mask is exact).
  for case in _first_cases(CASES):
    torch, loss, params = _pml_case(case, 0)
    x, _ = _batch(6, n=10)
    theirs = _theirs(torch, case, loss, x, labels)
    xp, lp, mask, order = _padded(x, labels)
    value, gx, gp = _ours(case, xp, lp, {k: jnp.asarray(v) for k, v in
                                         params.items()}, mask=jnp.asarray(mask))
    ours = (value, gx[mask][np.argsort(order[mask])], gp)
    assert np.isfinite(ours[0]) and np.all(np.isfinite(ours[1])), case.name
    _assert_same(ours, theirs)


_XBM_CASES = _first_cases([c for c in REF_CASES if not c.params])


@pytest.mark.parametrize("case", _XBM_CASES, ids=[c.name for c in _XBM_CASES])
def test_xbm_matches_pml(case):
  """xbm_loss(fn) == PML CrossBatchMemory(loss) over batches that wrap."""
  # pylint: disable-next=g-import-not-at-top
  from metricjax.losses import xbm
  torch, loss, _ = _pml_case(case, 0)
  memory_size = 20
  memory = _pml()[1].CrossBatchMemory(loss, DIM, memory_size=memory_size)
  state = xbm.xbm_init(memory_size, DIM)
  fn = functools.partial(REGISTRY[case.name].fn, **case.kwargs)
  step = jax.jit(jax.value_and_grad(
      lambda e, l, s: xbm.xbm_loss(fn, s, e, l), has_aux=True))
  for b in range(3):  # 3 x 8 rows wrap the 20 slots
    x, labels = _batch(40 + b, n=8)
    (value, state), grad = step(jnp.asarray(x), jnp.asarray(labels), state)
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    want = memory(t, torch.tensor(labels, dtype=torch.long))
    want.backward()
    close_to_largest(float(value), want.item(), rtol=1e-4)
    close_to_largest(np.asarray(grad), t.grad.numpy())


@pytest.mark.parametrize("name", ["lifted_structure", "margin", "fastap",
                                  "tuplet_margin", "circle"])
def test_memory_is_quadratic(name):
  """No (N, M, M) triplet or (bins, N, N) tensor: compiled temp < 32 N^2 f32."""
  n = 512
  x, labels = _batch(12, n=n, dim=32, classes=n // 8)
  f = jax.jit(jax.value_and_grad(REGISTRY[name].fn))
  compiled = f.lower(jnp.asarray(x), jnp.asarray(labels)).compile()
  value, grad = compiled(jnp.asarray(x), jnp.asarray(labels))
  assert np.isfinite(value) and np.all(np.isfinite(grad))
  memory = compiled.memory_analysis()
  if memory is not None:  # not every backend reports it
    assert memory.temp_size_in_bytes < 32 * n * n * 4


def test_duplicates_and_samples_on_class_vectors_are_finite():
  """cos = 1 exactly (duplicate positives, a sample on its proxy / class
  column) and huge norms: finite values and gradients everywhere."""
  # n=16: the shape of test_sharded_equals_unsharded's unsharded call,
  # whose compilations these reuse.
  x, labels = _batch(15, n=16)
  x[8:], labels[8:] = x[:8], labels[:8]
  for name, loss in REGISTRY.items():
    if loss.input != "embedding":
      continue
    params = _init_params(name)
    if "proxies" in params:
      params["proxies"] = params["proxies"].at[labels[0]].set(x[0])
    if "W" in params and params["W"].shape[1] == NUM_CLASSES:
      params["W"] = params["W"].at[:, labels[0]].set(x[0])
    f = _registry_value_and_grad(name)
    for scale in (1.0, 1e3):
      value, grads = f((jnp.asarray(scale * x),), (jnp.asarray(labels),),
                       params)
      assert np.isfinite(value), name
      assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads)), name

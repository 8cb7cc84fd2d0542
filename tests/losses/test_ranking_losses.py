"""InstanceLoss, ManifoldLoss, PNPLoss, RankedListLoss, VICRegLoss and the
SelfSupervisedLoss wrapper against pytorch-metric-learning 2.9: values and
gradients (w.r.t. the embeddings, the reference view and ManifoldLoss's
proxies; PML in float64, ours float32), defaults and non-default settings;
ManifoldLoss's random meta classes by their distribution; padding masks;
build's refusals; PNP's memory. Batches of N rows (and 2 x 12 views) share
the eager ops' compilations."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metricjax import losses
from metricjax.errors import UserError
from metricjax.losses import manifold as manifold_lib
from loss_harness import random_batch
from loss_harness import close_to_largest

# Op by op: tests/losses/conftest.py says why.
pytestmark = pytest.mark.eager

N, DIM, CLASSES = 24, 8, 5
MINE = ("instance", "manifold", "pnp", "ranked_list", "vicreg",
        "self_supervised")


def _pml():
  torch = pytest.importorskip("torch")
  pytest.importorskip("pytorch_metric_learning")
  # pylint: disable-next=g-import-not-at-top
  from pytorch_metric_learning import losses as pml_losses
  return torch, pml_losses


def _assert_same(ours, theirs):
  close_to_largest(ours[0], theirs[0], rtol=1e-4)
  assert len(ours[1]) == len(theirs[1])
  for got, want in zip(ours[1], theirs[1]):
    close_to_largest(got, want)


def _ours(fn, *arrays, jit=False, **kwargs):
  """Value and gradients w.r.t. every float array argument; jit: as one
  program (cheaper than op by op at shapes no other test uses)."""
  f = jax.value_and_grad(lambda a: fn(*a, **kwargs))
  value, grads = (jax.jit(f) if jit else f)(tuple(jnp.asarray(a)
                                                  for a in arrays))
  return float(value), [np.asarray(g) for g in grads]


def _tensor(torch, a):
  return torch.tensor(a, dtype=torch.float64, requires_grad=True)


# --- Labelled batches: instance, pnp, ranked_list ---------------------------

LABELLED = [
    ("instance", {}, "InstanceLoss", {}),
    ("instance", {"gamma": 8.0}, "InstanceLoss", {"gamma": 8.0}),
    ("pnp", {}, "PNPLoss", {}),
    ("pnp", {"variant": "Ds", "anneal": 0.1}, "PNPLoss",
     {"variant": "Ds", "anneal": 0.1}),
    ("pnp", {"variant": "Dq", "alpha": 2.0}, "PNPLoss",
     {"variant": "Dq", "alpha": 2.0}),
    ("pnp", {"variant": "Iu"}, "PNPLoss", {"variant": "Iu"}),
    ("pnp", {"variant": "Ib", "b": 3.0}, "PNPLoss",
     {"variant": "Ib", "b": 3.0}),
    # Our defaults are PML's required margin and Tn at the authors' values.
    ("ranked_list", {}, "RankedListLoss", {"margin": 0.4, "Tn": 10.0}),
    ("ranked_list", {"margin": 0.8, "Tn": 1.0, "Tp": 2.0, "imbalance": 0.3,
                     "alpha": 1.1}, "RankedListLoss",
     {"margin": 0.8, "Tn": 1.0, "Tp": 2.0, "imbalance": 0.3, "alpha": 1.1}),
]


def _pml_labelled(torch, pml_losses, pml_name, pml_kwargs, x, labels):
  t = _tensor(torch, x)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # RankedList: Tn=10 "high"
    loss = getattr(pml_losses, pml_name)(**pml_kwargs)
  value = loss(t, torch.tensor(labels, dtype=torch.long))
  value.backward()
  return value.item(), [t.grad.numpy()]


@pytest.mark.parametrize("seed", [0])
@pytest.mark.parametrize("name,kwargs,pml_name,pml_kwargs", LABELLED,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(LABELLED)])
def test_labelled_losses_match_pml(name, kwargs, pml_name, pml_kwargs, seed):
  torch, pml_losses = _pml()
  x, labels = random_batch(seed, n=N, dim=DIM, classes=CLASSES)
  theirs = _pml_labelled(torch, pml_losses, pml_name, pml_kwargs, x, labels)
  ours = _ours(lambda e: losses.REGISTRY[name].fn(e, labels, **kwargs), x)
  assert theirs[0] != 0.0
  _assert_same(ours, theirs)


def test_instance_without_labels_is_one_instance_per_row():
  # PML requires labels; without them every row is its own instance.
  x, _ = random_batch(2, n=N, dim=DIM)
  np.testing.assert_allclose(
      losses.instance_loss(x, None, gamma=4.0),
      losses.instance_loss(x, jnp.arange(N) * 3 + 1, gamma=4.0), rtol=1e-6)


@pytest.mark.parametrize("labels", [np.zeros(N, np.int32),
                                    np.arange(N, dtype=np.int32)],
                         ids=["one_class", "all_distinct"])
def test_degenerate_batches_match_pml(labels):
  torch, pml_losses = _pml()
  x, _ = random_batch(3, n=N, dim=DIM)
  for name, kwargs, pml_name, pml_kwargs in LABELLED[::2]:
    theirs = _pml_labelled(torch, pml_losses, pml_name, pml_kwargs, x, labels)
    ours = _ours(lambda e: losses.REGISTRY[name].fn(e, labels, **kwargs), x)
    _assert_same(ours, theirs)


# --- vicreg ------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"invariance_lambda": 2.0,
                                         "variance_mu": 5.0,
                                         "covariance_v": 3.0, "eps": 1e-2}])
def test_vicreg_matches_pml(kwargs):
  torch, pml_losses = _pml()
  x, _ = random_batch(4, n=12, dim=DIM)
  r = 0.2 * random_batch(5, n=12, dim=DIM)[0] + x  # views of one example
  t, tr = _tensor(torch, x), _tensor(torch, r)
  value = pml_losses.VICRegLoss(**kwargs)(t, ref_emb=tr)
  value.backward()
  ours = _ours(losses.build("vicreg", **kwargs), x, r)
  _assert_same(ours, (value.item(), [t.grad.numpy(), tr.grad.numpy()]))


# --- manifold ----------------------------------------------------------------


def _pml_manifold(torch, pml_losses, k, seed, **kwargs):
  torch.manual_seed(seed)
  loss = pml_losses.ManifoldLoss(l=DIM, K=k, **kwargs).double()
  proxies = loss.proxies.detach().numpy().astype(np.float32)
  loss.proxies.data = torch.tensor(proxies, dtype=torch.float64)
  return loss, proxies


@pytest.mark.parametrize("kwargs", [{}, {"lambdaC": 0.5, "alpha": 0.5,
                                         "margin": 0.01},
                                    {"lambdaC": 0.0}])
def test_manifold_matches_pml_on_the_same_meta_classes(kwargs):
  torch, pml_losses = _pml()
  k = 6
  loss, proxies = _pml_manifold(torch, pml_losses, k, 0, **kwargs)
  x, _ = random_batch(6, n=N, dim=DIM)
  meta = np.random.default_rng(7).integers(0, k, N)
  t = _tensor(torch, x)
  value = loss(t, None, torch.tensor(meta))  # PML: indices_tuple = meta
  value.backward()
  theirs = (value.item(), [t.grad.numpy(), loss.proxies.grad.numpy()])
  fn = losses.build("manifold", K=k, **kwargs)
  ours = _ours(lambda e, p: fn(e, jnp.asarray(meta), proxies=p), x, proxies)
  _assert_same(ours, theirs)


def test_manifold_meta_classes_are_drawn_as_pml_draws_them():
  torch, pml_losses = _pml()
  n, k, draws = 12, 4, 2000
  ours = np.asarray(jax.vmap(lambda key: manifold_lib.draw_meta_classes(
      key, n, k))(jax.random.split(jax.random.key(0), draws)))
  assert ours.shape == (draws, n) and ours.dtype == np.int32
  torch.manual_seed(0)
  theirs = np.stack([  # PML's draw
      torch.cat((torch.arange(k), torch.randint(0, k, (n - k,))))[
          torch.randperm(n)].numpy() for _ in range(draws)])
  for draw in (ours, theirs):
    counts = np.stack([np.sum(draw == c, axis=1) for c in range(k)], axis=1)
    assert np.all(counts >= 1)  # every proxy has a row
    # A class's count is 1 + Binomial(N - K, 1 / K) ...
    np.testing.assert_allclose(np.mean(counts), n / k, atol=0.05)
    np.testing.assert_allclose(np.var(counts[:, 0]),
                               (n - k) * (1 / k) * (1 - 1 / k), rtol=0.15)
    # ... and each position uniform over the classes (5 sigma).
    freq = np.stack([np.mean(draw == c, axis=0) for c in range(k)])
    np.testing.assert_allclose(freq, 1 / k, atol=5 * np.sqrt(
        (1 / k) * (1 - 1 / k) / draws))


def test_manifold_key_draws_the_meta_classes_it_uses():
  x, _ = random_batch(8, n=N, dim=DIM)
  params = losses.init_manifold_loss(jax.random.key(1), num_classes=None,
                                     embedding_dim=DIM, K=6)
  assert params["proxies"].shape == (6, DIM)
  key = jax.random.key(3)
  drawn = manifold_lib.draw_meta_classes(key, N, 6)
  np.testing.assert_allclose(
      losses.manifold_loss(x, key=key, **params),
      losses.manifold_loss(x, drawn, **params), rtol=1e-6)
  other = losses.manifold_loss(x, key=jax.random.key(4), **params)
  assert float(other) != float(losses.manifold_loss(x, key=key, **params))
  # lambdaC=inf is the context loss alone (PML: inf).
  ctx = (losses.manifold_loss(x, drawn, lambdaC=1.0, **params)
         - losses.manifold_loss(x, drawn, lambdaC=0.0, **params))
  np.testing.assert_allclose(
      losses.manifold_loss(x, drawn, lambdaC=float("inf"), **params), ctx,
      rtol=1e-4)
  with pytest.raises(UserError, match="key="):
    losses.manifold_loss(x, **params)
  with pytest.raises(UserError, match="at least K=6"):
    losses.manifold_loss(x[:5], key=key, **params)
  with pytest.raises(UserError, match="K=7"):
    losses.manifold_loss(x, drawn, K=7, **params)


def test_manifold_init_matches_pml_layout_and_scale():
  torch, pml_losses = _pml()
  params = losses.REGISTRY["manifold"].init(jax.random.key(0), num_classes=5,
                                            embedding_dim=DIM)
  torch.manual_seed(0)
  theirs = pml_losses.ManifoldLoss(l=DIM).proxies.detach().numpy()
  assert set(params) == {"proxies"}
  assert params["proxies"].shape == theirs.shape == (50, DIM)
  assert params["proxies"].dtype == jnp.float32
  np.testing.assert_allclose(np.std(params["proxies"]), 1.0, atol=0.1)
  np.testing.assert_allclose(np.mean(params["proxies"]), 0.0, atol=0.1)


# --- self_supervised ---------------------------------------------------------

SELF_SUPERVISED = [
    ("ntxent", {}), ("ntxent", {"temperature": 0.5}), ("contrastive", {}),
    ("contrastive", {"pos_margin": 0.1, "neg_margin": 0.8}),
    ("triplet_margin", {}), ("multi_similarity", {}), ("supcon", {}),
]
_PML_NAMES = {"ntxent": "NTXentLoss", "contrastive": "ContrastiveLoss",
              "triplet_margin": "TripletMarginLoss", "supcon": "SupConLoss",
              "multi_similarity": "MultiSimilarityLoss",
              "circle": "CircleLoss"}


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("name,kwargs", SELF_SUPERVISED,
                         ids=[f"{n}-{i}" for i, (n, _) in
                              enumerate(SELF_SUPERVISED)])
def test_self_supervised_matches_pml(name, kwargs, symmetric):
  torch, pml_losses = _pml()
  x, _ = random_batch(9, n=12, dim=DIM)
  r = random_batch(10, n=12, dim=DIM)[0] + x
  t, tr = _tensor(torch, x), _tensor(torch, r)
  wrapper = pml_losses.SelfSupervisedLoss(
      getattr(pml_losses, _PML_NAMES[name])(**kwargs), symmetric=symmetric)
  value = wrapper(t, tr)
  value.backward()
  fn = losses.self_supervised({"name": name, **kwargs}, symmetric=symmetric)
  ours = _ours(fn, x, r)
  assert value.item() != 0.0
  _assert_same(ours, (value.item(), [t.grad.numpy(), tr.grad.numpy()]))


def test_self_supervised_with_a_distance_and_through_build():
  torch, pml_losses = _pml()
  # pylint: disable-next=g-import-not-at-top
  from pytorch_metric_learning import distances
  x, _ = random_batch(11, n=12, dim=DIM)
  r = 0.5 * random_batch(12, n=12, dim=DIM)[0] + x
  t, tr = _tensor(torch, x), _tensor(torch, r)
  value = pml_losses.SelfSupervisedLoss(pml_losses.ContrastiveLoss(
      pos_margin=1.0, neg_margin=0.0, distance=distances.CosineSimilarity()))(
          t, tr)
  value.backward()
  fn = losses.build("self_supervised", loss={
      "name": "contrastive", "distance": "cosine", "pos_margin": 1.0,
      "neg_margin": 0.0})
  _assert_same(_ours(fn, x, r),
               (value.item(), [t.grad.numpy(), tr.grad.numpy()]))
  # The registered default wraps ntxent, symmetric (SimCLR's form).
  np.testing.assert_allclose(losses.build("self_supervised")(x, r),
                             losses.self_supervised("ntxent")(x, r), rtol=1e-6)


@pytest.mark.parametrize("loss,symmetric,words", [
    ("arcface", True, "supports only"),
    ("vicreg", True, "supports only"),
    ("pnp", True, "supports only"),
    ("ms", True, "supports only"),
    ({"name": "contrastive", "distance": "cosine"}, False, "a distance"),
    ("ntxent", True, None),
    ({"name": "ntxent", "tau": 1.0}, True, "tau"),
    ({"name": "multi_similarity", "epsilon": 0.1}, False, "epsilon"),
])
def test_self_supervised_refuses_what_pml_refuses(loss, symmetric, words):
  _pml()  # the pml names of what it wraps
  if words is None:
    losses.self_supervised(loss, symmetric=symmetric)
    return
  with pytest.raises(UserError, match=words):
    losses.self_supervised(loss, symmetric=symmetric)


@pytest.mark.parametrize("name", MINE)
@pytest.mark.parametrize("piece", ["miner", "distance", "reducer"])
def test_build_refuses_pieces(name, piece):
  value = {"miner": "multi_similarity", "distance": "cosine",
           "reducer": "sum"}[piece]
  with pytest.raises(UserError, match=f"takes no {piece}") as e:
    losses.build(name, **{piece: value})
  # It names the losses that do compose with one.
  assert "contrastive" in str(e.value) and "triplet_margin" in str(e.value)
  if piece == "miner" and name not in ("self_supervised", "manifold"):
    assert "refuses an indices_tuple" in str(e.value)


# --- padding -----------------------------------------------------------------

def _padded(a, seed=0):
  """a's rows and a quarter more of garbage (NaN, 0, huge), interleaved:
  N = 24 real rows -> 30, as the symmetric 2 x 12 views -> 2 x 15."""
  size = len(a) * 5 // 4
  pad = size - len(a)
  rng = np.random.default_rng(seed)
  order = rng.permutation(size)  # the same for every array of a batch
  if a.dtype == np.float32:
    ap = np.concatenate([a, np.full((pad,) + a.shape[1:], np.nan, a.dtype)])
    ap[-1], ap[-2] = 0.0, 1e30
  else:  # labels, meta classes
    ap = np.concatenate([a, rng.integers(-1, CLASSES, pad).astype(a.dtype)])
  return ap[order], order < len(a), order


def _assert_padding_exact(fn, padded, mask, rows):
  """fn on the padded arrays with mask == fn on their valid rows (in the
  padded order: instance's targets are positions); `rows`: which arrays are
  per-row (the others, parameters, are passed whole)."""
  valid = [a[mask] if i in rows else a for i, a in enumerate(padded)]
  value, grads = _ours(fn, *valid)
  value_p, grads_p = _ours(functools.partial(fn, mask=jnp.asarray(mask)),
                           *padded, jit=True)
  np.testing.assert_allclose(value_p, value, rtol=1e-5, atol=1e-6)
  for i, (got, want) in enumerate(zip(grads_p, grads)):
    if i in rows:
      np.testing.assert_allclose(got[mask], want, rtol=1e-4, atol=1e-6)
      assert np.all(got[~mask] == 0.0)
    else:
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.compiled  # the padded shapes: one program each
@pytest.mark.parametrize("name,kwargs", [("instance", {}),
                                         ("pnp", {"variant": "Dq"}),
                                         ("ranked_list", {})])
def test_padding_mask_labelled(name, kwargs):
  x, labels = random_batch(13, n=N, dim=DIM, classes=CLASSES)
  xp, mask, _ = _padded(x)
  lp, _, _ = _padded(labels)
  fn = losses.REGISTRY[name].fn
  valid = mask

  def padded_or_not(e, mask=None):
    return fn(e, jnp.asarray(lp if mask is not None else lp[valid]),
              mask=mask, **kwargs)
  _assert_padding_exact(padded_or_not, (xp,), mask, [0])


@pytest.mark.compiled  # the padded shapes: one program each
@pytest.mark.parametrize("name", ["vicreg", "self_supervised"])
def test_padding_mask_views(name):
  x, _ = random_batch(14, n=12, dim=DIM)
  r = random_batch(15, n=12, dim=DIM)[0] + x
  xp, mask, _ = _padded(x)
  rp, _, _ = _padded(r)
  fn = losses.REGISTRY[name].fn
  _assert_padding_exact(fn, (xp, rp), mask, [0, 1])
  if name == "self_supervised":
    fn = losses.self_supervised("contrastive", symmetric=False)
    _assert_padding_exact(fn, (xp, rp), mask, [0, 1])


@pytest.mark.compiled  # the padded shapes: one program each
def test_padding_mask_manifold():
  x, _ = random_batch(16, n=N, dim=DIM)
  meta = np.random.default_rng(17).integers(0, 6, N).astype(np.int32)
  xp, mask, _ = _padded(x)
  mp, _, _ = _padded(meta)
  proxies = np.random.default_rng(18).normal(size=(6, DIM)).astype(np.float32)

  valid = mask

  def padded_or_not(e, p, mask=None):
    return losses.manifold_loss(
        e, jnp.asarray(mp if mask is not None else mp[valid]), proxies=p,
        mask=mask)
  _assert_padding_exact(padded_or_not, (xp, proxies), mask, [0])


# --- compiled ----------------------------------------------------------------


@pytest.mark.compiled
def test_pnp_memory_is_quadratic():
  """PNP's (N, N, N) ranking is walked a few queries at a time: compiled
  value-and-gradient temp < 16 N^2 floats (PML forms the N^3 tensor). The
  other losses run jitted in test_registry.py (sharded == unsharded)."""
  n = 128
  x, labels = random_batch(22, n=n, dim=32, classes=n // 8)
  f = jax.jit(jax.value_and_grad(losses.pnp_loss))
  compiled = f.lower(jnp.asarray(x), jnp.asarray(labels)).compile()
  value, grad = compiled(jnp.asarray(x), jnp.asarray(labels))
  assert np.isfinite(value) and np.all(np.isfinite(grad))
  memory = compiled.memory_analysis()
  if memory is not None:  # not every backend reports it
    assert memory.temp_size_in_bytes < 16 * n * n * 4

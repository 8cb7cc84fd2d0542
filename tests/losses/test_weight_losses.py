"""The losses with learnable class vectors, NCA, P2SGrad and Smooth-AP
against pytorch-metric-learning 2.9: values and gradients (w.r.t. the
embeddings and every learnable array, PML's copied in; PML in float32, as
ours), at the defaults and a non-default setting; with miners (PML's
convert_to_weights), reducers and distances through `build`; PML's weight
regularizers (regular_face, sparse_centers, lp, center_invariant, zero_mean
on W.t(), the proxies or SoftTriple's centres) and embedding regularizers;
padding; the layouts and combinations PML refuses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metricjax import losses as mj_losses
from metricjax.errors import UserError
from loss_harness import import_pml
from loss_harness import random_batch
from loss_harness import close_to_largest
from loss_harness import EmbeddingModel

# Op by op: tests/losses/conftest.py says why.
pytestmark = pytest.mark.eager

N, DIM, CLASSES = 16, 8, 4

# Our name: (PML class, our learnable keyword = PML attribute, or None).
PML = {
    "large_margin_softmax": ("LargeMarginSoftmaxLoss", "W"),
    "sphereface": ("SphereFaceLoss", "W"),
    "cosface": ("CosFaceLoss", "W"),
    "arcface": ("ArcFaceLoss", "W"),
    "subcenter_arcface": ("SubCenterArcFaceLoss", "W"),
    "normalized_softmax": ("NormalizedSoftmaxLoss", "W"),
    "soft_triple": ("SoftTripleLoss", "fc"),
    "proxy_nca": ("ProxyNCALoss", "proxies"),
    "proxy_anchor": ("ProxyAnchorLoss", "proxies"),
    "p2sgrad": ("P2SGradLoss", "weight"),
    "nca": ("NCALoss", None),
    "smooth_ap": ("SmoothAPLoss", None),
    "fastap": ("FastAPLoss", None),
}
MINERS = {"multi_similarity": "MultiSimilarityMiner",
          "triplet_margin": "TripletMarginMiner",
          "batch_hard": "BatchHardMiner", "pair_margin": "PairMarginMiner"}
REGULARIZERS = {"lp": "LpRegularizer", "zero_mean": "ZeroMeanRegularizer",
                "center_invariant": "CenterInvariantRegularizer",
                "regular_face": "RegularFaceRegularizer",
                "sparse_centers": "SparseCentersRegularizer"}
REDUCERS = {"mean": "MeanReducer", "sum": "SumReducer",
            "divisor": "DivisorReducer",
            "avg_non_zero": "AvgNonZeroReducer",
            "threshold": "ThresholdReducer",
            "class_weighted": "ClassWeightedReducer",
            "per_anchor": "PerAnchorReducer", "multiple": "MultipleReducers"}


def _split(spec):
  if spec is None or isinstance(spec, str):
    return spec, {}
  kwargs = dict(spec)
  return kwargs.pop("name"), kwargs


def _pml_piece(module, table, spec, torch):
  """PML's miner / reducer / regularizer object for our spec."""
  # pylint: disable-next=g-import-not-at-top
  from pytorch_metric_learning import reducers
  name, kwargs = _split(spec)
  if name is None:
    return None
  if "weights" in kwargs:
    kwargs["weights"] = torch.tensor(kwargs["weights"])
  for k in ("reducer", "default_reducer"):
    if k in kwargs:
      kwargs[k] = _pml_piece(reducers, REDUCERS, kwargs[k], torch)
  if "reducers" in kwargs:
    kwargs["reducers"] = {k: _pml_piece(reducers, REDUCERS, v, torch)
                          for k, v in kwargs["reducers"].items()}
  if "distance" in kwargs:
    kwargs["distance"] = _pml_distance(kwargs["distance"])
  return getattr(module, table[name])(**kwargs)


def _theirs(name, x, labels, seed, *, distance=None, miner=None,
            reducer=None, regularizer=None, weight_regularizer=None, **hp):
  """PML's value and gradients, and its initial parameters (ours to use)."""
  torch, _, losses, miners = import_pml()
  # pylint: disable-next=g-import-not-at-top
  from pytorch_metric_learning import regularizers, reducers
  cls, attr = PML[name]
  kwargs = dict(hp)
  for key, spec in (("embedding_regularizer", regularizer),
                    ("weight_regularizer", weight_regularizer)):
    if spec is not None:
      kwargs[key] = _pml_piece(regularizers, REGULARIZERS, spec, torch)
  if reducer is not None:
    kwargs["reducer"] = _pml_piece(reducers, REDUCERS, reducer, torch)
  if distance is not None:
    kwargs["distance"] = _pml_distance(distance)
  torch.manual_seed(seed)
  if name == "p2sgrad":
    loss = losses.P2SGradLoss(DIM, CLASSES, **kwargs)
  elif attr is not None:
    loss = getattr(losses, cls)(num_classes=CLASSES, embedding_size=DIM,
                                **kwargs)
  else:
    loss = getattr(losses, cls)(**kwargs)
  params = {}
  if attr is not None:
    params[attr] = getattr(loss, attr).detach().numpy().astype(np.float32)
  t = torch.tensor(x, requires_grad=True)
  tl = torch.tensor(labels, dtype=torch.long)
  m = _pml_piece(miners, MINERS, miner, torch)
  value = loss(t, tl, None if m is None else m(t, tl))
  value.backward()
  grads = {"x": t.grad.numpy()}
  if attr is not None:
    g = getattr(loss, attr).grad
    grads[attr] = np.zeros(params[attr].shape) if g is None else g.numpy()
  return value.item(), grads, params


def _pml_distance(spec):
  # pylint: disable-next=g-import-not-at-top
  from pytorch_metric_learning import distances
  name, kwargs = _split(spec)
  return getattr(distances, {"lp": "LpDistance", "cosine": "CosineSimilarity",
                             "dot_product": "DotProductSimilarity"}[name])(
                                 **kwargs)


def _ours(fn, x, labels, params, **extra):
  def f(e, p):
    return fn(e, jnp.asarray(labels), **p, **extra)
  value, (gx, gp) = jax.value_and_grad(f, argnums=(0, 1))(
      jnp.asarray(x), {k: jnp.asarray(v) for k, v in params.items()})
  return float(value), {"x": np.asarray(gx),
                        **{k: np.asarray(v) for k, v in gp.items()}}


def _batch(name, seed):
  # One shape throughout: op by op, each new shape compiles every op anew.
  x, labels = random_batch(seed, n=N, dim=DIM, classes=CLASSES)
  if name == "smooth_ap":  # PML's layout: P classes x P rows, in order
    labels = np.repeat(np.arange(CLASSES), N // CLASSES).astype(np.int32)
  return x, labels


def assert_matches_pml(name, seed=0, *, built=True, **pieces):
  """build(name, **pieces) (or REGISTRY's fn) == PML's loss with them."""
  x, labels = _batch(name, seed)
  theirs = _theirs(name, x, labels, seed, **pieces)
  fn = (mj_losses.build(name, **pieces) if built else
        (lambda e, l, **kw: mj_losses.REGISTRY[name].fn(e, l, **kw,
                                                        **pieces)))
  ours = _ours(fn, x, labels, theirs[2])
  assert theirs[0] != 0.0
  close_to_largest(ours[0], theirs[0], 1e-4)
  assert ours[1].keys() == theirs[1].keys()
  for k in ours[1]:
    close_to_largest(ours[1][k], theirs[1][k], 2e-4)
  return ours[0]


PLAIN = [
    ("large_margin_softmax", {}),
    ("large_margin_softmax", {"margin": 3, "scale": 2.0}),
    ("sphereface", {}),
    ("sphereface", {"margin": 2, "scale": 3.0}),
    ("p2sgrad", {}),
    ("nca", {}),
    ("nca", {"softmax_scale": 8.0}),
    ("smooth_ap", {}),
    ("smooth_ap", {"temperature": 0.1}),
]


@pytest.mark.parametrize("name,hp", PLAIN,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(PLAIN)])
def test_registered_loss_matches_pml(name, hp):
  assert_matches_pml(name, seed=1, built=False, **hp)


WITH_MINER = [
    ("large_margin_softmax", {"miner": "multi_similarity"}),
    ("large_margin_softmax", {"miner": {"name": "triplet_margin",
                                        "margin": 0.2}, "margin": 2}),
    ("sphereface", {"miner": "pair_margin"}),
    ("cosface", {"miner": "batch_hard"}),
    ("arcface", {"miner": "multi_similarity", "reducer": "avg_non_zero"}),
    ("normalized_softmax", {"miner": {"name": "triplet_margin",
                                      "type_of_triplets": "semihard"}}),
    ("soft_triple", {"miner": "multi_similarity", "centers_per_class": 3}),
    ("proxy_nca", {"miner": "batch_hard"}),
    ("nca", {"miner": "multi_similarity"}),
    ("nca", {"miner": {"name": "triplet_margin", "margin": 0.2},
             "distance": "cosine", "softmax_scale": 4.0}),
    ("nca", {"distance": {"name": "lp", "power": 2,
                          "normalize_embeddings": False}, "reducer": "sum"}),
    ("smooth_ap", {"miner": "multi_similarity"}),
    ("smooth_ap", {"miner": {"name": "triplet_margin", "margin": 0.1},
                   "reducer": {"name": "threshold", "low": 0.2}}),
    # PML adds weight - 1 to each row's exponents; divisor is its default.
    ("proxy_anchor", {"miner": "multi_similarity"}),
    ("proxy_anchor", {"miner": {"name": "triplet_margin", "margin": 0.2},
                      "reducer": "divisor"}),
    ("normalized_softmax", {"distance": {"name": "lp", "power": 2}}),
    ("normalized_softmax", {"distance": "cosine", "miner": "batch_hard"}),
    ("proxy_nca", {"distance": "cosine", "softmax_scale": 8.0}),
    ("fastap", {"miner": "multi_similarity"}),
    ("fastap", {"miner": "batch_hard", "reducer": "sum", "num_bins": 4}),
]


@pytest.mark.parametrize("name,pieces", WITH_MINER,
                         ids=[f"{n}-{i}" for i, (n, _) in
                              enumerate(WITH_MINER)])
def test_miner_weights_distances_reducers_match_pml(name, pieces):
  assert_matches_pml(name, seed=2, **pieces)


@pytest.mark.parametrize("reducer", [
    "sum", {"name": "threshold", "low": 2.0},
    {"name": "class_weighted", "weights": [1.0, 0.5, 2.0, 0.25]},
    {"name": "per_anchor", "reducer": "avg_non_zero"},
    {"name": "multiple", "reducers": {"loss": "sum"}}])
def test_large_margin_softmax_reducers(reducer):
  assert_matches_pml("large_margin_softmax", seed=3, reducer=reducer,
                     miner="multi_similarity")


WEIGHT_REGULARIZED = [
    ("cosface", {"weight_regularizer": "regular_face"}),
    ("cosface", {"weight_regularizer": {"name": "lp", "power": 2},
                 "weight_reg_weight": 0.5, "miner": "multi_similarity"}),
    ("cosface", {"weight_regularizer": "center_invariant",
                 "regularizer": "zero_mean", "embedding_reg_weight": 0.1}),
    ("large_margin_softmax", {"weight_regularizer": "regular_face",
                              "weight_reg_weight": 2.0}),
    ("large_margin_softmax", {"weight_regularizer": "zero_mean",
                              "miner": "batch_hard",
                              "regularizer": {"name": "lp", "p": 1}}),
    ("sphereface", {"weight_regularizer": "regular_face"}),
    ("arcface", {"weight_regularizer": {"name": "regular_face",
                                        "reducer": "sum"}}),
    ("soft_triple", {"centers_per_class": 3, "weight_regularizer": {
        "name": "sparse_centers", "num_classes": CLASSES,
        "centers_per_class": 3}, "weight_reg_weight": 0.2}),
    ("normalized_softmax", {"weight_regularizer": "regular_face"}),
    ("proxy_nca", {"weight_regularizer": {"name": "lp", "power": 2}}),
    ("proxy_anchor", {"weight_regularizer": "regular_face"}),
    ("nca", {"regularizer": "center_invariant", "miner": "batch_hard"}),
    ("p2sgrad", {"regularizer": "lp", "embedding_reg_weight": 0.2}),
]


@pytest.mark.parametrize("name,pieces", WEIGHT_REGULARIZED,
                         ids=[f"{n}-{i}" for i, (n, _) in
                              enumerate(WEIGHT_REGULARIZED)])
def test_regularizers_match_pml(name, pieces):
  assert_matches_pml(name, seed=4, **pieces)


def test_config_regularizer_dict_is_both_regularizers():
  x, labels = _batch("cosface", 5)
  w = {"W": mj_losses.REGISTRY["cosface"].init(
      jax.random.key(0), num_classes=CLASSES, embedding_dim=DIM)["W"]}
  both = mj_losses.build("cosface", regularizer={
      "embeddings": "zero_mean", "weights": "regular_face"},
                         embedding_reg_weight=0.3)
  apart = mj_losses.build("cosface", regularizer="zero_mean",
                          weight_regularizer="regular_face",
                          embedding_reg_weight=0.3)
  plain = mj_losses.build("cosface")
  got, want = both(x, labels, **w), apart(x, labels, **w)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert abs(float(got) - float(plain(x, labels, **w))) > 1e-3


def test_smooth_ap_positives_are_labels_in_any_order():
  """The same batch, rows shuffled: PML's blocks would no longer be its
  classes; ours reads the labels."""
  x, labels = _batch("smooth_ap", 6)
  order = np.random.default_rng(0).permutation(len(labels))
  fn = mj_losses.REGISTRY["smooth_ap"].fn
  np.testing.assert_allclose(fn(x[order], labels[order]), fn(x, labels),
                             rtol=1e-5)


def test_smooth_ap_refuses_unequal_classes_as_pml():
  x, _ = _batch("smooth_ap", 6)
  labels = np.array([0] * 5 + [1] * 3 + [2] * 4 + [3] * 4, np.int32)
  assert len(labels) == N
  with pytest.raises(ValueError, match="same number of rows"):
    mj_losses.REGISTRY["smooth_ap"].fn(x, labels)
  torch, _, losses, _ = import_pml()
  with pytest.raises(ValueError):
    losses.SmoothAPLoss()(torch.tensor(x), torch.tensor(labels,
                                                        dtype=torch.long))


def _padded(x, labels, pad=5):
  rng = np.random.default_rng(1)
  xp = np.concatenate([x, np.full((pad, DIM), np.nan, np.float32)])
  xp[-1] = 0.0
  lp = np.concatenate([labels, rng.integers(0, CLASSES, pad)]).astype(
      np.int32)
  order = rng.permutation(len(xp))
  return xp[order], lp[order], order < len(x), order


PADDED = [
    ("large_margin_softmax", {}), ("sphereface", {}), ("p2sgrad", {}),
    ("nca", {}), ("smooth_ap", {}),
    ("large_margin_softmax", {"miner": {"name": "triplet_margin",
                                        "margin": 0.2},
                              "weight_regularizer": "regular_face",
                              "regularizer": "center_invariant"}),
    ("nca", {"miner": "multi_similarity", "reducer": "avg_non_zero"}),
    ("smooth_ap", {"miner": "batch_hard"}),
]


@pytest.mark.parametrize("name,pieces", PADDED,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(PADDED)])
def test_padding_mask(name, pieces):
  x, labels = _batch(name, 7)
  loss = mj_losses.REGISTRY[name]
  params = ({} if loss.init is None else loss.init(
      jax.random.key(0), num_classes=CLASSES, embedding_dim=DIM))
  fn = mj_losses.build(name, **pieces)
  value, grads = _ours(fn, x, labels, params)
  xp, lp, mask, order = _padded(x, labels)
  value_p, grads_p = _ours(fn, xp, lp, params, mask=jnp.asarray(mask))
  np.testing.assert_allclose(value_p, value, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grads_p["x"][mask], grads["x"][order[mask]],
                             rtol=1e-4, atol=1e-6)
  assert np.all(grads_p["x"][~mask] == 0.0)
  for k in params:
    np.testing.assert_allclose(grads_p[k], grads[k], rtol=1e-4, atol=1e-6)


@pytest.mark.compiled
def test_jit_with_miner_and_regularizers():
  x, labels = _batch("large_margin_softmax", 8)
  w = mj_losses.REGISTRY["large_margin_softmax"].init(
      jax.random.key(1), num_classes=CLASSES, embedding_dim=DIM)
  fn = mj_losses.build("large_margin_softmax", miner="multi_similarity",
                       weight_regularizer="regular_face",
                       regularizer="zero_mean", reducer="avg_non_zero")
  f = jax.jit(jax.value_and_grad(lambda e, p: fn(e, labels, **p),
                                 argnums=(0, 1)))
  value, grads = f(jnp.asarray(x), w)
  want = fn(jnp.asarray(x), labels, **w)
  np.testing.assert_allclose(value, want, rtol=1e-5)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("call,words", [
    (lambda: mj_losses.build("p2sgrad", miner="batch_hard"), "no miner"),
    (lambda: mj_losses.build("p2sgrad", weight_regularizer="lp"),
     "no weight regularizer"),
    (lambda: mj_losses.build("nca", weight_regularizer="lp"),
     "no weight regularizer"),
    (lambda: mj_losses.build("contrastive", weight_regularizer="lp"),
     "no learnable class vectors"),
    (lambda: mj_losses.build("proxy_anchor", reducer="mean"),
     "proxy_anchor takes no reducer"),
    (lambda: mj_losses.build("cosface", distance="lp"), "default distance"),
    (lambda: mj_losses.build("smooth_ap", distance="dot_product"),
     "default distance"),
    (lambda: mj_losses.build("cosface", reducer="divisor"), "divisor"),
    (lambda: mj_losses.build("cosface", weight_reg_weight=0.5),
     "weight_reg_weight"),
    (lambda: mj_losses.build("cosface", weight_regularizer={
        "name": "sparse_centers", "num_classes": 4, "centers_per_class": 1}),
     "centers_per_class"),
    (lambda: mj_losses.build("cosface", regularizer={"weights": "lp",
                                                     "embedding": "lp"}),
     "embeddings"),
    (lambda: mj_losses.build("cosface", weight_regularizer={
        "name": "lp", "reducer": "divisor"}), "divisor"),
])
def test_refused_combinations_are_user_errors(call, words):
  with pytest.raises(UserError, match=words) as e:
    call()
  assert "\n" not in str(e.value)


def test_config_loss_regularizer_weights_reach_the_training_loss():
  pytest.importorskip("ml_collections")
  # pylint: disable-next=g-import-not-at-top
  from metricjax.config_utils import base_config
  from metricjax.tasks import retrieval  # pylint: disable=g-import-not-at-top
  config = base_config()
  config.dataset = "mnist"
  config.loss.update({"name": "cosface",
                      "regularizer": {"weights": "regular_face"},
                      "kwargs": {"weight_reg_weight": 0.5,
                                 "num_classes": CLASSES}})
  loss_fn = retrieval.make_loss(config, EmbeddingModel(),
                                mj_losses.get_loss("cosface"))
  x, labels = _batch("cosface", 9)
  w = mj_losses.REGISTRY["cosface"].init(
      jax.random.key(2), num_classes=CLASSES, embedding_dim=DIM)
  batch = {"images": jnp.asarray(x), "labels": jnp.asarray(labels)}
  value, _ = loss_fn({}, w, {}, batch, {}, jax.random.key(0))
  want = mj_losses.build("cosface", weight_regularizer="regular_face",
                         weight_reg_weight=0.5)(x, labels, **w)
  np.testing.assert_allclose(value, want, rtol=1e-6)
  assert abs(float(value) - float(mj_losses.REGISTRY["cosface"].fn(
      x, labels, **w))) > 1e-3

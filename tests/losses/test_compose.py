"""losses.build against pytorch-metric-learning 2.9: every composable loss x
every miner x its default and a non-default distance and reducer, values and
gradients (PML in float32, as ours); every reducer; padding; jit; today's
names; the retrieval task's config.loss pieces; and the combinations PML
refuses."""

import functools

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

N, DIM, CLASSES = 32, 8, 4

PML_LOSSES = {
    "contrastive": "ContrastiveLoss", "ntxent": "NTXentLoss",
    "multi_similarity": "MultiSimilarityLoss", "circle": "CircleLoss",
    "triplet_margin": "TripletMarginLoss",
    "lifted_structure": "LiftedStructureLoss",
    "generalized_lifted_structure": "GeneralizedLiftedStructureLoss",
    "tuplet_margin": "TupletMarginLoss",
}
PML_DISTANCES = {"lp": "LpDistance", "cosine": "CosineSimilarity",
                 "dot_product": "DotProductSimilarity", "snr": "SNRDistance"}
PML_MINERS = {"multi_similarity": "MultiSimilarityMiner",
              "angular": "AngularMiner", "hdc": "HDCMiner",
              "batch_hard": "BatchHardMiner",
              "batch_easy_hard": "BatchEasyHardMiner",
              "triplet_margin": "TripletMarginMiner",
              "pair_margin": "PairMarginMiner"}
PML_REGULARIZERS = {"lp": "LpRegularizer", "zero_mean": "ZeroMeanRegularizer",
                    "center_invariant": "CenterInvariantRegularizer"}
PML_REDUCERS = {"mean": "MeanReducer", "sum": "SumReducer",
                "avg_non_zero": "AvgNonZeroReducer",
                "threshold": "ThresholdReducer",
                "class_weighted": "ClassWeightedReducer",
                "per_anchor": "PerAnchorReducer",
                "multiple": "MultipleReducers"}


def _split(spec):
  if spec is None or isinstance(spec, str):
    return spec, {}
  kwargs = dict(spec)
  return kwargs.pop("name"), kwargs


def _pml_distance(distances, spec):
  name, kwargs = _split(spec)
  return None if name is None else getattr(distances, PML_DISTANCES[name])(
      **kwargs)


def _pml_reducer(reducers, spec):
  name, kwargs = _split(spec)
  if name is None:
    return None
  for k in ("reducer", "default_reducer"):
    if k in kwargs:
      kwargs[k] = _pml_reducer(reducers, kwargs[k])
  if "reducers" in kwargs:
    kwargs["reducers"] = {k: _pml_reducer(reducers, v)
                          for k, v in kwargs["reducers"].items()}
  if "weights" in kwargs:
    import torch  # pylint: disable=g-import-not-at-top
    kwargs["weights"] = torch.tensor(kwargs["weights"])
  return getattr(reducers, PML_REDUCERS[name])(**kwargs)


def _pml_miner(distances, miners, spec):
  name, kwargs = _split(spec)
  if name is None:
    return None
  if "distance" in kwargs:
    kwargs["distance"] = _pml_distance(distances, kwargs["distance"])
  return getattr(miners, PML_MINERS[name])(**kwargs)


def _theirs(name, x, labels, *, distance=None, miner=None, reducer=None,
            regularizer=None, **hyperparameters):
  torch, distances, losses, miners = import_pml()
  # pylint: disable-next=g-import-not-at-top
  from pytorch_metric_learning import reducers, regularizers
  kwargs = dict(hyperparameters)
  if regularizer is not None:
    reg_name, reg_kwargs = _split(regularizer)
    if "reducer" in reg_kwargs:
      reg_kwargs["reducer"] = _pml_reducer(reducers, reg_kwargs["reducer"])
    kwargs["embedding_regularizer"] = getattr(
        regularizers, PML_REGULARIZERS[reg_name])(**reg_kwargs)
  if distance is not None:
    kwargs["distance"] = _pml_distance(distances, distance)
  if reducer is not None:
    kwargs["reducer"] = _pml_reducer(reducers, reducer)
  loss = getattr(losses, PML_LOSSES[name])(**kwargs)
  tl = torch.tensor(labels, dtype=torch.long)
  m = _pml_miner(distances, miners, miner)
  # float32 as ours: which losses are > 0 (AvgNonZeroReducer) is a float32
  # question (float64 sees log1p(e^-45) > 0, float32 and we see 0).
  t = torch.tensor(x, requires_grad=True)
  indices = None if m is None else m(t, tl)
  value = loss(t, tl, indices)
  value.backward()
  grad = t.grad.numpy() if t.grad is not None else np.zeros_like(x)
  return value.item(), grad


@functools.partial(jax.jit, static_argnums=0)
def _value_and_grad(fn, x, labels):
  return jax.value_and_grad(lambda e: fn(e, labels))(x)


def _ours(name, x, labels, **pieces):
  fn = mj_losses.build(name, **pieces)
  value, grad = _value_and_grad(fn, jnp.asarray(x), jnp.asarray(labels))
  return float(value), np.asarray(grad)


def assert_matches_pml(name, seed=0, *, grad=True, **pieces):
  x, labels = random_batch(seed, n=N, dim=DIM, classes=CLASSES)
  ours = _ours(name, x, labels, **pieces)
  theirs = _theirs(name, x, labels, **pieces)
  close_to_largest(ours[0], theirs[0], 1e-4)
  if grad:
    close_to_largest(ours[1], theirs[1], 2e-4)
  return ours[0]


def _lists_pairs_twice(miner):
  """A triplet miner whose (a, p) pairs repeat in PML's lists: PML's
  PerAnchorReducer then scatters a pair's loss once (its value) but sends
  the gradient back to every listing (index_put's backward), so its gradient
  is the pair's times its multiplicity. We keep the gradient of the value."""
  return _split(miner)[0] in ("triplet_margin", "angular")


MINERS = [
    None,
    {"name": "multi_similarity", "epsilon": 0.1},
    "batch_hard",
    {"name": "triplet_margin", "margin": 0.2},
    {"name": "triplet_margin", "margin": 0.2, "type_of_triplets": "semihard"},
    "pair_margin",
    "batch_easy_hard",
    {"name": "angular", "angle": 30},
    {"name": "hdc", "filter_percentage": 0.3},
]
NON_DEFAULT = {  # loss: (a distance, a reducer) other than PML's defaults
    "contrastive": ({"name": "cosine"}, "mean"),
    "ntxent": ({"name": "lp"}, "per_anchor"),
    "multi_similarity": ({"name": "lp"}, "avg_non_zero"),
    "circle": (None, "mean"),  # PML's CircleLoss takes cosine only
    "triplet_margin": ({"name": "cosine"}, "mean"),
    "lifted_structure": ({"name": "lp", "power": 2}, "sum"),
    # Not class_weighted: PML's (N, 1) losses of this loss broadcast against
    # the (N,) weights there (see reducers.class_weighted).
    "generalized_lifted_structure": ({"name": "snr"},
                                     {"name": "threshold", "low": 5.0}),
    "tuplet_margin": (None, "sum"),  # cosine only, as circle
}
GRID = [(loss, miner, setting) for loss in PML_LOSSES
        for miner in MINERS for setting in ("default", "non_default")]


def _grid_id(case):
  loss, miner, setting = case
  name, kwargs = _split(miner)
  kind = kwargs.get("type_of_triplets", "")
  return f"{loss}-{name}{'_' + kind if kind else ''}-{setting}"


@pytest.mark.parametrize("case", GRID, ids=[_grid_id(c) for c in GRID])
def test_loss_x_miner_matches_pml(case):
  """PML's defaults, then a non-default distance and reducer together."""
  loss, miner, setting = case
  pieces = {"miner": miner}
  if setting == "non_default":
    pieces["distance"], pieces["reducer"] = NON_DEFAULT[loss]
  grad = not (pieces.get("reducer") == "per_anchor"
              and _lists_pairs_twice(miner))
  assert_matches_pml(loss, grad=grad, **pieces)


def test_contrastive_with_ms_miner_is_the_issue_example():
  value = assert_matches_pml(
      "contrastive", miner={"name": "multi_similarity", "epsilon": 0.1})
  assert value > 0


@pytest.mark.parametrize("kwargs", [
    {"pos_margin": 1.0, "neg_margin": 0.0},  # margins for a similarity
    {"pos_margin": 0.2, "neg_margin": 0.9},
])
def test_contrastive_cosine_margins(kwargs):
  # PML keeps pos_margin=0, neg_margin=1 with a similarity (no flip): the
  # grid's default case covers that; these are the margins one would set.
  assert_matches_pml("contrastive", distance="cosine", **kwargs)


REDUCERS = [
    "mean", "sum", "avg_non_zero",
    {"name": "threshold", "low": 0.1},
    {"name": "threshold", "low": 0.05, "high": 0.5},
    {"name": "class_weighted", "weights": [1.0, 0.5, 2.0, 0.25]},
    {"name": "multiple", "reducers": {"pos_loss": "avg_non_zero",
                                      "neg_loss": "sum"}},
    {"name": "multiple", "reducers": {"pos_loss": "sum"},
     "default_reducer": {"name": "threshold", "high": 0.3}},
]


@pytest.mark.parametrize("reducer", REDUCERS + [
    "per_anchor", {"name": "per_anchor", "reducer": "avg_non_zero"}])
@pytest.mark.parametrize("miner", [None, "batch_hard"])
def test_contrastive_every_reducer(reducer, miner):
  assert_matches_pml("contrastive", miner=miner, reducer=reducer)


@pytest.mark.parametrize("reducer", REDUCERS[:6] + [
    {"name": "multiple", "reducers": {"loss": "sum"}}])
@pytest.mark.parametrize("miner", [None, {"name": "triplet_margin",
                                          "type_of_triplets": "hard"}])
def test_triplet_every_reducer(reducer, miner):
  assert_matches_pml("triplet_margin", miner=miner, reducer=reducer)


@pytest.mark.parametrize("reducer", ["per_anchor", "avg_non_zero",
                                     {"name": "threshold", "high": 1.0}])
def test_multi_similarity_element_reducers(reducer):
  assert_matches_pml("multi_similarity", reducer=reducer,
                     miner="multi_similarity")


@pytest.mark.parametrize("loss,regularizer,kwargs", [
    ("contrastive", "lp", {}),
    ("contrastive", {"name": "lp", "p": 1, "power": 2}, {"reducer": "mean"}),
    ("triplet_margin", "zero_mean", {"embedding_reg_weight": 0.3,
                                     "miner": "batch_hard"}),
    ("multi_similarity", {"name": "center_invariant",
                          "reducer": "avg_non_zero"},
     {"embedding_reg_weight": 0.1}),
    ("circle", {"name": "lp", "power": 2}, {"miner": "multi_similarity"}),
])
def test_embedding_regularizers(loss, regularizer, kwargs):
  assert_matches_pml(loss, regularizer=regularizer, **kwargs)


def test_triplet_smooth_loss_and_miner_distance():
  assert_matches_pml("triplet_margin", smooth_loss=True, margin=0.1,
                     miner={"name": "triplet_margin", "margin": 0.3,
                            "distance": "cosine"})


@pytest.mark.parametrize("name,pieces", [
    ("contrastive", {"miner": "batch_hard"}),
    ("triplet_margin", {"miner": "batch_hard"}),
    ("multi_similarity", {"miner": "batch_hard"}),
    ("ntxent", {"miner": "batch_hard"}),
    ("circle", {"miner": "batch_hard"}),
    ("contrastive", {"miner": "angular", "regularizer": "center_invariant"}),
    ("triplet_margin", {"miner": "triplet_margin", "distance": "snr"}),
])
@pytest.mark.compiled
def test_jit_and_padding(name, pieces):
  """jax.jit(build(...)) runs, and padded rows (even NaN) change nothing."""
  x, labels = random_batch(4, n=N, dim=DIM, classes=CLASSES)
  fn = mj_losses.build(name, **pieces)
  full = jax.jit(fn)(jnp.asarray(x), jnp.asarray(labels))
  padded = np.concatenate([x, np.full((4, DIM), np.nan, np.float32)])
  plabels = np.concatenate([labels, np.zeros(4, np.int32)])
  mask = np.arange(N + 4) < N
  value, grad = jax.jit(jax.value_and_grad(
      lambda e: fn(e, jnp.asarray(plabels), mask=jnp.asarray(mask))))(
          jnp.asarray(padded))
  np.testing.assert_allclose(value, full, rtol=1e-5)
  assert np.all(np.isfinite(grad)) and not np.any(grad[N:])


@pytest.mark.parametrize("name,kwargs", [
    ("contrastive", {}), ("ntxent", {"temperature": 0.5}), ("circle", {}),
    ("lifted_structure", {}), ("generalized_lifted_structure", {}),
    ("tuplet_margin", {"margin": 10.0}),
    ("ms", {}), ("ms", {"epsilon": None, "alpha": 3.0}),
    ("triplet", {}), ("triplet", {"mining": "hard", "margin": 0.1}),
    ("triplet", {"mining": "semihard", "distance": "cosine"}),
    ("triplet", {"distance": "squared_euclidean", "normalize": False}),
])
def test_build_keeps_registry_numbers(name, kwargs):
  x, labels = random_batch(5, n=N, dim=DIM, classes=CLASSES)
  ours = _value_and_grad(mj_losses.build(name, **kwargs), jnp.asarray(x),
                         jnp.asarray(labels))
  registry = _value_and_grad(
      functools.partial(mj_losses.REGISTRY[name].fn, **kwargs),
      jnp.asarray(x), jnp.asarray(labels))
  np.testing.assert_allclose(ours[0], registry[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ours[1], registry[1], rtol=1e-4, atol=1e-6)


def test_other_registered_losses_build_with_defaults_only():
  fn = mj_losses.build("supcon", temperature=0.5)
  x, labels = random_batch(6, n=N, dim=DIM, classes=CLASSES)
  assert np.isfinite(float(fn(jnp.asarray(x), jnp.asarray(labels))))


@pytest.mark.parametrize("call,words", [
    (lambda: mj_losses.build("supcon", miner="batch_hard"), "compose"),
    (lambda: mj_losses.build("circle", distance="lp"), "cosine"),
    (lambda: mj_losses.build("triplet_margin", reducer="per_anchor"),
     "per_anchor"),
    (lambda: mj_losses.build("contrastive", reducer="divisor"), "divisor"),
    (lambda: mj_losses.build("triplet_margin", reducer="do_nothing"),
     "do_nothing"),
    (lambda: mj_losses.build("contrastive", miner="nope"), "Known miners"),
    (lambda: mj_losses.build("contrastive", distance="euclidean"),
     "Known distances"),
    (lambda: mj_losses.build("contrastive", margin=1.0), "pos_margin"),
    (lambda: mj_losses.build("contrastive", miner={"name": "triplet_margin",
                                                   "type_of_triplets": "x"}),
     "type_of_triplets"),
    (lambda: mj_losses.build("contrastive", miner={"name": "pair_margin",
                                                   "epsilon": 1}),
     "pos_margin"),
    (lambda: mj_losses.build("no_such_loss"), "Known losses"),
    (lambda: mj_losses.build("ms", epsilon=0.1, miner="batch_hard"),
     "epsilon"),
    (lambda: mj_losses.build("supcon", regularizer="lp"), "regularizer"),
    (lambda: mj_losses.build("contrastive", regularizer="no_such"),
     "Known regularizers"),
    (lambda: mj_losses.build("contrastive", embedding_reg_weight=0.5),
     "embedding_reg_weight"),
])
def test_refused_combinations_are_user_errors(call, words):
  with pytest.raises(UserError, match=words) as e:
    call()
  assert "\n" not in str(e.value)


def _retrieval_config(**loss_config):
  pytest.importorskip("ml_collections")
  # pylint: disable-next=g-import-not-at-top
  from metricjax.config_utils import base_config
  config = base_config()
  config.dataset = "mnist"
  config.loss.update(loss_config)
  return config


def _retrieval_loss(**loss_config):
  # pylint: disable-next=g-import-not-at-top
  from metricjax.tasks import retrieval
  config = _retrieval_config(**loss_config)
  loss = mj_losses.get_loss(config.loss.name)
  return retrieval.make_loss(config, EmbeddingModel(), loss)


def test_retrieval_make_loss_reads_config_loss_pieces():
  x, labels = random_batch(7, n=N, dim=DIM, classes=CLASSES)
  batch = {"images": jnp.asarray(x), "labels": jnp.asarray(labels)}
  pieces = {"miner": {"name": "multi_similarity", "epsilon": 0.1},
            "reducer": "mean"}
  loss_fn = _retrieval_loss(name="contrastive", distance="", **pieces,
                            kwargs={"neg_margin": 0.8})
  value, _ = loss_fn({}, {}, {}, batch, {}, jax.random.key(0))
  want = mj_losses.build("contrastive", neg_margin=0.8, **pieces)(
      batch["images"], batch["labels"])
  np.testing.assert_allclose(value, want, rtol=1e-6)
  # PML's name, no pieces: the composed default.
  value, _ = _retrieval_loss(name="triplet_margin")({}, {}, {}, batch, {},
                                                    jax.random.key(0))
  np.testing.assert_allclose(
      value, assert_matches_pml("triplet_margin", seed=7), rtol=1e-5)


@pytest.mark.parametrize("loss_config", [
    {"name": "supcon", "miner": "batch_hard"},
    {"name": "ms", "miner": "batch_hard", "kwargs": {"epsilon": 0.1}},
    {"name": "circle", "distance": "snr"},
    {"name": "npairs", "memory_size": 1024},
])
def test_config_loss_pieces_are_refused_before_anything_runs(loss_config):
  # pylint: disable-next=g-import-not-at-top
  from metricjax.config_check import validate
  with pytest.raises(UserError):
    validate(_retrieval_config(**loss_config))


def test_do_nothing_returns_pmls_unreduced_losses():
  torch, _, losses, miners = import_pml()
  from pytorch_metric_learning import reducers  # pylint: disable=g-import-not-at-top
  x, labels = random_batch(3, n=N, dim=DIM, classes=CLASSES)
  ours = mj_losses.build("contrastive", reducer="do_nothing",
                         miner="multi_similarity")(x, labels)
  t, tl = torch.tensor(x), torch.tensor(labels, dtype=torch.long)
  theirs = losses.ContrastiveLoss(reducer=reducers.DoNothingReducer())(
      t, tl, miners.MultiSimilarityMiner()(t, tl))
  for k in ("pos_loss", "neg_loss"):
    a, b = (i.numpy() for i in theirs[k]["indices"])
    weights = np.asarray(ours[k]["weights"])
    listed = np.zeros_like(weights)
    np.add.at(listed, (a, b), 1.0)
    np.testing.assert_array_equal(weights, listed)
    np.testing.assert_allclose(np.asarray(ours[k]["losses"])[a, b],
                               theirs[k]["losses"].numpy(), rtol=1e-5,
                               atol=1e-6)


def test_divisor_is_the_default_of_the_losses_that_supply_one():
  x, labels = random_batch(4, n=N, dim=DIM, classes=CLASSES)
  np.testing.assert_allclose(
      mj_losses.build("margin", reducer="divisor")(x, labels),
      mj_losses.build("margin")(x, labels))
  for name, reducer in (("contrastive", "divisor"),
                        ("triplet_margin", "do_nothing"),
                        ("histogram", "do_nothing")):
    with pytest.raises(UserError, match="reducer"):
      mj_losses.build(name, reducer=reducer)


@pytest.mark.parametrize("distance", [None, "cosine"])
@pytest.mark.parametrize("miner", [None, "batch_hard", {
    "name": "triplet_margin", "type_of_triplets": "semihard"}])
def test_triplet_margin_swap_matches_pml(distance, miner):
  assert_matches_pml("triplet_margin", seed=5, distance=distance, miner=miner,
                     swap=True, smooth_loss=miner == "batch_hard")

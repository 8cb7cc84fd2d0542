"""The losses of mined pairs or triplets that are not one formula per pair
(signal_to_noise_ratio_contrastive, angular, npairs,
threshold_consistent_margin, histogram, dynamic_soft_margin) through
losses.build, against pytorch-metric-learning 2.9: values and gradients with
no miner, MultiSimilarityMiner and TripletMarginMiner with PML's defaults,
then a non-default distance / reducer / hyper-parameters (with
BatchHardMiner for most); an embedding regularizer; degenerate batches;
padding; jit; and the pieces PML refuses or ignores."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metricjax import losses as mj_losses
from metricjax.errors import UserError
from loss_harness import import_pml
from loss_harness import random_batch
from loss_harness import close_to_largest

# Op by op: tests/losses/conftest.py says why.
pytestmark = [
    pytest.mark.eager,
    # PML's HistogramLoss indexes with a list (torch warns, and works).
    pytest.mark.filterwarnings("ignore:Using a non-tuple sequence"),
]

N, DIM, CLASSES = 32, 8, 4

PML_LOSSES = {
    "signal_to_noise_ratio_contrastive": "SignalToNoiseRatioContrastiveLoss",
    "angular": "AngularLoss",
    "npairs": "NPairsLoss",
    "threshold_consistent_margin": "ThresholdConsistentMarginLoss",
    "histogram": "HistogramLoss",
    "dynamic_soft_margin": "DynamicSoftMarginLoss",
}
PML_DISTANCES = {"lp": "LpDistance", "cosine": "CosineSimilarity",
                 "dot_product": "DotProductSimilarity", "snr": "SNRDistance"}
PML_MINERS = {"multi_similarity": "MultiSimilarityMiner",
              "triplet_margin": "TripletMarginMiner",
              "batch_hard": "BatchHardMiner"}
PML_REDUCERS = {"mean": "MeanReducer", "sum": "SumReducer",
                "avg_non_zero": "AvgNonZeroReducer",
                "class_weighted": "ClassWeightedReducer"}
MINERS = [
    None,
    {"name": "multi_similarity", "epsilon": 0.1},
    {"name": "triplet_margin", "margin": 0.2},
]
# A distance, reducer or hyper-parameters other than PML's defaults, where
# the loss takes them, and a miner to go with them.
NON_DEFAULT = {
    "signal_to_noise_ratio_contrastive": ("batch_hard", {
        "distance": {"name": "snr", "power": 2}, "reducer": "mean",
        "neg_margin": 0.8}),
    "angular": ("batch_hard", {"reducer": "sum", "alpha": 35.0}),
    "npairs": ("multi_similarity", {"distance": "lp", "reducer": {
        "name": "class_weighted", "weights": [1.0, 0.5, 2.0, 0.25]}}),
    "threshold_consistent_margin": ("batch_hard", {
        "margin_plus": 0.8, "margin_minus": 0.3, "lambda_minus": 2.0}),
    "histogram": (None, {"distance": {"name": "cosine", "power": 2},
                         "n_bins": 20}),
    "dynamic_soft_margin": ("batch_hard", {
        "distance": {"name": "lp", "power": 2}, "min_val": -4.0,
        "num_bins": 20}),
}


def _split(spec):
  if spec is None or isinstance(spec, str):
    return spec, {}
  kwargs = dict(spec)
  return kwargs.pop("name"), kwargs


def _theirs(name, x, labels, *, distance=None, miner=None, reducer=None,
            regularizer=None, **hyperparameters):
  torch, distances, losses, miners = import_pml()
  # pylint: disable-next=g-import-not-at-top
  from pytorch_metric_learning import reducers, regularizers
  kwargs = dict(hyperparameters)
  if regularizer is not None:
    assert regularizer == "lp"
    kwargs["embedding_regularizer"] = regularizers.LpRegularizer()
  if distance is not None:
    d_name, d_kwargs = _split(distance)
    kwargs["distance"] = getattr(distances, PML_DISTANCES[d_name])(**d_kwargs)
  if reducer is not None:
    r_name, r_kwargs = _split(reducer)
    if "weights" in r_kwargs:
      r_kwargs["weights"] = torch.tensor(r_kwargs["weights"])
    kwargs["reducer"] = getattr(reducers, PML_REDUCERS[r_name])(**r_kwargs)
  loss = getattr(losses, PML_LOSSES[name])(**kwargs)
  t = torch.tensor(x, requires_grad=True)  # float32, as ours
  tl = torch.tensor(labels, dtype=torch.long)
  m_name, m_kwargs = _split(miner)
  indices = None if m_name is None else getattr(
      miners, PML_MINERS[m_name])(**m_kwargs)(t, tl)
  value = loss(t, tl, indices)
  value.backward()
  grad = t.grad.numpy() if t.grad is not None else np.zeros_like(x)
  return value.item(), grad


def _ours(name, x, labels, **pieces):
  fn = mj_losses.build(name, **pieces)
  value, grad = jax.value_and_grad(lambda e: fn(e, jnp.asarray(labels)))(
      jnp.asarray(x))
  return float(value), np.asarray(grad)


GRID = ([(loss, miner, "default") for loss in PML_LOSSES for miner in MINERS]
        + [(loss, NON_DEFAULT[loss][0], "non_default") for loss in PML_LOSSES])


def _grid_id(case):
  loss, miner, setting = case
  return f"{loss}-{_split(miner)[0]}-{setting}"


@pytest.mark.parametrize("case", GRID, ids=[_grid_id(c) for c in GRID])
def test_loss_x_miner_matches_pml(case):
  loss, miner, setting = case
  pieces = {"miner": miner}
  if setting == "non_default":
    pieces.update(NON_DEFAULT[loss][1])
  x, labels = random_batch(0, n=N, dim=DIM, classes=CLASSES)
  ours = _ours(loss, x, labels, **pieces)
  theirs = _theirs(loss, x, labels, **pieces)
  close_to_largest(ours[0], theirs[0], 1e-4)
  close_to_largest(ours[1], theirs[1], 2e-4)


def test_npairs_takes_the_miners_first_pair():
  """MultiSimilarityMiner lists a row's positives by distance: taken
  row-major, the pairs (and the value) differ on this batch."""
  x, labels = random_batch(0, n=N, dim=DIM, classes=CLASSES)
  miner = {"name": "multi_similarity", "epsilon": 0.1}
  ours = _ours("npairs", x, labels, miner=miner)[0]
  assert ours != pytest.approx(_ours("npairs", x, labels)[0], rel=1e-3)
  assert ours == pytest.approx(_theirs("npairs", x, labels, miner=miner)[0],
                               rel=1e-4)


def test_histogram_delta_as_pml():
  x, labels = random_batch(1, n=N, dim=DIM, classes=CLASSES)
  ours = _ours("histogram", x, labels, delta=0.04)
  close_to_largest(ours[0], _theirs("histogram", x, labels, delta=0.04)[0], 1e-4)
  close_to_largest(ours[0], _ours("histogram", x, labels, n_bins=50)[0], 1e-6)


@pytest.mark.parametrize("name", ["npairs", "histogram"])
def test_embedding_regularizer(name):
  """An already-reduced loss plus PML's embedding regularizer."""
  x, labels = random_batch(2, n=N, dim=DIM, classes=CLASSES)
  pieces = {"miner": "batch_hard", "regularizer": "lp",
            "embedding_reg_weight": 0.3}
  ours = _ours(name, x, labels, **pieces)
  theirs = _theirs(name, x, labels, **pieces)
  close_to_largest(ours[0], theirs[0], 1e-4)
  close_to_largest(ours[1], theirs[1], 2e-4)


PADDED = [("signal_to_noise_ratio_contrastive", "batch_hard"),
          ("angular", {"name": "triplet_margin", "margin": 0.2}),
          ("npairs", "multi_similarity"), ("threshold_consistent_margin", None),
          ("histogram", "multi_similarity"), ("dynamic_soft_margin", None)]


def _padded_value_and_grad(fn, x, labels, jit=False):
  """fn on x plus 4 NaN rows, masked out: the grid's shapes when x has
  N - 4 rows (eager ops are compiled once per shape)."""
  n = len(x)
  padded = np.concatenate([x, np.full((4, DIM), np.nan, np.float32)])
  plabels = jnp.asarray(np.concatenate([labels, np.zeros(4, np.int32)]))
  mask = jnp.asarray(np.arange(n + 4) < n)
  f = jax.value_and_grad(lambda e: fn(e, plabels, mask=mask))
  value, grad = (jax.jit(f) if jit else f)(jnp.asarray(padded))
  grad = np.asarray(grad)
  assert np.all(np.isfinite(grad)) and not np.any(grad[n:])
  return float(value), grad[:n]


@pytest.mark.parametrize("name,miner", PADDED)
def test_padding(name, miner):
  """Padded rows (even NaN) change nothing and get no gradient: PML's
  numbers on the valid rows."""
  x, labels = random_batch(4, n=N - 4, dim=DIM, classes=CLASSES)
  ours = _padded_value_and_grad(mj_losses.build(name, miner=miner), x, labels)
  theirs = _theirs(name, x, labels, miner=miner)
  close_to_largest(ours[0], theirs[0], 1e-4)
  close_to_largest(ours[1], theirs[1], 2e-4)


@pytest.mark.parametrize("name,miner", [
    ("angular", "batch_hard"), ("npairs", "multi_similarity"),
    ("dynamic_soft_margin", {"name": "triplet_margin", "margin": 0.2})])
@pytest.mark.compiled
def test_jit(name, miner):
  x, labels = random_batch(5, n=N - 4, dim=DIM, classes=CLASSES)
  fn = mj_losses.build(name, miner=miner)
  value, _ = _padded_value_and_grad(fn, x, labels, jit=True)
  np.testing.assert_allclose(value, _theirs(name, x, labels, miner=miner)[0],
                             rtol=1e-4)


@pytest.mark.parametrize("call,words", [
    (lambda: mj_losses.build("signal_to_noise_ratio_contrastive",
                             distance="lp"), "'snr'"),
    (lambda: mj_losses.build("angular", distance="cosine"), "'lp'"),
    (lambda: mj_losses.build("angular", distance={"name": "lp", "p": 1}),
     "p=2"),
    (lambda: mj_losses.build("threshold_consistent_margin", reducer="sum"),
     "reducer"),
    (lambda: mj_losses.build("threshold_consistent_margin",
                             distance={"name": "cosine", "power": 2}),
     "power"),
    (lambda: mj_losses.build("histogram", reducer="mean"), "reducer"),
    (lambda: mj_losses.build("histogram", n_bins=10, delta=0.1), "delta"),
    (lambda: mj_losses.build("dynamic_soft_margin", reducer="avg_non_zero"),
     "reducer"),
    (lambda: mj_losses.build("dynamic_soft_margin", distance={
        "name": "lp", "normalize_embeddings": False}), "normalize"),
    (lambda: mj_losses.build("dynamic_soft_margin", distance="snr"), "'lp'"),
    (lambda: mj_losses.build("npairs", reducer="divisor"), "divisor"),
    (lambda: mj_losses.build("angular", margin=1.0), "alpha"),
])
def test_refused_pieces_are_user_errors(call, words):
  with pytest.raises(UserError, match=words) as e:
    call()
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", list(PML_LOSSES))
def test_degenerate_batches_match_pml(name):
  """One class (no negatives) and all classes distinct (no positives)."""
  x, _ = random_batch(6, n=N, dim=DIM, classes=CLASSES)
  for labels in (np.zeros(N, np.int32), np.arange(N, dtype=np.int32)):
    ours = _ours(name, x, labels)
    assert np.all(np.isfinite(ours[1]))
    theirs = _theirs(name, x, labels)
    close_to_largest(ours[0], theirs[0], 1e-4)
    close_to_largest(ours[1], theirs[1], 2e-4)

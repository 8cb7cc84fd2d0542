"""Multi-Similarity and cross-entropy losses against their PyTorch originals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metricjax.losses import multi_similarity_loss
from metricjax.losses import softmax_cross_entropy


def import_torch():
  """Only the comparisons need PyTorch; the other tests run without it."""
  return pytest.importorskip("torch")


@pytest.fixture
def x64():
  """float64 for this test only: exact agreement, not tolerance games."""
  with jax.enable_x64(True):
    yield


def pml_value_and_grad(x, labels, alpha, beta, base, epsilon):
  torch = import_torch()
  pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
  pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
  emb = torch.tensor(x, requires_grad=True)
  lab = torch.tensor(labels)
  loss_fn = pml_losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base)
  pairs = None
  if epsilon is not None:
    pairs = pml_miners.MultiSimilarityMiner(epsilon=epsilon)(emb, lab)
  loss = loss_fn(emb, lab, pairs)
  loss.backward()
  return loss.item(), emb.grad.numpy()


def batches():
  rng = np.random.default_rng(0)
  for seed in range(3):
    yield f"random{seed}", rng.normal(size=(32, 16)), rng.integers(0, 4, 32)
  # Clustered: mining keeps a few pairs, many anchors keep none.
  centers = rng.normal(size=(4, 16))
  labels = rng.integers(0, 4, 32)
  yield "clustered", centers[labels] + 0.8 * rng.normal(size=(32, 16)), labels
  yield "one_class", rng.normal(size=(32, 16)), np.zeros(32, np.int64)
  yield "all_distinct", rng.normal(size=(32, 16)), np.arange(32)


CASES = list(batches())
# One compiled function for every case: hyperparameters are traced, so only
# shapes, dtypes and epsilon=None recompile (tests stay fast).
ms_value_and_grad = jax.jit(jax.value_and_grad(multi_similarity_loss))
HYPER = [dict(alpha=2.0, beta=50.0, base=0.5),  # PML's defaults
         dict(alpha=2.0, beta=40.0, base=1.0)]


@pytest.mark.parametrize("epsilon", [0.1, 0.5, None])
@pytest.mark.parametrize("hyper", HYPER)
@pytest.mark.parametrize("name,x,labels", CASES, ids=[c[0] for c in CASES])
def test_matches_pml_float64(x64, name, x, labels, hyper, epsilon):
  del name
  want, want_grad = pml_value_and_grad(x, labels, epsilon=epsilon, **hyper)
  got, got_grad = ms_value_and_grad(jnp.asarray(x), jnp.asarray(labels),
                                    epsilon=epsilon, **hyper)
  assert got.dtype == jnp.float64
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(got_grad, want_grad, rtol=1e-8, atol=1e-12)


def test_degenerate_batches_are_zero_with_mining():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
  for labels in (np.zeros(16, np.int32), np.arange(16)):
    loss, grad = ms_value_and_grad(x, labels)
    assert loss == 0.0
    assert np.all(grad == 0.0)


def test_matches_pml_float32():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(64, 32)).astype(np.float32)
  labels = rng.integers(0, 8, 64)
  want, want_grad = pml_value_and_grad(x, labels, 2.0, 50.0, 0.5, 0.1)
  got, got_grad = ms_value_and_grad(jnp.asarray(x), jnp.asarray(labels))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(got_grad, want_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("beta", [50.0, 500.0])
@pytest.mark.parametrize("epsilon", [0.1, None])
def test_large_beta_and_similarities_stay_finite(beta, epsilon):
  # Every similarity is 1: exp(beta * (1 - base)) overflows float32 for
  # beta=500, the stable form must not.
  x = jnp.ones((16, 8), jnp.float32)
  x = x + 1e-4 * jax.random.normal(jax.random.key(0), x.shape)
  labels = jnp.arange(16) % 2
  loss, grad = ms_value_and_grad(x, labels, beta=beta, epsilon=epsilon)
  assert np.isfinite(loss)
  assert np.all(np.isfinite(grad))
  # 8 negatives at similarity ~1 and 7 positives at ~1, per anchor.
  want = (np.log1p(8 * np.exp(beta * 0.5)) / beta
          + np.log1p(7 * np.exp(-2.0 * 0.5)) / 2.0)
  np.testing.assert_allclose(loss, want, rtol=1e-3)


def test_mask_equals_unpadded_batch():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(24, 16)).astype(np.float32)
  labels = rng.integers(0, 4, 24)
  # Padding of every awkward kind: zeros, garbage, labels shared with real
  # rows (they would create pairs if not dropped), huge and NaN rows.
  pad_x = np.concatenate([np.zeros((2, 16)), rng.normal(size=(4, 16)),
                          np.full((1, 16), 1e30), np.full((1, 16), np.nan)])
  pad_x = pad_x.astype(np.float32)
  pad_labels = np.array([0, 1, 2, 3, 0, -1, 1, 2])
  order = rng.permutation(32)
  xp = np.concatenate([x, pad_x])[order]
  lp = np.concatenate([labels, pad_labels])[order]
  mask = (order < 24)

  for epsilon in (0.1, None):
    want, want_grad = ms_value_and_grad(jnp.asarray(x), jnp.asarray(labels),
                                        epsilon=epsilon)
    got, got_grad = ms_value_and_grad(jnp.asarray(xp), jnp.asarray(lp),
                                      epsilon=epsilon, mask=jnp.asarray(mask))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.all(got_grad[~mask] == 0.0)
    np.testing.assert_allclose(got_grad[mask], want_grad[order[mask]],
                               rtol=1e-5, atol=1e-7)


def test_mask_all_false_is_zero():
  x = jnp.ones((4, 3))
  loss, grad = ms_value_and_grad(x, jnp.arange(4) % 2, mask=jnp.zeros(4, bool))
  assert loss == 0.0 and np.all(grad == 0.0)


ce_value_and_grad = jax.jit(jax.value_and_grad(softmax_cross_entropy))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_matches_torch(label_smoothing):
  torch = import_torch()
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(16, 10)).astype(np.float32) * 3
  labels = rng.integers(0, 10, 16)
  want = torch.nn.functional.cross_entropy(
      torch.tensor(logits), torch.tensor(labels),
      label_smoothing=label_smoothing).item()
  got = ce_value_and_grad(jnp.asarray(logits), jnp.asarray(labels),
                          label_smoothing=label_smoothing)[0]
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_cross_entropy_mask():
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(12, 5)).astype(np.float32)
  labels = rng.integers(0, 5, 12)
  mask = np.arange(12) < 9
  bad_logits = logits.copy()
  bad_logits[~mask] = np.nan
  bad_labels = np.where(mask, labels, -1)
  want, want_grad = ce_value_and_grad(
      jnp.asarray(logits[:9]), jnp.asarray(labels[:9]), label_smoothing=0.1)
  got, got_grad = ce_value_and_grad(
      jnp.asarray(bad_logits), jnp.asarray(bad_labels), mask=jnp.asarray(mask),
      label_smoothing=0.1)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(got_grad[:9], want_grad, rtol=1e-6)
  assert np.all(got_grad[9:] == 0.0)


@pytest.mark.parametrize("epsilon", [0.1, 0.5, None])
@pytest.mark.parametrize("seed", [0, 1])
def test_reference_set_matches_pml_float64(x64, seed, epsilon):
  torch = import_torch()
  pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
  pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
  rng = np.random.default_rng(10 + seed)
  x, labels = rng.normal(size=(16, 8)), rng.integers(0, 4, 16)
  r, ref_labels = rng.normal(size=(40, 8)), rng.integers(0, 4, 40)
  emb = torch.tensor(x, requires_grad=True)
  lab, ref, ref_lab = torch.tensor(labels), torch.tensor(r), torch.tensor(
      ref_labels)
  pairs = None
  if epsilon is not None:
    pairs = pml_miners.MultiSimilarityMiner(epsilon=epsilon)(emb, lab, ref,
                                                             ref_lab)
  loss = pml_losses.MultiSimilarityLoss()(emb, lab, pairs, ref_emb=ref,
                                          ref_labels=ref_lab)
  loss.backward()
  got, got_grad = ms_value_and_grad(
      jnp.asarray(x), jnp.asarray(labels), epsilon=epsilon,
      ref_embeddings=jnp.asarray(r), ref_labels=jnp.asarray(ref_labels))
  np.testing.assert_allclose(got, loss.item(), rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(got_grad, emb.grad.numpy(), rtol=1e-8,
                             atol=1e-12)

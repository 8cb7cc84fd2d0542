"""The pair and triplet loss tests' harness: random batches, our value and
gradient (jitted), and pytorch-metric-learning's, the reference (the calling
test skips where PML is not installed)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest


RTOL, ATOL = 1e-5, 1e-6


def import_pml():
  torch = pytest.importorskip("torch")
  pml = pytest.importorskip("pytorch_metric_learning")
  del pml
  # pylint: disable-next=g-import-not-at-top
  from pytorch_metric_learning import distances, losses, miners
  return torch, distances, losses, miners


def random_batch(seed, n=24, dim=8, classes=4):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, dim)).astype(np.float32)
  return x, rng.integers(0, classes, n).astype(np.int32)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _value_and_grad(fn, kwargs, x, labels):
  return jax.value_and_grad(lambda e: fn(e, labels, **dict(kwargs)))(x)


def our_value_and_grad(fn, x, labels, **kwargs):
  # Static (fn, kwargs): batches of one shape share one compilation.
  v, g = _value_and_grad(fn, tuple(sorted(kwargs.items())), jnp.asarray(x),
                         jnp.asarray(labels))
  return float(v), np.asarray(g)


def pml_value_and_grad(torch, loss, x, labels, miner=None, **kwargs):
  t = torch.tensor(x, requires_grad=True)
  tl = torch.tensor(labels, dtype=torch.long)
  indices = None
  if miner is not None:  # mined against the reference set when there is one
    refs = [kwargs[k] for k in ("ref_emb", "ref_labels") if k in kwargs]
    indices = miner(t, tl, *refs)
  value = loss(t, tl, indices, **kwargs)
  value.backward()
  return value.item(), t.grad.numpy()


def assert_same(ours, theirs):
  np.testing.assert_allclose(ours[0], theirs[0], rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-4, atol=1e-6)


def pml_loss_and_miner(losses, miners, name):
  """PML's (loss, miner) for a registered pair loss with its defaults."""
  if name == "ms":
    return losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner()
  return {"triplet": losses.TripletMarginLoss, "ntxent": losses.NTXentLoss,
          "contrastive": losses.ContrastiveLoss}[name](), None


def close_to_largest(got, want, rtol=2e-4):
  """assert_allclose with the tolerance relative to want's largest entry
  (gradients: float32 here vs PML's float64, small entries included)."""
  want = np.asarray(want, np.float64)
  scale = max(float(np.max(np.abs(want))), 1e-12) if want.ndim else abs(want)
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale + 1e-7)


class EmbeddingModel:
  """A model whose embeddings are its input: a task's make_loss sees the
  batch."""

  def apply(self, variables, images, *, train, mutable):
    del variables, train, mutable
    return {"embedding": images}, {}

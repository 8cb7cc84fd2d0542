"""The VSE hinge ranking loss against VSE++'s ContrastiveLoss."""

import jax
import numpy as np
import pytest

from metricjax.losses import vse_ranking_loss


def vsepp_contrastive_loss(torch, im, s, margin, max_violation):
  """fartashf/vsepp model.py ContrastiveLoss.forward, transcribed."""
  scores = im.mm(s.t())
  diagonal = scores.diag().view(im.size(0), 1)
  d1 = diagonal.expand_as(scores)
  d2 = diagonal.t().expand_as(scores)
  cost_s = (margin + scores - d1).clamp(min=0)
  cost_im = (margin + scores - d2).clamp(min=0)
  mask = torch.eye(scores.size(0)) > .5
  cost_s = cost_s.masked_fill_(mask, 0)
  cost_im = cost_im.masked_fill_(mask, 0)
  if max_violation:
    cost_s = cost_s.max(1)[0]
    cost_im = cost_im.max(0)[0]
  return cost_s.sum() + cost_im.sum()


@pytest.mark.parametrize("max_violation", [False, True])
def test_loss_matches_vsepp(max_violation):
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(int(max_violation))
  im = rng.normal(size=(9, 6)).astype(np.float32)
  s = rng.normal(size=(9, 6)).astype(np.float32)
  im /= np.linalg.norm(im, axis=1, keepdims=True)
  s /= np.linalg.norm(s, axis=1, keepdims=True)
  t_im = torch.tensor(im, dtype=torch.float64, requires_grad=True)
  t_s = torch.tensor(s, dtype=torch.float64, requires_grad=True)
  want = vsepp_contrastive_loss(torch, t_im, t_s, 0.2, max_violation)
  want.backward()
  want = want.item()
  loss = jax.jit(jax.value_and_grad(
      lambda a, b: vse_ranking_loss(a, b, margin=0.2,
                                    max_violation=max_violation), (0, 1)))
  value, (g_im, g_s) = loss(im, s)
  assert want > 0
  np.testing.assert_allclose(float(value), float(want), rtol=1e-5)
  np.testing.assert_allclose(g_im, t_im.grad.numpy(), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(g_s, t_s.grad.numpy(), rtol=1e-4, atol=1e-6)
  mean = vse_ranking_loss(im, s, max_violation=max_violation, reduction="mean")
  np.testing.assert_allclose(float(mean), float(want) / 9, rtol=1e-5)


def test_loss_mask_drops_padded_rows():
  rng = np.random.default_rng(3)
  im, s = rng.normal(size=(2, 7, 5)).astype(np.float32)
  mask = np.array([1, 1, 1, 1, 1, 0, 0], bool)
  for mv in (False, True):
    for reduction in ("sum", "mean"):
      got = vse_ranking_loss(im, s, mask=mask, max_violation=mv,
                             reduction=reduction)
      want = vse_ranking_loss(im[:5], s[:5], max_violation=mv,
                              reduction=reduction)
      np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
  # A perfect batch (matching pairs far above negatives) costs nothing.
  eye = np.eye(4, dtype=np.float32)
  assert float(vse_ranking_loss(eye, eye, max_violation=True)) == 0.0

"""Contrastive and NT-Xent losses against pytorch-metric-learning."""

import pytest

from metricjax.losses import contrastive
from loss_harness import assert_same
from loss_harness import import_pml
from loss_harness import our_value_and_grad
from loss_harness import pml_value_and_grad
from loss_harness import random_batch


@pytest.mark.parametrize("kwargs,pml_kwargs", [
    ({}, {}),
    ({"pos_margin": 1.0, "neg_margin": 0.0, "distance": "cosine"},
     {"pos_margin": 1, "neg_margin": 0, "distance": "cosine"}),
    ({"pos_margin": 0.5, "neg_margin": 3.0, "normalize": False},
     {"pos_margin": 0.5, "neg_margin": 3.0, "distance": "unnormalized"}),
])
def test_contrastive_matches_pml(kwargs, pml_kwargs):
  torch, distances, losses, _ = import_pml()
  x, labels = random_batch(2)
  pml_kwargs = dict(pml_kwargs)
  if "distance" in pml_kwargs:
    pml_kwargs["distance"] = (
        distances.CosineSimilarity() if pml_kwargs["distance"] == "cosine"
        else distances.LpDistance(normalize_embeddings=False))
  assert_same(our_value_and_grad(contrastive.contrastive_loss, x, labels, **kwargs),
               pml_value_and_grad(torch, losses.ContrastiveLoss(**pml_kwargs), x, labels))


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_ntxent_matches_pml(temperature):
  torch, _, losses, _ = import_pml()
  x, labels = random_batch(3)
  assert_same(
      our_value_and_grad(contrastive.ntxent_loss, x, labels, temperature=temperature),
      pml_value_and_grad(torch, losses.NTXentLoss(temperature=temperature), x, labels))

"""Siamese mode: explicit triplets, imbalance, and the siamese config."""

import json
import jax
import numpy as np
import pytest

from metricjax import data as data_lib
from metricjax import train as train_lib
from metricjax.data.dataset import ArrayDataset
from metricjax.errors import UserError
from helpers import load_config


def test_random_triplets_are_valid():
  labels = np.array([0] * 5 + [1] * 1 + [2] * 3 + [3] * 7, np.int32)
  index = data_lib.ClassIndex.from_labels(labels, 5)  # Class 4 is empty.
  a, p, n = jax.jit(data_lib.random_triplets, static_argnums=2)(
      jax.random.key(0), index, 2000)
  a, p, n = map(np.asarray, (a, p, n))
  assert (labels[a] == labels[p]).all() and (a != p).all()
  assert (labels[a] != labels[n]).all()
  assert not (labels[a] == 1).any()  # A single-example class has no positive.
  # Anchors are uniform over examples of classes with >= 2 members.
  share = np.bincount(labels[a], minlength=5) / len(a)
  np.testing.assert_allclose(share[[0, 2, 3]], np.array([5, 3, 7]) / 15, atol=0.04)
  # Negatives are uniform over the examples of the other classes.
  negatives = np.bincount(labels[n[labels[a] == 0]], minlength=5)
  np.testing.assert_allclose(negatives[1:4] / negatives.sum(),
                             np.array([1, 3, 7]) / 11, atol=0.06)


def test_imbalanced_keeps_a_seeded_fraction():
  labels = np.repeat(np.arange(4), 50).astype(np.int32)
  ds = ArrayDataset(images=np.zeros((200, 4, 4, 1), np.uint8), labels=labels,
                    num_classes=4, class_names=tuple("abcd"), name="t",
                    split="train", source="test")
  cut = data_lib.imbalanced(ds, classes=(0, 2), keep_fraction=0.1, seed=0)
  assert np.bincount(cut.labels).tolist() == [5, 50, 5, 50]
  again = data_lib.imbalanced(ds, classes=(0, 2), keep_fraction=0.1, seed=0)
  np.testing.assert_array_equal(cut.labels, again.labels)
  with pytest.raises(UserError, match="imbalance"):
    data_lib.imbalanced(ds, classes=(7,), keep_fraction=0.5)


def siamese_config(data_dir, arg):
  config = load_config("siamese", arg)
  config.dataset = f"idx:{data_dir}"
  config.model.widths = (8, 16)
  config.batch_size = 16 if config.sampler == "balanced" else 8
  config.samples_per_class = 4
  config.total_steps = 4
  config.warmup_steps = 1
  config.log_every = 2
  config.eval_every = 2
  config.val_size = 16
  config.eval.batch_size = 16
  if config.imbalance.classes:
    config.imbalance.classes = (0, 1)  # The tiny set has only 4 classes.
  return config


@pytest.mark.parametrize("arg", [
    "loss=shadow,mining=random,normalize=false",
    "loss=triplet,mining=semihard,keep=0.5",
])
def test_siamese_config_trains_with_learning_curve(tiny_idx_dir, tmp_path, arg):
  train_lib.train(siamese_config(tiny_idx_dir, arg), str(tmp_path))
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [2, 4]
  for r in rows:
    assert np.isfinite(r["loss"]) and 0 <= r["val_precision_at_1"] <= 1
    assert r["step_temp_bytes"] > 0 and r["epoch"] > 0


def test_explicit_loss_needs_triplet_sampler(tiny_idx_dir):
  from metricjax.config_check import validate
  config = siamese_config(tiny_idx_dir, "loss=shadow")
  config.sampler = "balanced"
  with pytest.raises(UserError, match="need sampler 'triplets'"):
    validate(config)


def test_siamese_identity_is_json():
  # A resumed run compares identities as JSON; the imbalance ConfigDict
  # once made every siamese run unresumable (TypeError).
  from metricjax.tasks import retrieval
  for arg in ("keep=1.0", "keep=0.1"):
    identity = retrieval.identity(load_config("siamese", arg))
    assert json.loads(json.dumps(identity))["imbalance"]["keep_fraction"] == float(arg[5:])

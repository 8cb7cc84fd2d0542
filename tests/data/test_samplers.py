"""On-device samplers and augmentation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metricjax.data import check_batch_shape
from metricjax.data import class_balanced_batch
from metricjax.data import ClassIndex
from metricjax.data import random_crop_flip
from metricjax.data import uniform_batch
from metricjax.errors import UserError

# Class sizes: 0 and 5 empty, 3 and 6 smaller than K=3.
SIZES = [4, 7, 0, 1, 9, 0, 2, 3]
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(8), SIZES))


def test_class_index_from_labels():
  index = ClassIndex.from_labels(LABELS, 8)
  assert index.members.shape == (8, 9) and index.members.dtype == np.int32
  np.testing.assert_array_equal(index.counts, SIZES)
  assert index.num_nonempty == 6 and index.num_examples == len(LABELS)
  for c, n in enumerate(SIZES):
    np.testing.assert_array_equal(index.members[c, :n],
                                  np.flatnonzero(LABELS == c))


@pytest.mark.parametrize("p, k", [(4, 3), (6, 2), (2, 12)])
def test_class_balanced_batch(p, k):
  index = jax.device_put(ClassIndex.from_labels(LABELS, 8))
  sample = jax.jit(functools.partial(
      class_balanced_batch, classes_per_batch=p, samples_per_class=k))
  seen = set()
  for seed in range(40):
    idx = np.asarray(sample(jax.random.key(seed), index))
    assert idx.shape == (p * k,) and idx.dtype == np.int32
    groups = LABELS[idx].reshape(p, k)
    # Each group of K rows is one class; the P classes are distinct, non-empty.
    assert np.all(groups == groups[:, :1])
    classes = groups[:, 0]
    assert len(set(classes)) == p
    assert not set(classes) & {2, 5}
    seen.update(classes.tolist())
    for c, rows in zip(classes, idx.reshape(p, k)):
      if SIZES[c] >= k:
        assert len(set(rows)) == k  # Without replacement.
      else:
        # With replacement, but every member shows up.
        assert set(rows) == set(np.flatnonzero(LABELS == c))
  assert seen == {0, 1, 3, 4, 6, 7}


def test_class_balanced_batch_is_uniform_over_members():
  labels = np.repeat(np.arange(3), 10)
  index = ClassIndex.from_labels(labels, 3)
  sample = jax.jit(jax.vmap(functools.partial(
      class_balanced_batch, index=index, classes_per_batch=3,
      samples_per_class=4)))
  idx = np.asarray(sample(jax.random.split(jax.random.key(0), 500)))
  counts = np.bincount(idx.ravel(), minlength=30)
  # 500 batches x 4 draws per class of 10: 200 expected per example.
  assert counts.min() > 140 and counts.max() < 260


def test_class_balanced_batch_too_many_classes():
  index = ClassIndex.from_labels(LABELS, 8)
  with pytest.raises(UserError, match="6 classes with examples"):
    class_balanced_batch(jax.random.key(0), index, classes_per_batch=7,
                         samples_per_class=2)


def test_uniform_batch():
  fn = jax.jit(uniform_batch, static_argnums=(1, 2))
  idx = np.asarray(fn(jax.random.key(1), 50, 20))
  assert idx.dtype == np.int32 and idx.shape == (20,)
  assert len(set(idx)) == 20 and idx.min() >= 0 and idx.max() < 50
  with pytest.raises(UserError, match="batch_size"):
    uniform_batch(jax.random.key(1), 5, 6)


def test_check_batch_shape():
  assert check_batch_shape(32, 4, 10) == (8, 4)
  for args, msg in [((32, 1, 10), "samples_per_class=1 must be"),
                    ((30, 4, 10), "not a multiple"),
                    ((4, 4, 10), "single class"),
                    ((64, 4, 10), "16 distinct classes"),
                    ((0, 4, 10), "batch_size=0")]:
    with pytest.raises(UserError, match=msg) as e:
      check_batch_shape(*args)
    assert "batch_size" in str(e.value)
    assert "samples_per_class" in str(e.value)


def _windows(image, padding):
  """Every crop and flip random_crop_flip may produce from `image`."""
  h, w = image.shape[:2]
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  for dy in range(2 * padding + 1):
    for dx in range(2 * padding + 1):
      window = padded[dy:dy + h, dx:dx + w]
      yield window
      yield window[:, ::-1]


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_random_crop_flip(dtype):
  rng = np.random.default_rng(0)
  images = rng.integers(1, 256, (16, 6, 5, 3)).astype(dtype)
  augment = jax.jit(functools.partial(random_crop_flip, padding=2))
  out = np.asarray(augment(jax.random.key(3), images))
  assert out.shape == images.shape and out.dtype == dtype
  # A pure crop/flip: each output is one window of its own padded input.
  for image, result in zip(images, out):
    assert any(np.array_equal(result, w) for w in _windows(image, 2))
  np.testing.assert_array_equal(out, augment(jax.random.key(3), images))
  assert not np.array_equal(out, augment(jax.random.key(4), images))
  # Not the identity for every example: crops and flips do happen.
  assert not np.array_equal(out, images)
  same = random_crop_flip(jax.random.key(0), jnp.asarray(images), padding=0,
                          flip=False)
  np.testing.assert_array_equal(same, images)


def test_hold_out_is_stratified_deterministic_and_disjoint():
  from metricjax.data import ArrayDataset, hold_out
  labels = np.repeat(np.arange(3), [50, 30, 20]).astype(np.int32)
  images = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1)
  ds = ArrayDataset(images, labels, 3, ("a", "b", "c"), "t", "train", "test")
  rest, held = hold_out(ds, 10)
  assert np.bincount(held.labels).tolist() == [5, 3, 2]
  assert len(rest) == 90
  seen = np.concatenate([rest.images.ravel(), held.images.ravel()])
  assert sorted(seen.tolist()) == list(range(100))
  again = hold_out(ds, 10)[1]
  np.testing.assert_array_equal(held.images, again.images)
  # Largest remainders make the shares add up to the size asked for.
  assert np.bincount(hold_out(ds, 7)[1].labels).tolist() == [4, 2, 1]
  with pytest.raises(UserError, match="val_size"):
    hold_out(ds, 100)

"""Full-Network Embedding: sizes, statistics, discretisation, caching."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metricjax import fne
from metricjax.errors import UserError
from metricjax.models import vgg

TINY = dict(blocks=((4,), (8, 8)), fc_dims=(16, 12), num_classes=5,
            pool_size=(2, 2))


def test_vgg16_fne_has_12416_features():
  net = vgg.vgg16()
  assert len(net.fne_taps) == 15 and net.fne_taps == fne.VGG16_FNE_TAPS
  x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(net.init, jax.random.key(0), x)
  acts = jax.eval_shape(
      lambda v, x: net.apply(v, x, capture=True), variables, x)
  assert acts["conv1_1"].shape == (2, 224, 224, 64)
  assert acts["conv5_3"].shape == (2, 14, 14, 512)
  assert acts["fc7"].shape == (2, 4096) and acts["fc8"].shape == (2, 1000)
  conv = sum(acts[n].shape[-1] for n in net.fne_taps if n.startswith("conv"))
  assert conv == 4224
  raw = jax.eval_shape(fne.full_network_embedding, acts)
  assert raw.shape == (2, 12416)
  z = jax.eval_shape(
      lambda a: fne.image_features(a, kind="fne", stats=fne.FNEStats(
          np.zeros(12416, np.float32), np.ones(12416, np.float32), 2)), acts)
  assert z.shape == (2, 12416) and z.dtype == jnp.int8


def test_pooling_averages_conv_maps_and_keeps_fc():
  maps = np.arange(2 * 2 * 3 * 2, dtype=np.float32).reshape(2, 2, 3, 2)
  fc = np.array([[1.0, -2.0], [3.0, 4.0]], np.float32)
  raw = fne.full_network_embedding({"c": maps, "f": fc, "unused": fc},
                                   ("c", "f"))
  np.testing.assert_allclose(raw, np.concatenate(
      [maps.mean(axis=(1, 2)), fc], axis=1))
  with pytest.raises(UserError, match="'missing'"):
    fne.full_network_embedding({"c": maps}, ("c", "missing"))


def test_stats_match_numpy_and_stream_exactly():
  rng = np.random.default_rng(0)
  # A large offset: the one-pass E[x^2] - E[x]^2 would lose the variance.
  x = (1e4 + rng.normal(size=(1001, 7))).astype(np.float32)
  x[:, 3] = 5.0  # A dead feature: std 0, floored.
  stats = fne.fit_fne_stats(x, batch_size=64)
  np.testing.assert_allclose(stats.mean, x.astype(np.float64).mean(0),
                             rtol=1e-7)
  want_std = x.astype(np.float64).std(0, ddof=1)
  keep = np.arange(7) != 3
  np.testing.assert_allclose(stats.std[keep], want_std[keep], rtol=1e-5)
  assert stats.std[3] == np.float32(1e-6) and stats.count == 1001
  one_batch = fne.fit_fne_stats(x, batch_size=5000)
  np.testing.assert_allclose(one_batch.std, stats.std, rtol=1e-6)
  z = np.asarray(fne.standardize(x, stats))
  assert np.isfinite(z).all() and np.all(z[:, 3] == 0)
  with pytest.raises(UserError, match="columns"):
    fne.standardize(x[:, :5], stats)


def test_stats_known_values_and_dict_round_trip():
  # HPAI-BSC/fne's own test: torch.std (ddof=1) of two rows.
  x = np.array([[0.1, 0.2, -0.3, 0.5], [-0.6, 0.5, 0.4, 0.1]], np.float32)
  stats = fne.fit_fne_stats(x)
  np.testing.assert_allclose(stats.mean, [-0.25, 0.35, 0.05, 0.3], rtol=1e-6)
  np.testing.assert_allclose(
      stats.std, [0.49497475, 0.21213203, 0.49497475, 0.28284271], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(fne.standardize(x, stats)),
                             [[0.7071, -0.7071, -0.7071, 0.7071],
                              [-0.7071, 0.7071, 0.7071, -0.7071]], atol=1e-4)
  loaded = fne.FNEStats.from_dict(json.loads(json.dumps(stats.to_dict())))
  np.testing.assert_array_equal(loaded.mean, stats.mean)
  np.testing.assert_array_equal(loaded.std, stats.std)
  assert loaded.count == 2


def test_discretize_thresholds_and_boundaries():
  z = np.array([-1.0, -0.25, -0.2500001, -0.2499, 0.0, 0.15, 0.1500001, 0.149,
                3.0], np.float32)
  got = np.asarray(fne.discretize(z))
  np.testing.assert_array_equal(got, [-1, 0, -1, 0, 0, 0, 1, 0, 1])
  assert got.dtype == np.int8
  # HPAI-BSC/fne's example.
  np.testing.assert_array_equal(
      np.asarray(fne.discretize(np.array([[0.1, 0.2, -0.3, 0.5],
                                          [-0.6, 0.5, 0.4, 0.1]]))),
      [[0, 1, -1, 1], [-1, 1, 1, 0]])


def test_fc7_baseline_is_l2_normalised_fc7():
  fc7 = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]], np.float32)
  acts = {"fc7": fc7, "conv1_1": np.ones((2, 4, 4, 3), np.float32)}
  got = np.asarray(fne.image_features(acts, kind="fc7"))
  np.testing.assert_allclose(got, [[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
  with pytest.raises(UserError, match="statistics"):
    fne.image_features(acts, kind="fne")
  with pytest.raises(UserError, match="fc7"):
    fne.image_features(acts, kind="fc8")


@pytest.fixture(scope="module")
def tiny_net():
  """A 3-conv VGG and random params (drawn in numpy: no init compilation)."""
  net = vgg.VGG(**TINY)
  shapes = jax.eval_shape(net.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32),
      shapes["params"])
  return net, params


def test_extraction_matches_direct_and_cache_is_reused(tiny_net, tmp_path,
                                                      monkeypatch):
  net, params = tiny_net
  images = np.random.default_rng(0).integers(0, 256, (11, 16, 16, 3), np.uint8)
  cache = tmp_path / "cache" / "train.npy"
  raw = fne.extract_features(net, params, images, kind="fne_raw",
                             batch_size=8, cache_path=cache)
  assert raw.shape == (11, 4 + 8 + 8 + 16 + 12)
  acts = net.apply({"params": params}, vgg.preprocess_imagenet(images),
                   capture=True)
  np.testing.assert_allclose(raw, fne.full_network_embedding(
      acts, net.fne_taps), rtol=1e-5, atol=1e-6)
  meta = json.loads((tmp_path / "cache" / "train.npy.json").read_text())
  assert meta["taps"] == list(net.fne_taps)
  assert meta["dims"] == [4, 8, 8, 16, 12]
  assert not [f for f in os.listdir(tmp_path / "cache") if "tmp" in f]

  def no_backbone(*args, **kwargs):
    raise AssertionError("the cache should have been used")

  monkeypatch.setattr(fne, "_run_backbone", no_backbone)
  again = fne.extract_features(net, params, images, kind="fne_raw",
                               batch_size=8, cache_path=cache)
  np.testing.assert_array_equal(again, raw)
  stats = fne.fit_fne_stats(raw)
  z = fne.extract_features(net, params, images, kind="fne", stats=stats,
                           batch_size=8, cache_path=cache)
  np.testing.assert_array_equal(
      z, fne.discretize(fne.standardize(raw, stats)))
  fc7 = fne.extract_features(net, params, images, kind="fc7", batch_size=8,
                             cache_path=cache)
  np.testing.assert_allclose(np.linalg.norm(fc7, axis=1), 1.0, rtol=1e-5)
  # Other images or params: the cache does not apply.
  with pytest.raises(AssertionError, match="cache"):
    fne.extract_features(net, params, images[::-1], batch_size=8,
                         cache_path=cache)
  other = jax.tree.map(lambda p: p + 1.0, params)
  with pytest.raises(AssertionError, match="cache"):
    fne.extract_features(net, other, images, batch_size=8, cache_path=cache)


def test_extraction_needs_stats_before_running(tiny_net):
  net, params = tiny_net
  images = np.zeros((2, 16, 16, 3), np.uint8)
  with pytest.raises(UserError, match="fit_fne_stats"):
    fne.extract_features(net, params, images, kind="fne")
  with pytest.raises(UserError, match="kind"):
    fne.extract_features(net, params, images, kind="pixels")

"""Test set-up: 8 simulated CPU devices so sharded code paths really shard.

The flag must be set before jax is first imported, hence here. Many tests
train the same tiny programs (and the CLI tests' subprocesses inherit the
environment), so a persistent compilation cache shared by the run saves
most of the suite's compile time; it changes no numbers.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache",
    "jax-test-compilation"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

import gzip
import struct

import numpy as np
import pytest


def write_idx(path, array: np.ndarray) -> None:
  """MNIST-format IDX file (gzip when the name ends in .gz)."""
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
  header += struct.pack(f">{array.ndim}I", *array.shape)
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def make_separable_images(num: int, num_classes: int, seed: int):
  """28x28 digits-like images whose class is a bright square's position."""
  rng = np.random.default_rng(seed)
  labels = np.arange(num) % num_classes
  images = rng.integers(0, 40, size=(num, 28, 28), dtype=np.uint8)
  for i, c in enumerate(labels):
    r, q = divmod(int(c), 2)
    images[i, 4 + 10 * r:12 + 10 * r, 4 + 12 * q:12 + 12 * q] = 220
  return images, labels


def make_grating_images(num: int, num_classes: int, seed: int,
                        noise: float = 60.0):
  """28x28 noisy gratings whose class is their orientation (random phase).

  Unlike make_separable_images, an untrained net does not already rank
  them by class (P@1 ~0.45 at 4 classes), so training has something to
  learn and a broken loss shows.
  """
  rng = np.random.default_rng(seed)
  labels = np.arange(num) % num_classes
  yy, xx = np.mgrid[:28, :28]
  images = np.empty((num, 28, 28), np.uint8)
  for i, c in enumerate(labels):
    theta = np.pi * c / num_classes + rng.normal(0, 0.05)
    wave = np.sin(2 * np.pi / 7 * (np.cos(theta) * xx + np.sin(theta) * yy)
                  + rng.uniform(0, 2 * np.pi))
    images[i] = np.clip(128 + 50 * wave + rng.normal(0, noise, (28, 28)),
                        0, 255)
  return images, labels


@pytest.fixture(scope="session")
def grating_idx_dir(tmp_path_factory):
  """An `idx:DIR` dataset of gratings: 4 classes, 256 train, 64 test."""
  root = tmp_path_factory.mktemp("gratings")
  for prefix, num, seed in (("train", 256, 0), ("t10k", 64, 1)):
    images, labels = make_grating_images(num, 4, seed)
    write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
  return root


@pytest.fixture(scope="session")
def tiny_idx_dir(tmp_path_factory):
  """An `idx:DIR` dataset: 4 classes, 64 train and 32 test images."""
  root = tmp_path_factory.mktemp("tiny_idx")
  for prefix, num, seed in (("train", 64, 0), ("t10k", 32, 1)):
    images, labels = make_separable_images(num, 4, seed)
    write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
  return root


@pytest.fixture(scope="session")
def tiny_run(tiny_idx_dir, tmp_path_factory):
  """A finished 6-step run of the tiny config (checkpoints at steps 3 and
  6), its evaluation, and the config; shared, so copy the workdir before
  changing it."""
  from metricjax import evaluate, train  # after XLA_FLAGS
  from test_train import tiny_config
  config = tiny_config(tiny_idx_dir, augment=True, log_every=1)
  workdir = str(tmp_path_factory.mktemp("tiny_run") / "run")
  train.train(config, workdir)
  return workdir, evaluate.evaluate(workdir), config


@pytest.fixture(scope="session")
def tiny_workdir(tiny_run):
  """tiny_run's workdir, for tests that only read it (search, export)."""
  return tiny_run[0]


def load_config(name: str, arg: str | None = None):
  """configs/<name>.py's get_config(arg), loaded as the CLI loads it."""
  from metricjax.config_utils import load_config as load  # after XLA_FLAGS
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs",
                      f"{name}.py")
  return load(path + (f":{arg}" if arg else ""))


def hue_images(n: int, seed: int, name: str = "hues"):
  """16x16 RGB ArrayDataset, 4 classes, each its own dominant channel
  (the caption demo's captions then name a colour per class)."""
  from metricjax.data.dataset import ArrayDataset
  from metricjax.data.sources import CIFAR10_CLASSES
  rng = np.random.default_rng(seed)
  labels = (np.arange(n) % 4).astype(np.int32)
  images = rng.integers(0, 80, (n, 16, 16, 3), np.uint8)
  for i, c in enumerate(labels):
    images[i, ..., c % 3] += 120
  return ArrayDataset(images, labels, 10, CIFAR10_CLASSES, name, "x", "x")


def write_random_vgg(path, arch: dict, image_size: int = 16) -> None:
  """A backbone .npz of a VGG of `arch` with random weights (drawn in
  numpy: no init compilation)."""
  import jax
  from metricjax.models import convert
  from metricjax.models import vgg
  shapes = jax.eval_shape(
      vgg.VGG(**arch).init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(
      np.float32), shapes["params"])
  convert.save_params_npz(path, params, dict(
      arch="vgg", model=arch, image_size=image_size, preprocess="torch"))

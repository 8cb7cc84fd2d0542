"""Test set-up: 8 simulated CPU devices so sharded code paths really shard.

The flag must be set before jax is first imported, hence here.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")

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


@pytest.fixture(scope="session")
def tiny_idx_dir(tmp_path_factory):
  """An `idx:DIR` dataset: 4 classes, 64 train and 32 test images."""
  root = tmp_path_factory.mktemp("tiny_idx")
  for prefix, num, seed in (("train", 64, 0), ("t10k", 32, 1)):
    images, labels = make_separable_images(num, 4, seed)
    write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
  return root


def load_config(name: str, arg: str | None = None):
  """configs/<name>.py's get_config(arg), as the CLI would load it."""
  import importlib.util
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.fixture(scope="session")
def tiny_run(tiny_idx_dir, tmp_path_factory):
  """A workdir trained for a few steps on `tiny_idx_dir` (search, export)."""
  from metricjax import train
  from test_train import tiny_config
  workdir = tmp_path_factory.mktemp("tiny_run")
  train.train(tiny_config(tiny_idx_dir), str(workdir))
  return workdir

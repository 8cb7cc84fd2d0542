"""Test set-up: 8 simulated CPU devices so sharded code paths really shard.

The flag must be set before jax is first imported, hence here. Many tests
train the same tiny programs (and the CLI tests' subprocesses inherit the
environment), so a persistent compilation cache shared by the run saves
most of the suite's compile time; it changes no numbers. The suite's
programs are tiny and compiling is most of its time, so it compiles at
XLA's cheapest backend optimisation level (--xla_backend_optimization_level
=0: about 40% less compile CPU); runs that must match bit for bit compile
alike, and the preemption tests (tests/e2e/test_reliability.py) run their
training processes at the default level users run.
"""

import os

from helpers import xla_flags  # Imports no jax.

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                           + xla_flags(8))
# The suite computes on the CPU. With the aot extra installed, jax would
# otherwise also start libtpu (taking its machine-wide lock) and try CUDA in
# every process; the aot tests compile for those targets all the same.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache",
    "jax-test-compilation"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

import pytest

from helpers import make_grating_images
from helpers import make_separable_images
from helpers import tiny_config
from helpers import write_idx


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
  config = tiny_config(tiny_idx_dir, augment=True, log_every=1)
  workdir = str(tmp_path_factory.mktemp("tiny_run") / "run")
  train.train(config, workdir)
  return workdir, evaluate.evaluate(workdir), config


@pytest.fixture(scope="session")
def tiny_workdir(tiny_run):
  """tiny_run's workdir, for tests that only read it (search, export)."""
  return tiny_run[0]

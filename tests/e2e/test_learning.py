"""Each task learns: a short run on data an untrained model does not solve
reaches a clear target, and the same run with the loss's sign flipped does
not (so the targets can fail)."""

import functools

import jax
import numpy as np
import pytest

from metricjax import evaluate as evaluate_lib
from metricjax import losses
from metricjax import restore as restore_lib
from metricjax import train as train_lib
from metricjax.data import caption_demo
from helpers import hue_images
from helpers import load_config
from helpers import write_random_vgg
from helpers import tiny_config


@pytest.fixture
def flipped(monkeypatch):
  """Registers "<name>_flipped": the registered loss times -1."""
  def register(name):
    loss = losses.REGISTRY[name]

    @functools.wraps(loss.fn)  # Same hyper-parameters.
    def flipped_fn(*args, **kwargs):
      return -loss.fn(*args, **kwargs)
    monkeypatch.setitem(losses.REGISTRY, f"{name}_flipped",
                        loss._replace(fn=flipped_fn))
    return f"{name}_flipped"
  return register


def _retrieval_p1(data_dir, workdir, loss_name, compute_dtype="float32"):
  config = tiny_config(data_dir, total_steps=40, warmup_steps=5, log_every=40,
                       checkpoint_every=40, compute_dtype=compute_dtype)
  config.loss.name = loss_name
  config.eval.batch_size = 64
  train_lib.train(config, workdir)
  return evaluate_lib.evaluate(workdir)["metrics"]["precision_at_1"]


def test_retrieval_learns(grating_idx_dir, tmp_path, flipped):
  assert _retrieval_p1(grating_idx_dir, str(tmp_path / "ms"), "ms") >= 0.95
  broken = _retrieval_p1(grating_idx_dir, str(tmp_path / "flipped"),
                         flipped("ms"))
  assert broken < 0.6


def test_bfloat16_learns_like_float32(grating_idx_dir, tmp_path):
  workdir = str(tmp_path / "bf16")
  p1 = _retrieval_p1(grating_idx_dir, workdir, "ms", "bfloat16")
  # float32 reaches >= 0.95 on the same run (test_retrieval_learns).
  assert p1 >= 0.92
  state = restore_lib.restore(workdir).state
  dtypes = {x.dtype for x in jax.tree.leaves((state.params, state.opt_state,
                                              state.batch_stats))
            if hasattr(x, "dtype") and x.dtype.kind == "f"}
  assert dtypes == {np.dtype("float32")}


@pytest.fixture(scope="module")
def caption_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("vse_learn")
  caption_demo.write_caption_demo(root / "caption_demo", hue_images(160, 0),
                                  hue_images(32, 1), sizes=(128, 32, 32))
  write_random_vgg(root / "vgg.npz", dict(blocks=((8,), (16, 16)),
                                          fc_dims=(32, 16), num_classes=4,
                                          pool_size=(2, 2)))
  return root


def _vse_rsum(root, workdir, loss_name):
  config = load_config("fne_vse", f"dataset=caption_demo,backbone=vgg,"
                       f"weights={root / 'vgg.npz'},embed_dim=32")
  config.loss.name = loss_name
  config.model.word_dim = 16
  config.vocab_min_count = 1
  config.batch_size = 32
  config.total_steps = 150
  config.learning_rate = 2e-3
  config.log_every = config.eval_every = config.checkpoint_every = 150
  config.eval.batch_size = 32
  config.backbone.batch_size = 32
  config.features_cache_dir = str(root / "features")
  train_lib.train(config, workdir)
  return evaluate_lib.evaluate(workdir)["metrics"]["rsum"]


def test_vse_learns(caption_data, tmp_path, monkeypatch, flipped):
  monkeypatch.setenv("METRICJAX_DATA_DIR", str(caption_data))
  # 32 test images, 160 captions: random rankings give an rsum of ~96.
  learned = _vse_rsum(caption_data, str(tmp_path / "vse"), "vse")
  broken = _vse_rsum(caption_data, str(tmp_path / "flipped"), flipped("vse"))
  assert learned > 200
  assert broken < 100

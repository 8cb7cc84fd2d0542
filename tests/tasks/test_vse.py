"""The "vse" task end to end (train -> select -> evaluate -> resume) on a tiny
caption demo with a tiny random VGG backbone, and the CIFAR VGG export."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from helpers import hue_images
from helpers import load_config
from helpers import write_random_vgg
from metricjax import evaluate as evaluate_lib
from metricjax import export
from metricjax import fne
from metricjax import models
from metricjax import restore as restore_lib
from metricjax import train as train_lib
from metricjax.data import caption_demo
from metricjax.errors import UserError
from metricjax.models import vgg

TINY_VGG = dict(blocks=((4,), (8, 8)), fc_dims=(16, 12), num_classes=5,
                pool_size=(2, 2))
CROSSMODAL_KEYS = {"i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr", "t2i_r1",
                   "t2i_r5", "t2i_r10", "t2i_medr", "rsum"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  """$METRICJAX_DATA_DIR with caption_demo/ (16/8/8 images) + a VGG .npz."""
  root = tmp_path_factory.mktemp("vse_data")
  caption_demo.write_caption_demo(root / "caption_demo", hue_images(24, 0),
                                  hue_images(8, 1), sizes=(16, 8, 8))
  write_random_vgg(root / "tiny_vgg.npz", TINY_VGG)
  return root


def vse_config(root, arg="", **overrides):
  config = load_config("fne_vse", f"dataset=caption_demo,backbone=vgg,"
                       f"weights={root / 'tiny_vgg.npz'},embed_dim=16" +
                       (f",{arg}" if arg else ""))
  config.model.word_dim = 8
  config.vocab_min_count = 1
  config.batch_size = 8
  config.total_steps = 4
  config.log_every = config.eval_every = 2
  config.eval.batch_size = 8
  config.backbone.batch_size = 8
  config.features_cache_dir = str(root / "features")
  config.update(overrides)
  return config


@pytest.mark.parametrize("arg", ["image_features=fne,loss=sum",
                                 "image_features=fc7,loss=max"])
def test_train_select_evaluate(demo, tmp_path, monkeypatch, arg):
  monkeypatch.setenv("METRICJAX_DATA_DIR", str(demo))
  config = vse_config(demo, arg)
  workdir = str(tmp_path / "run")
  train_lib.train(config, workdir)
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [2, 4]
  assert all(np.isfinite(r["loss"]) and 0 <= r["val_rsum"] <= 600 for r in rows)
  # Every validated step has a checkpoint: model selection can pick any.
  best = restore_lib.best_step(workdir, "val_rsum")
  assert best == max(rows, key=lambda r: (r["val_rsum"], -r["step"]))["step"]

  result = evaluate_lib.evaluate(workdir, step=best)
  saved = json.load(open(os.path.join(workdir, "eval", f"step_{best}.json")))
  assert set(saved["metrics"]) == CROSSMODAL_KEYS
  assert saved["dataset"]["split_sizes"] == {"train": 16, "test": 8}
  assert saved["dataset"]["image_features"] == config.image_features
  dim = 4 + 8 + 8 + 16 + 12 if config.image_features == "fne" else 12
  assert saved["dataset"]["feature_dim"] == dim
  assert saved["num_params"] > 0 and "rsum" in evaluate_lib.format_table(result)

  # Vocabulary and FNE statistics come from the checkpoint: evaluation
  # needs no training data.
  moved = tmp_path / "train_images"
  shutil.move(demo / "caption_demo" / "images" / "train", moved)
  try:
    again = evaluate_lib.evaluate(workdir, step=best)
  finally:
    shutil.move(moved, demo / "caption_demo" / "images" / "train")
  assert again["metrics"] == result["metrics"]


def test_meta_and_resume(demo, tmp_path, monkeypatch):
  monkeypatch.setenv("METRICJAX_DATA_DIR", str(demo))
  config = vse_config(demo, "image_features=fne")
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train_lib.train(config, straight)
  meta = restore_lib.restore(straight).meta
  train = json.load(open(demo / "caption_demo" / "dataset_caption_demo.json"))
  train_words = {w for e in train["images"] if e["split"] == "train"
                 for s in e["sentences"] for w in s["tokens"]}
  assert set(meta.vocabulary.words[2:]) == train_words
  assert meta.fne_stats.count == 16 and meta.fne_stats.mean.shape == (48,)
  assert meta.backbone["taps"] == list(vgg.VGG(**TINY_VGG).fne_taps)

  # Killed after step 2's checkpoint and resumed, it matches the
  # uninterrupted run.
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "4"))
  train_lib.train(config, resumed)
  a, b = restore_lib.restore(straight), restore_lib.restore(resumed)
  assert a.step == b.step == 4
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5,
                                                       atol=1e-6),
               a.state.params, b.state.params)
  # Another image feature is another run.
  with pytest.raises(UserError, match="image_features"):
    train_lib.train(vse_config(demo, "image_features=fc7"), resumed)


def test_missing_weights_say_how_to_convert(demo, tmp_path, monkeypatch):
  monkeypatch.setenv("METRICJAX_DATA_DIR", str(demo))
  config = vse_config(demo)
  config.backbone.weights = str(tmp_path / "vgg16.npz")
  with pytest.raises(UserError, match="convert_vgg16.py --torch"):
    train_lib.train(config, str(tmp_path / "run"))
  config = vse_config(demo, "backbone=vgg16")
  with pytest.raises(UserError, match="not 'vgg16'"):
    train_lib.train(config, str(tmp_path / "run"))


def test_cifar_vgg_config_trains_and_exports_a_backbone(tiny_idx_dir,
                                                        tmp_path):
  config = load_config("cifar_vgg")
  config.dataset = f"idx:{tiny_idx_dir}"  # 28x28 grayscale, 4 classes.
  config.model.blocks = ((4,), (8,), (8,))
  config.model.fc_dims = (16, 16)
  config.batch_size = 16
  config.total_steps = 2
  config.warmup_steps = 1
  config.eval.batch_size = 16
  workdir = str(tmp_path / "run")
  train_lib.train(config, workdir)
  assert 0 <= evaluate_lib.evaluate(workdir)["metrics"]["accuracy"] <= 1

  out = tmp_path / "vgg.npz"
  meta = export.export_trained_vgg(workdir, str(out))
  assert meta["image_size"] == 28 and meta["num_classes"] == 4
  model, variables = models.load_backbone(out)
  params = variables["params"]
  images = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), np.uint8)
  raw = fne.extract_features(model, params, images, batch_size=8)
  assert raw.shape == (3, 4 + 8 + 8 + 16 + 16)

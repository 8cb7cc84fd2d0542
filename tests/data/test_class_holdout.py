"""Validation on classes held out of the photo benchmarks' training classes
(data/dataset.py hold_out_classes, config.data.val_classes), on the
replicas of tests/replicas.py."""

import json
import os

import numpy as np
import pytest

import replicas
from metricjax import evaluate as evaluate_lib
from metricjax import restore as restore_lib
from metricjax import train as train_lib
from metricjax.config_utils import load_config
from metricjax.data import load_dataset
from metricjax.data import hold_out_classes
from metricjax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))


@pytest.fixture(name="cub_dir", scope="module")
def _cub_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("data")
  replicas.make_cub(str(directory))
  return str(directory)


@pytest.mark.parametrize("name, make", [("cub", replicas.make_cub),
                                        ("sop", replicas.make_sop),
                                        ("inshop", replicas.make_inshop)])
def test_classes_disjoint_and_complete(tmp_path, name, make):
  make(str(tmp_path))
  ds = load_dataset(name, "train", data_dir=str(tmp_path))
  rest, held = hold_out_classes(ds, 0.25)
  assert held.num_classes == max(2, round(0.25 * ds.num_classes))
  assert set(rest.class_names).isdisjoint(held.class_names)
  assert sorted(rest.class_names + held.class_names) == sorted(ds.class_names)
  # Every image of a held-out class leaves training, none other does.
  assert len(rest) + len(held) == len(ds)
  assert sorted(np.concatenate([rest.ids, held.ids])) == sorted(ds.ids)
  name_of = dict(zip(ds.ids, np.array(ds.class_names)[ds.labels]))
  for part in (rest, held):
    # Relabelled, each image keeps its class.
    assert list(np.array(part.class_names)[part.labels]) == [
        name_of[i] for i in part.ids]
    assert part.labels.min() == 0 and part.labels.max() == part.num_classes - 1


def test_deterministic_and_sized(cub_dir):
  ds = load_dataset("cub", "train", data_dir=cub_dir)
  first = hold_out_classes(ds, 0.25)[1].class_names
  assert hold_out_classes(ds, 0.25)[1].class_names == first
  assert len(first) == 25
  assert hold_out_classes(ds, 0.25, seed=1)[1].class_names != first
  assert hold_out_classes(ds, 10)[1].num_classes == 10
  assert hold_out_classes(ds, 10.0)[0].num_classes == 90
  for bad in (1.5, 1, 99, 0, -0.2):
    with pytest.raises(UserError, match="val_classes"):
      hold_out_classes(ds, bad)


def _config(**data):
  config = load_config(os.path.join(REPO, "configs", "dml_benchmark.py")
                       + ":dataset=cub,backbone=compact,image_size=32,"
                       "embedding_dim=16")
  config.model.widths = (8, 8, 16, 16)
  config.update(dict(total_steps=4, batch_size=16, log_every=2,
                     checkpoint_every=2, keep_checkpoints=3, warmup_steps=1,
                     eval_every=2))
  config.data.update(dict(num_threads=2, prefetch=16, **data))
  config.eval.update(dict(batch_size=64, clustering=False))
  return config


def test_bad_settings(cub_dir, monkeypatch, tmp_path):
  monkeypatch.setenv("METRICJAX_DATA_DIR", cub_dir)
  with pytest.raises(UserError, match="set config.data.val_classes"):
    train_lib.train(_config(val_classes=0.0), str(tmp_path / "a"))
  config = _config()
  config.val_size = 20
  with pytest.raises(UserError, match="config.val_size=0"):
    train_lib.train(config, str(tmp_path / "b"))


@pytest.mark.slow  # Compiles a train step and an embedding step (~30 s).
def test_train_validates_on_held_out_classes(cub_dir, monkeypatch, tmp_path):
  monkeypatch.setenv("METRICJAX_DATA_DIR", cub_dir)
  workdir = str(tmp_path / "run")
  train_lib.train(_config(), workdir)
  rows = [json.loads(line) for line in open(os.path.join(workdir,
                                                        "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [2, 4]
  for r in rows:
    assert 0.0 <= r["val_map_at_r"] <= 1.0 and "val_recall_at_8" in r
  meta = restore_lib.restore(workdir).meta
  train = load_dataset("cub", "train", data_dir=cub_dir)
  held = hold_out_classes(train, 0.25)[1]
  assert (meta.num_classes, meta.val_classes) == (75, 25)
  assert meta.size == len(train) - len(held) and meta.val_size == len(held)
  assert set(meta.class_names).isdisjoint(held.class_names)
  result = evaluate_lib.evaluate(
      workdir, restore_lib.best_step(workdir, "val_map_at_r"))
  sizes = result["dataset"]["split_sizes"]
  assert sizes["train (held out for validation: 25 classes)"] == len(held)
  assert sizes["test"] == len(load_dataset("cub", "test", data_dir=cub_dir))

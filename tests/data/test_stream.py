"""The streaming input path: host samplers, training from packed
ArrayRecord splits that resumes exactly, and the placement that chooses it."""

import json
import os
import shutil

import numpy as np

from metricjax import evaluate as evaluate_lib
from metricjax import train as train_lib
from metricjax.data import load_dataset
from metricjax.data import stream
from helpers import pack_idx_split
from helpers import tiny_config


def test_host_samplers_are_valid_and_deterministic():
  labels = np.repeat(np.arange(5), [9, 3, 7, 1, 0]).astype(np.int32)
  balanced = stream.make_index_sampler("balanced", labels, 5, batch_size=12,
                                       samples_per_class=4)
  rows = balanced(np.random.default_rng((0, 7)))
  groups = labels[rows].reshape(3, 4)
  assert (groups == groups[:, :1]).all()  # P classes x K, grouped.
  assert len(set(groups[:, 0])) == 3 and 4 not in groups  # Never empty ones.
  np.testing.assert_array_equal(rows, balanced(np.random.default_rng((0, 7))))
  assert not np.array_equal(rows, balanced(np.random.default_rng((0, 8))))

  uniform = stream.make_index_sampler("uniform", labels, 5, batch_size=10)
  assert len(set(uniform(np.random.default_rng(0)))) == 10

  triplets = stream.make_index_sampler("triplets", labels, 5, batch_size=50)
  a, p, n = triplets(np.random.default_rng(1)).reshape(3, 50)
  assert (labels[a] == labels[p]).all() and (a != p).all()
  assert (labels[a] != labels[n]).all() and not (labels[a] == 3).any()


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f]


def test_streaming_training_resumes_exactly(tiny_idx_dir, tmp_path):
  for split in ("train", "test"):
    pack_idx_split(tiny_idx_dir, tmp_path / "data", split)
  config = tiny_config(tiny_idx_dir, augment=True, log_every=1,
                       eval_every=3, val_size=8)
  config.dataset = f"packed:{tmp_path / 'data'}"
  config.data.placement = "stream"
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train_lib.train(config, straight)
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "6"))
  train_lib.train(config, resumed)
  assert _losses(straight) == _losses(resumed) and len(_losses(straight)) == 6
  a, b = evaluate_lib.evaluate(straight), evaluate_lib.evaluate(resumed)
  assert a["metrics"] == b["metrics"]
  assert a["dataset"]["split_sizes"]["train"] == 56


def test_auto_placement_streams_what_exceeds_the_budget(tiny_idx_dir,
                                                         tmp_path):
  from metricjax.tasks import retrieval
  config = tiny_config(tiny_idx_dir)
  ds = load_dataset(f"idx:{tiny_idx_dir}", "train")  # 64 x 784 bytes.
  config.data.device_budget_mb = 0.05
  assert retrieval.placement(config, ds) == "device"
  config.data.device_budget_mb = 0.04
  assert retrieval.placement(config, ds) == "stream"
  # The stream path trains too, from an in-memory split.
  config.data.placement = "stream"
  train_lib.train(config, str(tmp_path))
  assert len(_losses(str(tmp_path))) == 3

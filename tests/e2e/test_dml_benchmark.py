"""configs/dml_benchmark.py end to end on the CUB-200-2011 replica: the
train CLI streams the photo pipeline, the evaluate CLI writes the
benchmark's recall convention and the clustering metrics."""

import json
import os
import subprocess
import sys

import pytest

import replicas

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))


@pytest.mark.slow  # Compiles a train step and an eval step (~1 min).
def test_train_and_evaluate_cub_replica(tmp_path):
  replicas.make_cub(str(tmp_path / "data"))
  env = dict(os.environ, METRICJAX_DATA_DIR=str(tmp_path / "data"))
  workdir = tmp_path / "run"
  run = lambda *args: subprocess.run(
      [sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True,
      text=True, timeout=600)
  train = run("metricjax.train",
              "--config=configs/dml_benchmark.py:dataset=cub,"
              "backbone=compact,image_size=32,embedding_dim=32",
              f"--workdir={workdir}", "--config.total_steps=4",
              "--config.batch_size=32", "--config.log_every=2",
              "--config.checkpoint_every=4", "--config.warmup_steps=1",
              "--config.eval.batch_size=64")
  assert train.returncode == 0, train.stderr[-3000:]
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [2, 4]
  evaluate = run("metricjax.evaluate", f"--workdir={workdir}")
  assert evaluate.returncode == 0, evaluate.stderr[-3000:]
  result = json.load(open(workdir / "eval" / "step_4.json"))
  metrics = result["metrics"]
  for key in ("recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8",
              "precision_at_1", "r_precision", "map_at_r", "nmi", "ami"):
    assert 0.0 <= metrics[key] <= 1.0, key
  assert "recall_at_10" not in metrics and metrics["num_skipped_corrupt"] == 0
  assert metrics["recall_at_1"] <= metrics["recall_at_8"]
  assert result["dataset"]["split_sizes"] == {"train": 233, "test": 233}

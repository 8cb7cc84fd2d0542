"""A ResNet-18 from a weights .npz, trained on the CUB-200-2011 replica
through the CLIs: trains, resumes from its checkpoint, evaluates."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import replicas
from metricjax import restore as restore_lib
from metricjax.models import resnet
from metricjax.models import weights

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))


def _random_resnet18_npz(path):
  # What tools/convert_backbone.py writes, from a random trunk (no torch).
  x = np.zeros((1, 32, 32, 3), np.float32)
  variables = resnet.resnet18().init(jax.random.key(3), x, train=False)
  flat = {"/".join(k.key for k in keys): np.asarray(leaf)
          for tree in variables.values()
          for keys, leaf in jax.tree_util.tree_leaves_with_path(tree)}
  weights.save_npz(path, flat, {"arch": "resnet18", "model": {}})
  return flat


@pytest.mark.slow  # Compiles a ResNet-18 train step and an eval step.
def test_resnet18_trains_resumes_and_evaluates(tmp_path):
  replicas.make_cub(str(tmp_path / "data"))
  flat = _random_resnet18_npz(tmp_path / "r18.npz")
  env = dict(os.environ, METRICJAX_DATA_DIR=str(tmp_path / "data"),
             PYTHONPATH=REPO)
  workdir = tmp_path / "run"
  run = lambda *args: subprocess.run(
      [sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True,
      text=True, timeout=900)
  # Both runs are one config, so the second loads the first's compiled
  # step from the persistent cache (another total_steps is another
  # learning-rate schedule, another program: minutes more for a ResNet).
  train = lambda: run(
      "metricjax.train",
      "--config=configs/dml_benchmark.py:dataset=cub,backbone=resnet18,"
      f"protocol=proxy_anchor,image_size=32,weights={tmp_path / 'r18.npz'}",
      f"--workdir={workdir}", "--config.total_steps=3",
      "--config.batch_size=16", "--config.log_every=1",
      "--config.checkpoint_every=2", "--config.warmup_steps=1",
      "--config.eval.batch_size=64")
  first = train()
  assert first.returncode == 0, first.stderr[-3000:]
  # Killed after step 2's checkpoint: step 3's is gone; step 1's row is
  # marked, so a rerun that started over (rewriting the log) would show.
  shutil.rmtree(workdir / "checkpoints" / "3")
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  rows[0]["marker"] = True
  (workdir / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows))
  second = train()  # Resumes from step 2.
  assert second.returncode == 0, second.stderr[-3000:]
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2, 3]
  assert rows[0].get("marker") and "marker" not in rows[2]
  assert all(np.isfinite(r["loss"]) for r in rows)
  evaluate = run("metricjax.evaluate", f"--workdir={workdir}")
  assert evaluate.returncode == 0, evaluate.stderr[-3000:]
  result = json.load(open(workdir / "eval" / "step_3.json"))
  assert 0.0 <= result["metrics"]["recall_at_1"] <= 1.0
  # The trunk started from the file: frozen BN statistics are the file's.
  state = restore_lib.restore(str(workdir)).state
  np.testing.assert_array_equal(
      np.asarray(state.batch_stats["trunk"]["bn1"]["var"]), flat["bn1/var"])
  np.testing.assert_array_equal(
      np.asarray(state.batch_stats["trunk"]["bn1"]["scale"]),
      flat["bn1/scale"])

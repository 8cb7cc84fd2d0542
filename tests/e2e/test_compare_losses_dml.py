"""experiments/compare_losses.py on a photo benchmark: configs/
dml_benchmark.py's Reality Check protocol on the CUB-200-2011 replica,
validated on held-out training classes, at --scale=smoke."""

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO
import replicas


def _run(tmp_path, *args):
  env = dict(os.environ, METRICJAX_DATA_DIR=str(tmp_path / "data"),
             PYTHONPATH=REPO)
  return subprocess.run(
      [sys.executable, "experiments/compare_losses.py", "--dataset=cub",
       f"--workdir={tmp_path / 'runs'}", f"--out={tmp_path / 'out'}", *args],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
      stdin=subprocess.DEVNULL)


@pytest.mark.slow  # Two tiny runs: two train steps and embeddings compiled.
def test_reality_check_smoke_on_cub_replica(tmp_path):
  replicas.make_cub(str(tmp_path / "data"))
  proc = _run(tmp_path, "--scale=smoke")
  assert proc.returncode == 0, proc.stderr[-3000:]
  page = json.loads((tmp_path / "out" / "results.json").read_text())
  assert page["protocol"] == "reality_check" and page["dataset"] == "cub"
  assert page["settings"]["optimizer"] == "rmsprop"
  assert [r["loss"] for r in page["rows"]] == ["contrastive", "ms"]
  for row in page["rows"]:
    run, = row["runs"]
    # The paper's CUB optimum, validation on 25 of the 100 training classes.
    assert row["trials"][0]["source"] == "Reality Check optimum"
    sizes = run["dataset"]["split_sizes"]
    assert sizes["train (held out for validation: 25 classes)"] > 0
    assert "recall_at_8" in run["metrics"] and "recall_at_10" not in run[
        "metrics"]
    assert [s for s, _ in run["curves"]["val_map_at_r"]] == [2, 4]
    # Only the evaluated checkpoint is kept.
    kept = os.listdir(os.path.join(run["workdir"], "checkpoints"))
    assert kept == [str(run["step"])]
  table = (tmp_path / "out" / "README.md").read_text()
  assert "| contrastive | pos_margin=-0.2, neg_margin=0.3841" in table
  assert "| ms |" in table and "25% of the training classes" in table
  # The page is a function of results.json alone.
  (tmp_path / "out" / "README.md").unlink()
  again = _run(tmp_path, "--scale=smoke", "--report_only")
  assert again.returncode == 0, again.stderr[-3000:]
  assert (tmp_path / "out" / "README.md").read_text() == table


def test_full_scale_asks_for_weights(tmp_path):
  proc = _run(tmp_path, "--scale=full")
  assert proc.returncode == 2
  assert "--weights=resnet50.npz" in proc.stderr
  cpu = _run(tmp_path, "--scale=cpu")
  assert cpu.returncode == 2 and "photo benchmarks have smoke, full" in \
      cpu.stderr

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


# The full scale's rows and trials on CUB, each built into its config and
# validated; no training. In a subprocess: the runner defines absl flags.
_FULL_ROWS = r"""
import importlib.util, json, sys
from absl import flags
spec = importlib.util.spec_from_file_location(
    "compare_losses", "experiments/compare_losses.py")
cl = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cl)
from metricjax import config_check, study
flags.FLAGS(["compare_losses", "--dataset=cub", "--scale=full"])
scale = dict(cl.DML_SCALES["full"])
for key in ("steps", "eval_every"):
  scale[key] = study.per_dataset(scale[key], "cub")
out = {}
for row in scale["losses"] + sys.argv[1:]:
  trial, = cl._dml_trials(row, "cub")[:scale["trials"]]
  config = cl._dml_config(scale, "cub", row, trial, 0)
  config_check.validate(config)
  out[row] = dict(trial=trial, loss=config.loss.name,
                  miner=config.loss.miner, kwargs=dict(config.loss.kwargs))
print(json.dumps(out))
"""


def test_full_scale_rows_with_their_miner_build_valid_configs():
  proc = subprocess.run(
      [sys.executable, "-c", _FULL_ROWS,
       "ms+multi_similarity_miner:epsilon=0.2",
       "contrastive+multi_similarity_miner"],
      cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
      text=True, timeout=120, stdin=subprocess.DEVNULL)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.loads(proc.stdout.splitlines()[-1])
  # The paper's "MS + miner" row at its CUB optimum (powerful-benchmarker
  # 222790a docs/papers/mlrc.md): the miner's epsilon in config.loss.miner.
  mined = rows["ms+multi_similarity_miner"]
  assert mined["trial"]["source"] == "Reality Check optimum"
  assert mined["loss"] == "ms"
  assert mined["kwargs"] == dict(alpha=17.97, beta=75.66, base=0.77)
  assert mined["miner"] == dict(name="multi_similarity", epsilon=0.39)
  # Plain MS stays without a miner, at its own optimum.
  plain = rows["ms"]
  assert plain["miner"] is None and plain["kwargs"]["epsilon"] is None
  assert plain["kwargs"]["alpha"] == 0.01
  # The row's own miner options win over the optimum's.
  assert rows["ms+multi_similarity_miner:epsilon=0.2"]["miner"] == dict(
      name="multi_similarity", epsilon=0.2)
  # A miner the paper did not run: the loss's optimum, labelled so.
  other = rows["contrastive+multi_similarity_miner"]
  assert other["miner"] == dict(name="multi_similarity")
  assert "found without a miner" in other["trial"]["source"]

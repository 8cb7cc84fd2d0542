"""Multi-process training and evaluation on this machine: 2 processes x 4
simulated CPU devices (gloo collectives) against 1 process x 8 devices."""

import ast
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from metricjax import evaluate as evaluate_lib
from metricjax import train as train_lib
from helpers import load_config
from helpers import REPO
from helpers import xla_flags

STEPS = 20
OVERRIDES = {"model.widths": "(8,16,16,16)", "model.embedding_dim": "16",
             "batch_size": "16", "samples_per_class": "4",
             "total_steps": str(STEPS), "warmup_steps": "2", "log_every": "1",
             "checkpoint_every": "10", "eval.batch_size": "32"}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(module, args, *, processes=2, timeout=300, extra=None):
  """Runs `python -m module args` as a job of `processes` processes."""
  port = _free_port()
  env = dict(os.environ,
             XLA_FLAGS=xla_flags(4))
  procs = []
  for i in range(processes):
    per_process = (extra or {}).get(i, [])
    procs.append(subprocess.Popen(
        [sys.executable, "-m", module, *args, *per_process, "--distributed",
         f"--coordinator_address=127.0.0.1:{port}",
         f"--num_processes={processes}", f"--process_id={i}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True))
  results = []
  for p in procs:
    out, err = p.communicate(timeout=timeout)
    results.append((p.returncode, out, err))
  return results


def _train_args(data_dir, workdir):
  return ([f"--config={REPO}/configs/compact_involution.py:dataset=idx:{data_dir}",
           f"--workdir={workdir}"]
          + [f"--config.{k}={v}" for k, v in OVERRIDES.items()])


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f]


@pytest.fixture(scope="module")
def single(grating_idx_dir, tmp_path_factory):
  """The reference: the same run in this process, on 8 devices."""
  config = load_config("compact_involution", f"dataset=idx:{grating_idx_dir}")
  for key, value in OVERRIDES.items():
    parent, _, leaf = key.rpartition(".")
    (config[parent] if parent else config)[leaf] = ast.literal_eval(value)
  workdir = str(tmp_path_factory.mktemp("single"))
  train_lib.train(config, workdir)
  return workdir, evaluate_lib.evaluate(workdir)["metrics"]


@pytest.mark.slow
def test_two_processes_train_and_evaluate_as_one(grating_idx_dir, tmp_path,
                                                  single):
  single_dir, single_metrics = single
  workdir = str(tmp_path / "two")
  for code, _, err in _launch("metricjax.train",
                              _train_args(grating_idx_dir, workdir)):
    assert code == 0, err[-3000:]
  # Only process 0 writes logs: one row per step, not two.
  ours, reference = _losses(workdir), _losses(single_dir)
  assert len(ours) == STEPS
  np.testing.assert_allclose(ours, reference, rtol=1e-4)

  results = _launch("metricjax.evaluate", [f"--workdir={workdir}"])
  for code, _, err in results:
    assert code == 0, err[-3000:]
  # Only process 0 prints the table (gloo prints its own lines on both).
  assert "precision_at_1" in results[0][1]
  assert "precision_at_1" not in results[1][1]
  with open(os.path.join(workdir, "eval", f"step_{STEPS}.json")) as f:
    metrics = json.load(f)["metrics"]
  # The same checkpoint evaluated by this single process: the same numbers.
  # (The two runs' own parameters differ in the last bits, the all-reduce
  # summing in another order, and a rank can flip on that.)
  expected = evaluate_lib.evaluate(workdir)["metrics"]
  assert metrics.keys() == expected.keys() == single_metrics.keys()
  for key, value in expected.items():
    assert abs(metrics[key] - value) < 1e-6, key

  # Killed after step 10's checkpoint, the 2-process run resumes to the
  # same losses.
  resumed = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", str(STEPS)))
  for code, _, err in _launch("metricjax.train",
                              _train_args(grating_idx_dir, resumed)):
    assert code == 0, err[-3000:]
  np.testing.assert_allclose(_losses(resumed), reference, rtol=1e-4)


@pytest.mark.slow
def test_processes_with_different_configs_are_refused(tiny_idx_dir, tmp_path):
  results = _launch("metricjax.train", _train_args(tiny_idx_dir, tmp_path),
                    extra={1: ["--config.learning_rate=0.5"]})
  for code, _, err in results:
    assert code == 2 and "different configs" in err, err[-3000:]
    assert "Traceback" not in err
  assert not os.path.exists(tmp_path / "checkpoints")


def test_bad_distributed_flags(tmp_path):
  # Nobody listens: a clear error after the timeout, not a hang. (The
  # checks of the flags' values: tests/test_parallel.py.)
  proc = subprocess.run(
      [sys.executable, "-m", "metricjax.evaluate", f"--workdir={tmp_path}",
       "--distributed", f"--coordinator_address=127.0.0.1:{_free_port()}",
       "--num_processes=2", "--process_id=1", "--distributed_timeout=3"],
      cwd=REPO, env=dict(os.environ, XLA_FLAGS=xla_flags()), capture_output=True,
      text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "did not answer within 3 s" in proc.stderr
  assert "Traceback" not in proc.stderr

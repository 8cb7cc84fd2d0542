"""tools/device_check.sh's CPU dry run: the GPU check's code, end to end, at
toy sizes (its figures mean nothing on a CPU)."""

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO


def _env(**extra):
  # The script runs `python3`: the one of this test run, venv or not.
  return dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep
              + os.environ.get("PATH", ""), **extra)


@pytest.mark.slow
def test_dry_run_measures_every_workload(tmp_path):
  out = tmp_path / "check.json"
  env = _env()
  run = subprocess.run(["bash", "tools/device_check.sh", "--dry_run",
                        f"--out={out}"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report["dry_run"] is True
  names = [r["workload"] for r in report["results"]]
  assert names == ["hybrid1 b256", "hybrid1 b4096", "resnet50 b256",
                   "vit_s16 b256", "photo pipeline"]
  for r in report["results"][:4]:
    assert r["step_ms"] > 0 and r["bound_ms"] > 0
    assert r["measured_over_bound"] == pytest.approx(r["step_ms"] / r["bound_ms"])
  assert report["results"][-1]["images_per_second"] > 0
  assert "measured/bound" in run.stdout


def test_refuses_to_run_without_an_accelerator():
  env = _env(JAX_PLATFORMS="cpu")
  run = subprocess.run(["bash", "tools/device_check.sh"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert run.returncode != 0
  assert "--dry_run" in run.stderr

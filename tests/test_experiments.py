"""The experiment runners at --scale=smoke: the pipeline, not the numbers."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args, timeout=600):
  return subprocess.run([sys.executable, os.path.join(REPO, "experiments", script),
                         *args], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout)


@pytest.mark.slow
def test_compare_losses_smoke(tiny_idx_dir, tmp_path):
  out = tmp_path / "results"
  proc = _run("compare_losses.py", "--scale=smoke",
              f"--dataset=idx:{tiny_idx_dir}", "--losses=ms", "--seeds=2",
              f"--workdir={tmp_path / 'runs'}", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = (out / "README.md").read_text()
  assert "| ms |" in table and "±" in table
  assert (out / "curves.png").stat().st_size > 0
  # Done runs are skipped: a second call trains nothing.
  again = _run("compare_losses.py", "--scale=smoke",
               f"--dataset=idx:{tiny_idx_dir}", "--losses=ms", "--seeds=2",
               f"--workdir={tmp_path / 'runs'}", f"--out={out}")
  assert again.returncode == 0 and "train:" not in again.stderr


@pytest.mark.slow
def test_shadow_vs_triplet_smoke(tiny_idx_dir, tmp_path):
  args = ("--scale=smoke", f"--dataset=idx:{tiny_idx_dir}", "--seeds=2",
          f"--workdir={tmp_path / 'runs'}")
  proc = _run("shadow_vs_triplet.py", *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = tmp_path / "runs" / "results"
  page = (out / "README.md").read_text()
  assert "| Shadow, unit" in page and "| Triplet, euclidean" in page
  assert "±" in page and "Pending" not in page and "Reading" in page
  assert (out / "curves.png").stat().st_size > 0
  assert any(p.stat().st_size > 0 for p in out.glob("tsne-*.png"))
  # Done runs are skipped: a second call trains nothing.
  again = _run("shadow_vs_triplet.py", *args)
  assert again.returncode == 0 and "train:" not in again.stderr

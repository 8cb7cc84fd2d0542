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
def test_compact_involution_smoke(tiny_idx_dir, tmp_path):
  out = tmp_path / "results"
  args = ("--scale=smoke", f"--dataset=idx:{tiny_idx_dir}", "--seeds=2",
          f"--workdir={tmp_path / 'runs'}", f"--out={out}")
  proc = _run("compact_involution.py", *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = (out / "README.md").read_text()
  # Both smoke rows, with a seed spread and the CE head's accuracy.
  assert "| hybrid1 | gelu | ms | default |" in table
  assert "| hybrid1 | gelu | ce | default |" in table and "±" in table
  assert "MS minus CE (hybrid1)" in table
  assert (out / "curves.png").stat().st_size > 0
  assert (out / "tsne.png").stat().st_size > 0
  again = _run("compact_involution.py", *args)
  assert again.returncode == 0 and "train:" not in again.stderr

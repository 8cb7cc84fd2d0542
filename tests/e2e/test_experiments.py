"""The experiment runners at --scale=smoke: the pipeline, not the numbers."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import REPO



def _run(script, *args, timeout=600):
  # PYTHONPATH: `python experiments/X.py` puts experiments/ first on the
  # path, not the checkout, whose metricjax must be the one imported.
  return subprocess.run([sys.executable, os.path.join(REPO, "experiments", script),
                         *args], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout,
                        env=dict(os.environ, PYTHONPATH=REPO))


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
  # The page is a function of results.json alone: rewritten from it after
  # the run directories are gone, it is the same page.
  results = json.loads((out / "results.json").read_text())
  assert {r["scale"] for row in results["rows"] for r in row["runs"]} == {"smoke"}
  assert all(r["epochs"] > 0 for row in results["rows"] for r in row["runs"])
  shutil.rmtree(tmp_path / "runs")
  (out / "README.md").unlink()
  (out / "curves.png").unlink()
  rewritten = _run("compact_involution.py", "--scale=smoke", "--report_only",
                   f"--out={out}")
  assert rewritten.returncode == 0, rewritten.stderr[-3000:]
  assert (out / "README.md").read_text() == table
  assert (out / "curves.png").stat().st_size > 0


@pytest.mark.slow
def test_fne_vs_fc7_smoke(tmp_path):
  from helpers import hue_images  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  # A CIFAR-10-like image folder (RGB, CIFAR class names): the backbone
  # trains on it and the caption demo is composed from it.
  source = tmp_path / "hues"
  for split, n, seed in (("train", 40, 0), ("test", 16, 1)):
    ds = hue_images(n, seed)
    for i, (image, label) in enumerate(zip(ds.images, ds.labels)):
      folder = source / split / ds.class_names[label]
      folder.mkdir(parents=True, exist_ok=True)
      Image.fromarray(image).save(folder / f"{i:03d}.png")
  out = tmp_path / "results"
  args = ("--scale=smoke", f"--source=folder:{source}", "--seeds=2",
          f"--workdir={tmp_path / 'runs'}", f"--out={out}")
  proc = _run("fne_vs_fc7.py", *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  page = (out / "README.md").read_text()
  assert "| FNE | VSE (sum) | 2 |" in page and "| FC7 | VSE++ (max) | 2 |" in page
  assert "±" in page and "## On real data" in page
  assert (out / "curves.png").stat().st_size > 0
  # Done runs (backbone included) are skipped: a second call trains nothing.
  again = _run("fne_vs_fc7.py", *args)
  assert again.returncode == 0 and "train:" not in again.stderr, again.stderr[-3000:]
  # --scale=full without real data or weights: a clear error.
  full = _run("fne_vs_fc7.py", "--scale=full", f"--workdir={tmp_path / 'f'}")
  assert full.returncode != 0 and "--dataset and --weights" in full.stderr


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

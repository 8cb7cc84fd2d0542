"""The experiment runners at --scale=smoke: the pipeline, not the numbers.

Each runner's first call is mostly one core compiling small programs, so
the module starts the first calls of the selected tests together (the
`started` fixture) and each test then waits for its own; the checks are
each test's.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import REPO


def _command(script, *args):
  return [sys.executable, os.path.join(REPO, "experiments", script), *args]


def _env():
  # PYTHONPATH: `python experiments/X.py` puts experiments/ first on the
  # path, not the checkout, whose metricjax must be the one imported.
  return dict(os.environ, PYTHONPATH=REPO)


def _run(script, *args, timeout=600):
  return subprocess.run(_command(script, *args), cwd=REPO,
                        capture_output=True, text=True, timeout=timeout,
                        env=_env())


def _hue_folder(root):
  """A CIFAR-10-like image folder (RGB, CIFAR class names): fne_vs_fc7's
  backbone trains on it and its caption demo is composed from it."""
  from helpers import hue_images  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for split, n, seed in (("train", 40, 0), ("test", 16, 1)):
    ds = hue_images(n, seed)
    for i, (image, label) in enumerate(zip(ds.images, ds.labels)):
      folder = root / split / ds.class_names[label]
      folder.mkdir(parents=True, exist_ok=True)
      Image.fromarray(image).save(folder / f"{i:03d}.png")
  return root


# test name: (script, its arguments given (tmp dir, tiny idx dir)).
RUNNERS = {
    "test_compare_losses_smoke": ("compare_losses.py", lambda tmp, data: (
        "--scale=smoke", f"--dataset=idx:{data}", "--losses=ms", "--seeds=2",
        f"--workdir={tmp / 'runs'}", f"--out={tmp / 'results'}")),
    "test_compact_involution_smoke": ("compact_involution.py", lambda tmp, data: (
        "--scale=smoke", f"--dataset=idx:{data}", "--seeds=2",
        f"--workdir={tmp / 'runs'}", f"--out={tmp / 'results'}")),
    "test_fne_vs_fc7_smoke": ("fne_vs_fc7.py", lambda tmp, data: (
        "--scale=smoke", f"--source=folder:{_hue_folder(tmp / 'hues')}",
        "--seeds=2", f"--workdir={tmp / 'runs'}", f"--out={tmp / 'results'}")),
    "test_shadow_vs_triplet_smoke": ("shadow_vs_triplet.py", lambda tmp, data: (
        "--scale=smoke", f"--dataset=idx:{data}", "--seeds=2",
        f"--workdir={tmp / 'runs'}")),
}


class Started:
  """A runner's first call, started: its folder, script, arguments."""

  def __init__(self, tmp, script, args):
    self.tmp, self.script, self.args = tmp, script, args
    # Output to a file, not a pipe: a runner whose test has not started yet
    # must not stall on a full pipe (its progress bars fill one quickly).
    self.log = open(tmp / "first_call.log", "w+")
    self.proc = subprocess.Popen(_command(script, *args), cwd=REPO,
                                 env=_env(), stdout=self.log,
                                 stderr=subprocess.STDOUT, text=True)

  def wait(self, timeout=900):
    self.proc.wait(timeout=timeout)
    self.log.seek(0)
    assert self.proc.returncode == 0, self.log.read()[-3000:]

  def again(self):
    """The same command again."""
    return _run(self.script, *self.args)


@pytest.fixture(scope="module")
def started(request, tiny_idx_dir, tmp_path_factory):
  selected = {item.originalname for item in request.session.items
              if item.module is request.module}
  jobs = {}
  for name, (script, make_args) in RUNNERS.items():
    if name in selected:
      tmp = tmp_path_factory.mktemp(name)
      jobs[name] = Started(tmp, script, make_args(tmp, tiny_idx_dir))
  yield jobs
  for job in jobs.values():
    if job.proc.poll() is None:
      job.proc.kill()
      job.proc.wait()
    job.log.close()


@pytest.mark.slow
def test_compare_losses_smoke(started):
  job = started["test_compare_losses_smoke"]
  job.wait()
  out = job.tmp / "results"
  table = (out / "README.md").read_text()
  assert "| ms |" in table and "±" in table
  assert (out / "curves.png").stat().st_size > 0
  # Done runs are skipped: a second call trains nothing.
  again = job.again()
  assert again.returncode == 0 and "train:" not in again.stderr


@pytest.mark.slow
def test_compact_involution_smoke(started):
  job = started["test_compact_involution_smoke"]
  job.wait()
  out = job.tmp / "results"
  table = (out / "README.md").read_text()
  # Both smoke rows, with a seed spread and the CE head's accuracy.
  assert "| hybrid1 | gelu | ms | default |" in table
  assert "| hybrid1 | gelu | ce | default |" in table and "±" in table
  assert "MS minus CE (hybrid1)" in table
  assert (out / "curves.png").stat().st_size > 0
  assert (out / "tsne.png").stat().st_size > 0
  again = job.again()
  assert again.returncode == 0 and "train:" not in again.stderr
  # The page is a function of results.json alone: rewritten from it after
  # the run directories are gone, it is the same page.
  results = json.loads((out / "results.json").read_text())
  assert {r["scale"] for row in results["rows"] for r in row["runs"]} == {"smoke"}
  assert all(r["epochs"] > 0 for row in results["rows"] for r in row["runs"])
  shutil.rmtree(job.tmp / "runs")
  (out / "README.md").unlink()
  (out / "curves.png").unlink()
  rewritten = _run("compact_involution.py", "--scale=smoke", "--report_only",
                   f"--out={out}")
  assert rewritten.returncode == 0, rewritten.stderr[-3000:]
  assert (out / "README.md").read_text() == table
  assert (out / "curves.png").stat().st_size > 0


@pytest.mark.slow
def test_fne_vs_fc7_smoke(started):
  job = started["test_fne_vs_fc7_smoke"]
  job.wait()
  out = job.tmp / "results"
  page = (out / "README.md").read_text()
  assert "| FNE | VSE (sum) | 2 |" in page and "| FC7 | VSE++ (max) | 2 |" in page
  assert "±" in page and "## On real data" in page
  assert (out / "curves.png").stat().st_size > 0
  # Done runs (backbone included) are skipped: a second call trains nothing.
  again = job.again()
  assert again.returncode == 0 and "train:" not in again.stderr, again.stderr[-3000:]
  # --scale=full without real data or weights: a clear error.
  full = _run("fne_vs_fc7.py", "--scale=full", f"--workdir={job.tmp / 'f'}")
  assert full.returncode != 0 and "--dataset and --weights" in full.stderr


@pytest.mark.slow
def test_shadow_vs_triplet_smoke(started):
  job = started["test_shadow_vs_triplet_smoke"]
  job.wait()
  out = job.tmp / "runs" / "results"
  page = (out / "README.md").read_text()
  assert "| Shadow, unit" in page and "| Triplet, euclidean" in page
  assert "±" in page and "Pending" not in page and "Reading" in page
  assert (out / "curves.png").stat().st_size > 0
  assert any(p.stat().st_size > 0 for p in out.glob("tsne-*.png"))
  # Done runs are skipped: a second call trains nothing.
  again = job.again()
  assert again.returncode == 0 and "train:" not in again.stderr

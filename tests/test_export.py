"""metricjax.export: a jax.export artifact that matches the live model."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from metricjax import artifact
from metricjax import export
from metricjax import search
from metricjax.errors import UserError
from helpers import make_separable_images
from helpers import REPO
from helpers import xla_flags



def _live(model, images):
  return np.asarray(model.module.apply(model.variables, images, train=False)[
      "embedding"])


@pytest.mark.parametrize("batch", [None, 4])
def test_export_reloads_and_matches_the_live_model(tiny_workdir, tmp_path, batch):
  path = str(tmp_path / "model.jaxexport")
  header = export.export(str(tiny_workdir), path, batch=batch)
  assert header["file_bytes"] == os.path.getsize(path)
  assert header["param_bytes"] == 4 * header["num_params"]
  assert header["file_bytes"] < 1e6
  live = search.Model.from_checkpoint(str(tiny_workdir))
  assert header["model"] == live.reference

  images = make_separable_images(6, 4, seed=5)[0][..., None]
  exported, loaded_header = artifact.load(path)
  assert loaded_header["model"] == live.reference
  want = _live(live, images)
  if batch is None:
    got = np.asarray(exported.call(images))
  else:
    got = np.asarray(exported.call(images[:4]))
    want = want[:4]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # Through search.Model: chunking and padding to the fixed batch.
  np.testing.assert_allclose(search.Model.from_export(path)(images),
                             _live(live, images), rtol=1e-5, atol=1e-6)
  assert "MB" in export.format_report(path, header)


def test_truncated_or_foreign_file_is_a_user_error(tiny_workdir, tmp_path):
  path = tmp_path / "model.jaxexport"
  export.export(str(tiny_workdir), str(path))
  data = path.read_bytes()
  for cut in (5, 60, len(data) - 1):
    path.write_bytes(data[:cut])
    with pytest.raises(UserError, match="truncated|not a metricjax"):
      artifact.load(str(path))
  path.write_bytes(b"hello")
  with pytest.raises(UserError, match="not a metricjax exported model"):
    artifact.load(str(path))
  with pytest.raises(UserError, match="positive"):
    export.parse_batch("0")


def test_query_with_exported_model_needs_no_checkpoint(tiny_workdir, tiny_idx_dir,
                                                       tmp_path):
  # A copy of the run, removed after export and index: only the files remain.
  workdir = tmp_path / "run"
  shutil.copytree(tiny_workdir, workdir)
  env = dict(os.environ, XLA_FLAGS=xla_flags())
  run = lambda *a: subprocess.run([sys.executable, "-m", *a], cwd=REPO, env=env,
                                  capture_output=True, text=True, timeout=180)
  model_path, index_path = tmp_path / "m.jaxexport", tmp_path / "g.npz"
  proc = run("metricjax.export", f"--workdir={workdir}", f"--out={model_path}",
             "--batch=polymorphic")
  assert proc.returncode == 0, proc.stderr
  assert "artifact" in proc.stdout and "parameters" in proc.stdout
  search.Index.build(str(workdir), f"idx:{tiny_idx_dir}", "test").save(
      str(index_path))
  shutil.rmtree(workdir)

  image = make_separable_images(3, 4, seed=2)[0][2]
  Image.fromarray(image).save(tmp_path / "q.png")
  proc = run("metricjax.search", "query", f"--index={index_path}",
             f"--image={tmp_path / 'q.png'}", f"--model={model_path}",
             "--k=2", "--json")
  assert proc.returncode == 0, proc.stderr
  (result,) = json.loads(proc.stdout)
  assert [n["rank"] for n in result["neighbours"]] == [1, 2]
  assert result["neighbours"][0]["label"] == 2

  # Without --model the index points at the removed checkpoint.
  proc = run("metricjax.search", "query", f"--index={index_path}",
             f"--image={tmp_path / 'q.png'}")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr

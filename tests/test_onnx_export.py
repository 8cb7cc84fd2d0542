"""metricjax.export --format=onnx: onnxruntime's embeddings are the
checkpoint's. Skips, with the reason, without jax2onnx / onnxruntime
(setup.cfg's onnx extra)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from metricjax import export
from metricjax import search
from metricjax.errors import UserError
from helpers import make_separable_images
from helpers import REPO


def _session(path):
  ort = pytest.importorskip(
      "onnxruntime", reason="onnxruntime (setup.cfg's onnx extra) is absent")
  return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch", [None, 4])
def test_onnxruntime_matches_the_checkpoint(tiny_workdir, tmp_path, batch):
  pytest.importorskip("jax2onnx",
                      reason="jax2onnx (setup.cfg's onnx extra) is absent")
  path = str(tmp_path / "model.onnx")
  # The tiny run is the hybrid1 of configs/compact_involution.py, 6 steps.
  header = export.export(str(tiny_workdir), path, batch=batch, fmt="onnx")
  assert header["file_bytes"] == os.path.getsize(path)
  assert not [f for f in os.listdir(tmp_path) if f != "model.onnx"]
  live = search.Model.from_checkpoint(str(tiny_workdir))
  assert header["model"] == live.reference
  assert header["input"]["dtype"] == "uint8"
  assert header["output"]["dtype"] == "float32"

  images = make_separable_images(6, 4, seed=5)[0][..., None]
  want = np.asarray(live.module.apply(live.variables, images, train=False)[
      "embedding"])
  session = _session(path)
  if batch is not None:
    images, want = images[:batch], want[:batch]
  got = session.run(["embedding"], {"images": images})[0]
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
  meta = session.get_modelmeta().custom_metadata_map
  assert json.loads(meta["metricjax"])["model"] == live.reference
  assert "(onnx)" in export.format_report(path, header)


def test_unknown_format_exits_2(tiny_workdir, tmp_path):
  with pytest.raises(UserError, match="--format='tflite'.*jaxexport, onnx"):
    export.export(str(tiny_workdir), str(tmp_path / "m"), fmt="tflite")
  done = subprocess.run(
      [sys.executable, "-m", "metricjax.export", f"--workdir={tiny_workdir}",
       "--format=tflite", f"--out={tmp_path / 'm.tflite'}"], cwd=REPO,
      env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
      timeout=300)
  assert done.returncode == 2, done.stderr
  assert "Traceback" not in done.stderr and "--format='tflite'" in done.stderr
  assert not (tmp_path / "m.tflite").exists()

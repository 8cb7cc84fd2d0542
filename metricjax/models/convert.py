"""ImageNet VGG weights from torchvision or Keras -> Flax params of models.VGG.

- torchvision `vgg16` state_dict: `features.{i}.weight|bias` (convs at the
  indices of the conv/ReLU/pool sequence), `classifier.{0,3,6}.weight|bias`.
  Conv (O, I, kh, kw) -> HWIO; Linear (out, in) -> (in, out).
- Keras `vgg16_weights_tf_dim_ordering_tf_kernels.h5`: layers
  block{b}_conv{i}, fc1, fc2, predictions; kernels already HWIO / (in, out).
  Keras flattens the last (7, 7, 512) map in HWC order, models.VGG (like
  torchvision) in CHW order, so fc1's rows are permuted. Keras weights want
  "caffe" preprocessing (BGR, mean pixel), torchvision's "torch".

Params are saved as .npz ("layer/kernel" entries and a JSON "__meta__")
by models/weights.py's save_npz, loaded by models.load_backbone.
"""

import os
import re
from typing import Any, Mapping

import numpy as np

from metricjax.errors import UserError
from metricjax.models.vgg import conv_names
from metricjax.models.vgg import VGG16_BLOCKS

HOW_TO_GET_WEIGHTS = (
    "Convert torchvision's ImageNet VGG16 (https://download.pytorch.org/"
    "models/vgg16-397923af.pth): `python tools/convert_vgg16.py "
    "--torch=vgg16-397923af.pth --out=vgg16.npz`; or export a VGG trained "
    "here: `python tools/export_vgg_backbone.py --workdir=RUN --out=vgg.npz`.")


def _to_numpy(x) -> np.ndarray:
  if hasattr(x, "detach"):  # A torch tensor; torch itself is not needed here.
    x = x.detach().cpu().numpy()
  return np.asarray(x, np.float32)


def _torch_layout(blocks):
  """[(flax name, torch prefix)] of the torchvision VGG with these blocks."""
  layout, index = [], 0
  names = iter(conv_names(blocks))
  for block in blocks:
    for _ in block:
      layout.append((next(names), f"features.{index}"))
      index += 2  # Conv2d, ReLU.
    index += 1  # MaxPool2d.
  return layout


def vgg_params_from_torch(state_dict: Mapping[str, Any], *,
                          blocks=VGG16_BLOCKS) -> dict:
  """Flax params of VGG(blocks=blocks) from a torchvision VGG state_dict.

  The classifier is converted when present: fc6, fc7 and the logits layer
  (fc8 for VGG16). Tensors or arrays are accepted; "module." prefixes (from
  DataParallel) are dropped.
  """
  sd = {re.sub(r"^module\.", "", k): v for k, v in state_dict.items()}
  if any(k.endswith("running_mean") for k in sd):
    raise UserError("This state_dict has BatchNorm layers (vgg16_bn); only the "
                    "plain torchvision vgg16 is supported.")
  params = {}
  for name, prefix in _torch_layout(blocks):
    w, b = _pop_pair(sd, prefix, "torchvision state_dict")
    if w.ndim != 4:
      raise UserError(f"torchvision state_dict: {prefix}.weight has shape "
                      f"{w.shape}, expected a conv kernel (O, I, 3, 3); the "
                      "file is not a VGG16 of torchvision's layout.")
    params[name] = {"kernel": w.transpose(2, 3, 1, 0), "bias": b}
  for j, index in enumerate((0, 3, 6)):
    prefix = f"classifier.{index}"
    if f"{prefix}.weight" not in sd:
      break
    w, b = _pop_pair(sd, prefix, "torchvision state_dict")
    params[f"fc{6 + j}"] = {"kernel": w.T, "bias": b}
  _check_chain(params, blocks, "torchvision state_dict")
  return params


def vgg16_params_from_torch(state_dict: Mapping[str, Any]) -> dict:
  """Flax params of models.vgg16() from torchvision's vgg16 state_dict."""
  return vgg_params_from_torch(state_dict, blocks=VGG16_BLOCKS)


def _pop_pair(sd, prefix, where):
  try:
    return _to_numpy(sd[f"{prefix}.weight"]), _to_numpy(sd[f"{prefix}.bias"])
  except KeyError as e:
    raise UserError(f"{where} has no {e.args[0]!r}; expected torchvision's "
                    "vgg16 keys (features.0.weight, ..., classifier.6.bias). "
                    "Is it a different architecture?") from None


def _check_chain(params, blocks, where):
  """Every layer's input width is the previous layer's output width."""
  prev = 3
  for name in conv_names(blocks):
    kernel = params[name]["kernel"]
    if kernel.shape[2] != prev:
      raise UserError(f"{where}: {name} takes {kernel.shape[2]} channels, the "
                      f"previous layer gives {prev}; the weights do not form "
                      "a VGG with the expected blocks.")
    prev = kernel.shape[3]


def vgg_params_from_keras(h5_path: str | os.PathLike, *,
                          blocks=VGG16_BLOCKS) -> dict:
  """Flax params of VGG(blocks=blocks) from a Keras VGG weights .h5 file.

  Reads weights-only files (vgg16_weights_tf_dim_ordering_tf_kernels.h5,
  with or without top) and full-model files (a "model_weights" group).
  """
  try:
    import h5py  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError("Reading Keras .h5 weights needs h5py: `pip install "
                    "h5py` (or `pip install metricjax[convert]`).") from None
  path = os.fspath(h5_path)
  if not os.path.isfile(path):
    raise UserError(f"Keras weights file {path} does not exist.")
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise UserError(f"{path} is not a readable HDF5 file ({e}).") from None
  with f:
    root = f["model_weights"] if "model_weights" in f else f
    params = {}
    for b, block in enumerate(blocks):
      for i in range(len(block)):
        kernel, bias = _keras_layer(root, f"block{b + 1}_conv{i + 1}", path)
        params[f"conv{b + 1}_{i + 1}"] = {"kernel": kernel, "bias": bias}
    for j, layer in enumerate(("fc1", "fc2", "predictions")):
      if layer not in root:
        break
      kernel, bias = _keras_layer(root, layer, path)
      params[f"fc{6 + j}"] = {"kernel": kernel, "bias": bias}
  _check_chain(params, blocks, path)
  if "fc6" in params:
    params["fc6"]["kernel"] = _hwc_rows_to_chw(
        params["fc6"]["kernel"], params[conv_names(blocks)[-1]]["bias"].size,
        path)
  return params


def vgg16_params_from_keras(h5_path: str | os.PathLike) -> dict:
  """Flax params of models.vgg16() from Keras' VGG16 ImageNet .h5 weights."""
  return vgg_params_from_keras(h5_path, blocks=VGG16_BLOCKS)


def _keras_layer(root, layer, path):
  """(kernel, bias) of a Keras layer group, in weight_names order."""
  if layer not in root:
    raise UserError(f"{path} has no layer {layer!r}; expected the layers of "
                    "Keras' VGG16 (block1_conv1, ..., fc1, fc2, predictions).")
  group = root[layer]
  names = [n.decode() if isinstance(n, bytes) else str(n)
           for n in group.attrs.get("weight_names", [])]
  if not names:  # Files without the attribute: every dataset, sorted.
    found = []
    group.visititems(lambda n, obj: found.append(n) if hasattr(obj, "shape")
                     else None)
    names = sorted(found)
  arrays = [np.asarray(group[n], np.float32) for n in names]
  kernels = [a for a in arrays if a.ndim >= 2]
  biases = [a for a in arrays if a.ndim == 1]
  if len(kernels) != 1 or len(biases) != 1:
    raise UserError(f"{path}: layer {layer!r} holds arrays of shapes "
                    f"{[a.shape for a in arrays]}; expected one kernel and one "
                    "bias.")
  return kernels[0], biases[0]


def _hwc_rows_to_chw(kernel, channels, path):
  rows = kernel.shape[0]
  side = int(round((rows / channels) ** 0.5))
  if side * side * channels != rows:
    raise UserError(f"{path}: fc1 takes {rows} inputs, which is not a square "
                    f"map of {channels} channels.")
  return (kernel.reshape(side, side, channels, -1).transpose(2, 0, 1, 3)
          .reshape(rows, -1))

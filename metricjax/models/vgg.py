"""VGG16 (Simonyan & Zisserman) as a frozen feature extractor with named taps.

Layer for layer the network of torchvision's `vgg16` and Keras' `VGG16`, so
their ImageNet weights convert exactly (metricjax/models/convert.py):
13 3x3 convs with ReLU in 5 blocks, a 2x2 max pool after each block, an
adaptive average pool to 7x7 (identity for 224x224 input, as in torchvision),
then fc6, fc7 (ReLU) and fc8 (logits). Dropout is left out: the net is only
ever run frozen, where dropout is the identity.

Taps: `__call__(x, capture=True)` returns every post-ReLU activation by name
("conv1_1" ... "conv5_3", "fc6", "fc7") plus the logits "fc8", the layers the
Full-Network Embedding reads (metricjax/fne.py). Another backbone joins by
following the same convention: a `taps` tuple naming what `capture=True`
returns, and `fne_taps` naming what FNE pools (4-D maps are averaged over
space, 2-D vectors used as they are).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from metricjax.errors import UserError
from metricjax.ops.pooling import max_pool_2x2
from metricjax.ops.similarity import l2_normalize

# Output channels of the convs of each block.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512),
                (512, 512, 512))

# Per-channel statistics of the ImageNet weight families: torchvision
# expects RGB in [0, 1] standardised; Keras' (converted from Caffe) expects
# BGR in [0, 255] minus the mean pixel; TensorFlow's EfficientNet-Lite RGB
# in [0, 255] centred on 127 and scaled by 128 (its MEAN_RGB / STDDEV_RGB).
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_TORCH_STD = np.array([0.229, 0.224, 0.225], np.float32)
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)
PREPROCESS_MODES = ("torch", "caffe", "lite")


def preprocess_imagenet(images: jax.Array, *, mode: str = "torch") -> jax.Array:
  """uint8 (B, H, W, C) images -> float32 network input, NHWC.

  mode "torch" for torchvision weights, "caffe" for Keras' (converted from
  Caffe), "lite" for EfficientNet-Lite's (converted from TensorFlow).
  Grayscale (C = 1) is repeated to RGB. Resizing is the caller's.
  """
  if mode not in PREPROCESS_MODES:
    raise UserError(
        f"Unknown ImageNet preprocessing {mode!r}; use one of "
        f"{', '.join(PREPROCESS_MODES)} (the one the weights were trained "
        "with: 'torch' for torchvision, 'caffe' for Keras, 'lite' for "
        "EfficientNet-Lite).")
  x = jnp.asarray(images).astype(jnp.float32)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if mode == "torch":
    return (x / 255.0 - _TORCH_MEAN) / _TORCH_STD
  if mode == "lite":
    return (x - 127.0) / 128.0
  return x[..., ::-1] - _CAFFE_MEAN_BGR


def _adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
  # Row i averages [floor(i*n/o), ceil((i+1)*n/o)), PyTorch's bins; they may
  # overlap and, when n_in < n_out, repeat inputs.
  m = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    start = (i * n_in) // n_out
    end = -(-((i + 1) * n_in) // n_out)
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
  """torch.nn.AdaptiveAvgPool2d on NHWC input."""
  h, w = x.shape[1:3]
  if (h, w) == tuple(output_size):
    return x
  mh = _adaptive_pool_matrix(h, output_size[0])
  mw = _adaptive_pool_matrix(w, output_size[1])
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum("oh,bhwc->bowc", mh.astype(x.dtype), x, precision=hi)
  return jnp.einsum("pw,bowc->bopc", mw.astype(x.dtype), x, precision=hi)


def conv_names(blocks) -> tuple[str, ...]:
  return tuple(f"conv{b + 1}_{i + 1}" for b, block in enumerate(blocks)
               for i in range(len(block)))


class VGG(nn.Module):
  """VGG with named taps; the defaults are VGG16 with its ImageNet head.

  Attributes:
    blocks: output channels of the 3x3 convs, per block.
    fc_dims: widths of the hidden fully connected layers (fc6, fc7); () for
      a convolutional trunk only.
    num_classes: width of the last layer (fc8 for VGG16); None for none.
    pool_size: the adaptive average pool before the first fc layer.
    dtype: compute dtype; parameters stay float32.
  """
  blocks: tuple[tuple[int, ...], ...] = VGG16_BLOCKS
  fc_dims: tuple[int, ...] = (4096, 4096)
  num_classes: int | None = 1000
  pool_size: tuple[int, int] = (7, 7)
  dtype: Any = jnp.float32

  @property
  def fc_names(self) -> tuple[str, ...]:
    # Caffe's names, fc6 onwards (every VGG has 5 blocks), for any blocks.
    n = len(self.fc_dims) + (self.num_classes is not None)
    return tuple(f"fc{6 + i}" for i in range(n))

  @property
  def taps(self) -> tuple[str, ...]:
    """Everything `capture=True` returns, input to output."""
    return conv_names(self.blocks) + self.fc_names

  @property
  def fne_taps(self) -> tuple[str, ...]:
    """The layers FNE reads: every conv and hidden fc layer, not the logits."""
    return conv_names(self.blocks) + self.fc_names[:len(self.fc_dims)]

  @nn.compact
  def __call__(self, x: jax.Array, *, capture: bool = False):
    """Runs the net on preprocessed NHWC input (see preprocess_imagenet).

    Returns the output of the last layer, or with capture=True a dict of
    every tap (post-ReLU activations; the logits for the last layer when
    num_classes is set).
    """
    acts = {}
    x = x.astype(self.dtype)
    names = iter(conv_names(self.blocks))
    for block in self.blocks:
      for width in block:
        name = next(names)
        x = nn.relu(nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)),
                            dtype=self.dtype, name=name)(x))
        acts[name] = x
      x = max_pool_2x2(x, "VALID")
    fc_names = self.fc_names
    if fc_names:
      x = adaptive_avg_pool(x, self.pool_size)
      # Flatten channel-major, as torchvision's NCHW flatten does, so
      # converted fc6 weights need no reordering.
      x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
      for name, width in zip(fc_names, self.fc_dims):
        x = nn.relu(nn.Dense(width, dtype=self.dtype, name=name)(x))
        acts[name] = x
      if self.num_classes is not None:
        x = nn.Dense(self.num_classes, dtype=self.dtype, name=fc_names[-1])(x)
        acts[fc_names[-1]] = x
    return acts if capture else x


def vgg16(**kwargs) -> VGG:
  """VGG16 with the ImageNet head (kwargs override VGG's fields)."""
  return VGG(**kwargs)


class VGGNet(nn.Module):
  """VGG as a trainable image model: uint8 images -> {"embedding", "logits"}.

  The interface of the retrieval task's models (metricjax/tasks/
  retrieval.py), so a small VGG can be trained here, e.g. on CIFAR-10
  (configs/cifar_vgg.py), and exported as an FNE backbone
  (tools/export_vgg_backbone.py): its params are the VGG's, under "vgg".
  The embedding is the last hidden layer (fc7 for two fc layers; the
  spatial mean of the last conv map for none), L2-normalised.

  Attributes: those of VGG, plus preprocess, the preprocess_imagenet mode.
  """
  blocks: tuple[tuple[int, ...], ...] = VGG16_BLOCKS
  fc_dims: tuple[int, ...] = (4096, 4096)
  num_classes: int | None = None
  pool_size: tuple[int, int] = (7, 7)
  preprocess: str = "torch"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    del train  # VGG has neither dropout nor batch norm here.
    net = VGG(self.blocks, self.fc_dims, self.num_classes, self.pool_size,
              self.dtype, name="vgg")
    acts = net(preprocess_imagenet(images, mode=self.preprocess), capture=True)
    hidden = acts[net.fne_taps[-1]].astype(jnp.float32)
    if hidden.ndim == 4:
      hidden = jnp.mean(hidden, axis=(1, 2))
    outputs = {"embedding": l2_normalize(hidden)}
    if self.num_classes is not None:
      outputs["logits"] = acts[net.fc_names[-1]].astype(jnp.float32)
    return outputs

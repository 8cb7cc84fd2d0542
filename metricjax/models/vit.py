"""ViT-S/16 (Dosovitskiy et al.) in the DINO / timm layout, as a DML trunk.

timm's VisionTransformer with class token: a 16x16 patch embedding, a
learned position embedding over [CLS] + patches, pre-norm blocks (LayerNorm
eps 1e-6, multi-head attention with a joint qkv projection, a GELU MLP of 4x
width) and a final LayerNorm; the output is the final-norm CLS token (timm's
`num_classes=0`). Names follow timm's state_dict with "." before an index
written "_" (`blocks.0.attn.qkv` -> `blocks_0/attn/qkv`), which DINO's
checkpoints share, so both convert 1:1 (metricjax/models/weights.py).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from metricjax.errors import UserError
from metricjax.ops.activations import gelu

# arch -> (patch, width, depth, heads).
VIT_ARCHS = {"vit_s16": (16, 384, 12, 6)}


def check_patch_grid(image_size: int, patch: int, where: str) -> int:
  """The side of the patch grid; a UserError when patch does not divide."""
  if image_size % patch:
    raise UserError(
        f"{where}: image size {image_size} is not a multiple of the ViT's "
        f"patch size {patch}, so the patches do not tile the image. Use a "
        f"multiple of {patch} (224 = 14 x {patch} for the ImageNet weights).")
  return image_size // patch


class Block(nn.Module):
  """timm's Block: x + attn(norm1(x)), then x + mlp(norm2(x))."""
  width: int
  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    norm = lambda name: nn.LayerNorm(1e-6, dtype=self.dtype, name=name)
    x = x + _Attention(self.width, self.heads, self.dtype,
                       name="attn")(norm("norm1")(x))
    return x + _Mlp(4 * self.width, self.dtype, name="mlp")(norm("norm2")(x))


class _Attention(nn.Module):
  width: int
  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    head_dim = d // self.heads
    qkv = nn.Dense(3 * self.width, dtype=self.dtype, name="qkv")(x)
    q, k, v = jnp.moveaxis(qkv.reshape(b, t, 3, self.heads, head_dim), 2, 0)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(
        jnp.asarray(head_dim, x.dtype))
    # Softmax in float32 whatever the compute dtype.
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype), v)
    return nn.Dense(self.width, dtype=self.dtype, name="proj")(
        out.reshape(b, t, d))


class _PatchEmbed(nn.Module):
  """timm's PatchEmbed: a patch x patch conv of stride patch, flattened."""
  width: int
  patch: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.width, (self.patch, self.patch), (self.patch, self.patch),
                padding="VALID", dtype=self.dtype, name="proj")(x)
    return x.reshape(x.shape[0], -1, self.width)


class _Mlp(nn.Module):
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    x = gelu(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x))
    return nn.Dense(width, dtype=self.dtype, name="fc2")(x)


class ViT(nn.Module):
  """timm's VisionTransformer (class token, no head): NHWC float images
  (normalised as torchvision expects) -> the final-norm CLS token.

  Follows the trunk contract of metricjax.models (see its docstring). The
  position embedding is learned for one patch grid: the image size is fixed
  by the weights (a different size is refused, not resampled).

  Attributes:
    arch: "vit_s16".
    dtype: compute dtype; parameters stay float32.
  """
  arch: str = "vit_s16"
  dtype: Any = jnp.float32

  default_pooling = "cls"
  framework = "timm"

  def __post_init__(self):
    super().__post_init__()
    if self.arch not in VIT_ARCHS:
      raise UserError(f"Unknown ViT {self.arch!r}; known: "
                      f"{', '.join(VIT_ARCHS)}.")

  @property
  def features(self) -> int:
    return VIT_ARCHS[self.arch][1]

  def weights_meta(self, flat) -> dict:
    """The image size the weights' position embedding was learned for."""
    pos_embed = flat.get("pos_embed")
    tokens = (pos_embed.shape[1] - 1 if pos_embed is not None
              and pos_embed.ndim == 3 else 0)
    grid = int(round(max(tokens, 0) ** 0.5))
    if grid < 1 or grid * grid != tokens:
      shape = None if pos_embed is None else pos_embed.shape
      raise UserError(
          f"pos_embed holds {tokens} patch positions (shape {shape}), not a "
          f"square grid plus a CLS token; it is not a {self.arch} of timm's "
          "layout.")
    return {"image_size": grid * VIT_ARCHS[self.arch][0]}

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               pooling: str = "cls") -> jax.Array:
    del train  # No dropout, no batch norm: DINO and timm's eval forward.
    if pooling != "cls":
      raise UserError(f"A ViT pools by its CLS token; pooling {pooling!r} is "
                      "not supported (use 'cls').")
    patch, width, depth, heads = VIT_ARCHS[self.arch]
    if x.shape[1] != x.shape[2]:
      raise UserError(f"The ViT takes square images; got {x.shape[1]}x"
                      f"{x.shape[2]}.")
    grid = check_patch_grid(x.shape[1], patch, "ViT input")
    x = _PatchEmbed(width, patch, self.dtype,
                    name="patch_embed")(x.astype(self.dtype))
    cls = self.param("cls_token", nn.initializers.normal(1e-6),
                     (1, 1, width))
    pos = self.param("pos_embed", nn.initializers.normal(0.02),
                     (1, 1 + grid * grid, width))
    x = jnp.concatenate(
        [jnp.broadcast_to(cls.astype(self.dtype), (x.shape[0], 1, width)), x],
        axis=1) + pos.astype(self.dtype)
    for i in range(depth):
      x = Block(width, heads, self.dtype, name=f"blocks_{i}")(x)
    x = nn.LayerNorm(1e-6, dtype=self.dtype, name="norm")(x)
    return x[:, 0].astype(jnp.float32)


def vit_s16(**kwargs) -> ViT:
  return ViT(arch="vit_s16", **kwargs)

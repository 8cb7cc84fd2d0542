"""Full-Network Embedding (Garcia-Gasulla et al., arXiv 1705.07706).

An image is described by every layer of a frozen CNN, not only fc7:
  1. the spatial average of every conv map and the fc activations,
     concatenated (12,416-d for VGG16: 13 convs + fc6 + fc7);
  2. each feature z-scored with the mean and std of the training split;
  3. discretised to {-1, 0, 1}: z > 0.15 -> 1, z < -0.25 -> -1, else 0.
The one-layer baseline ("fc7") is the L2-normalised fc7 vector.

The expensive part, running the CNN, is `extract_features`; it caches the
pooled taps (step 1) as .npy so both kinds and every later run reuse them.
A tap is a name in the backbone's `capture=True` dict: 4-D (B, H, W, C)
maps are averaged over space, 2-D (B, C) vectors used as they are, so the
same functions take raw activations or already pooled ones.
"""

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metricjax import files
from metricjax import inference
from metricjax import parallel
from metricjax.errors import UserError
from metricjax.models import vgg
from metricjax.ops.similarity import l2_normalize

VGG16_FNE_TAPS = vgg.vgg16().fne_taps
FNE_LOW, FNE_HIGH = -0.25, 0.15
KINDS = ("fne", "fne_raw", "fc7")
_NEEDS_STATS = ("kind='fne' needs the training-split statistics: fit them with "
                "fit_fne_stats(extract_features(..., kind='fne_raw')) on the "
                "training images and pass stats=.")
# Bump when the cached features change meaning: old caches then miss.
_CACHE_VERSION = 1


def pool_activations(activations: Mapping[str, jax.Array],
                     taps: Sequence[str]) -> dict[str, jax.Array]:
  """{tap: (B, C)}: conv maps averaged over space (in float32), fc as is."""
  out = {}
  for name in taps:
    if name not in activations:
      raise UserError(f"FNE tap {name!r} is not among the activations "
                      f"({', '.join(activations)}); the taps and the backbone "
                      "do not match.")
    x = jnp.asarray(activations[name]).astype(jnp.float32)
    if x.ndim == 4:
      x = jnp.mean(x, axis=(1, 2))
    elif x.ndim != 2:
      raise ValueError(f"tap {name!r} has shape {x.shape}; expected (B, H, W, "
                       "C) or (B, C)")
    out[name] = x
  return out


def full_network_embedding(activations: Mapping[str, jax.Array],
                           taps: Sequence[str] = VGG16_FNE_TAPS) -> jax.Array:
  """(B, D) raw FNE: pooled taps concatenated in `taps` order (step 1)."""
  pooled = pool_activations(activations, taps)
  return jnp.concatenate([pooled[name] for name in taps], axis=-1)


@dataclasses.dataclass(frozen=True, eq=False)
class FNEStats:
  """Per-feature mean and std of the raw FNE on the training split."""
  mean: np.ndarray  # (D,) float32
  std: np.ndarray   # (D,) float32, floored (never 0)
  count: int        # training images they were computed on

  def to_dict(self) -> dict[str, Any]:
    """JSON-able form, for a checkpoint's meta."""
    return {"mean": self.mean.tolist(), "std": self.std.tolist(),
            "count": int(self.count)}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "FNEStats":
    return cls(np.asarray(d["mean"], np.float32),
               np.asarray(d["std"], np.float32), int(d["count"]))


def fit_fne_stats(features, *, batch_size: int = 4096,
                  min_std: float = 1e-6) -> FNEStats:
  """Mean and std per column of (N, D) raw FNE features, the training split.

  Streams over row batches (features may be a memory-mapped .npy) in
  float64, merging batch moments with Chan et al.'s pairwise update, which
  stays accurate where the one-pass E[x^2] - E[x]^2 cancels. The std is the
  sample std (ddof=1, torch.std as HPAI-BSC/fne uses), floored at min_std
  so constant features (dead ReLUs) do not divide by zero.
  """
  n_total = len(features)
  if n_total < 2:
    raise UserError(f"FNE statistics need at least 2 training images, got "
                    f"{n_total}.")
  count, mean, m2 = 0, None, None
  for start in range(0, n_total, batch_size):
    x = np.asarray(features[start:start + batch_size], np.float64)
    n_b = x.shape[0]
    mean_b = x.mean(axis=0)
    m2_b = np.square(x - mean_b).sum(axis=0)
    if mean is None:
      count, mean, m2 = n_b, mean_b, m2_b
      continue
    delta = mean_b - mean
    total = count + n_b
    mean = mean + delta * (n_b / total)
    m2 = m2 + m2_b + np.square(delta) * (count * n_b / total)
    count = total
  std = np.sqrt(m2 / (count - 1))
  if not np.isfinite(std).all() or not np.isfinite(mean).all():
    raise UserError("The FNE features hold NaN or infinite values; check the "
                    "backbone weights and the input preprocessing.")
  return FNEStats(mean.astype(np.float32),
                  np.maximum(std, min_std).astype(np.float32), int(count))


def standardize(features: jax.Array, stats: FNEStats) -> jax.Array:
  """Z-scores of raw FNE features with the training statistics (step 2)."""
  features = jnp.asarray(features, jnp.float32)
  if features.shape[-1] != stats.mean.shape[0]:
    raise UserError(f"Features have {features.shape[-1]} columns but the FNE "
                    f"statistics {stats.mean.shape[0]}; they come from "
                    "different backbones or taps.")
  return (features - stats.mean) / stats.std


def discretize(z: jax.Array, low: float = FNE_LOW, high: float = FNE_HIGH, *,
               dtype=jnp.int8) -> jax.Array:
  """{-1, 0, 1}: z > high -> 1, z < low -> -1, else 0 (step 3).

  int8 by default: COCO's 113k x 12,416 features then take 1.4 GB on the
  device instead of 5.6 GB; cast when a float is needed.
  """
  z = jnp.asarray(z)
  return ((z > high).astype(dtype) - (z < low).astype(dtype)).astype(dtype)


def image_features(activations: Mapping[str, jax.Array], *, kind: str = "fne",
                   stats: FNEStats | None = None,
                   taps: Sequence[str] = VGG16_FNE_TAPS) -> jax.Array:
  """The image representation of the pipeline, from (pooled) activations.

  kind: "fne" (standardised with `stats`, discretised), "fne_raw" (step 1
  only, what fit_fne_stats takes) or "fc7" (L2-normalised fc7, the
  one-layer baseline).
  """
  if kind == "fc7":
    return l2_normalize(pool_activations(activations, ("fc7",))["fc7"])
  if kind == "fne_raw":
    return full_network_embedding(activations, taps)
  if kind == "fne":
    if stats is None:
      raise UserError(_NEEDS_STATS)
    return discretize(standardize(full_network_embedding(activations, taps),
                                  stats))
  raise UserError(f"Unknown image feature kind {kind!r}; use one of "
                  f"{', '.join(KINDS)}.")


def extract_features(model, params, images, *, kind: str = "fne_raw",
                     stats: FNEStats | None = None,
                     taps: Sequence[str] | None = None, batch_size: int = 64,
                     cache_path: str | os.PathLike | None = None,
                     preprocess: str | Callable = "torch",
                     mesh: jax.sharding.Mesh | None = None,
                     desc: str = "features") -> np.ndarray:
  """Runs a frozen backbone over images -> (N, D) host array of `kind`.

  Args:
    model: a backbone with `capture=True` taps (models.VGG).
    params: its params (the "params" collection's contents).
    images: uint8 (N, H, W, C), or any sequence whose slices are such
      arrays (data.captions.ImageFiles decodes lazily).
    kind: as in image_features.
    stats: FNE statistics, for kind "fne".
    taps: the taps pooled and cached; default model.fne_taps.
    batch_size: images per jitted step, sharded over the mesh when it
      divides evenly.
    cache_path: a .npy file for the pooled taps (kind "fne_raw"), with a
      .json beside it naming taps, sizes and a fingerprint of images,
      params and preprocessing; reused when they match. For "fne_raw"
      the result is then a read-only memory map of that file.
    preprocess: "torch" or "caffe" (preprocess_imagenet), or a callable
      uint8 -> network input, traced inside the jitted step.
    mesh: devices to shard batches over; default every device.
  """
  taps = tuple(model.fne_taps if taps is None else taps)
  # Fail before the long extraction, not after it.
  if kind not in KINDS:
    raise UserError(f"Unknown image feature kind {kind!r}; use one of "
                    f"{', '.join(KINDS)}.")
  if kind == "fne" and stats is None:
    raise UserError(_NEEDS_STATS)
  if kind == "fc7" and "fc7" not in taps:
    raise UserError(f"kind='fc7' needs the fc7 tap; taps are {taps}.")
  raw, dims = _cached_pooled(model, params, images, taps, batch_size,
                             cache_path, preprocess, mesh, desc)
  if kind == "fne_raw":
    return raw
  bounds = np.cumsum((0,) + dims)
  rows = max(1, (1 << 26) // raw.shape[1])  # ~256 MiB of float32 per chunk.
  parts = []
  for start in range(0, len(raw), rows):
    chunk = np.asarray(raw[start:start + rows])
    pooled = {name: chunk[:, bounds[i]:bounds[i + 1]]
              for i, name in enumerate(taps)}
    parts.append(np.asarray(image_features(pooled, kind=kind, stats=stats,
                                           taps=taps)))
  return np.concatenate(parts)


def _cached_pooled(model, params, images, taps, batch_size, cache_path,
                   preprocess, mesh, desc):
  """((N, D) float32 pooled taps, per-tap dims), from the cache if valid."""
  meta = None
  if cache_path is not None:
    cache_path = os.fspath(cache_path)
    meta = {"version": _CACHE_VERSION, "taps": list(taps),
            "num_images": len(images),
            "fingerprint": _fingerprint(images, params, preprocess)}
    cached = _read_cache(cache_path, meta)
    if cached is not None:
      return cached
  raw, dims = _run_backbone(model, params, images, taps, batch_size,
                            preprocess, mesh, desc)
  if cache_path is not None:
    with files.atomic_write(cache_path, "wb") as f:
      np.save(f, raw)
    meta["dims"] = list(dims)
    # The .json goes last: it vouches for a complete .npy.
    files.write_json(cache_path + ".json", meta)
  return raw, dims


def _read_cache(cache_path, meta):
  try:
    with open(cache_path + ".json") as f:
      saved = json.load(f)
    dims = tuple(saved.pop("dims"))
    if saved != meta:
      logging.warning("FNE cache %s was made from other images, params, taps "
                      "or preprocessing; extracting again.", cache_path)
      return None
    raw = np.load(cache_path, mmap_mode="r", allow_pickle=False)
  except FileNotFoundError:
    return None
  except (OSError, ValueError, KeyError) as e:
    logging.warning("Ignoring unreadable FNE cache %s (%s).", cache_path, e)
    return None
  if raw.shape != (meta["num_images"], sum(dims)):
    logging.warning("FNE cache %s has shape %s, not %s; extracting again.",
                    cache_path, raw.shape, (meta["num_images"], sum(dims)))
    return None
  logging.info("Reusing FNE features from %s", cache_path)
  return raw, dims


def _fingerprint(images, params, preprocess) -> str:
  # Cheap but specific: shapes, the first and last images, and a strided
  # sample of every parameter.
  h = hashlib.sha256()
  first, last = np.asarray(images[:1]), np.asarray(images[-1:])
  h.update(repr((len(images), first.shape, first.dtype.str)).encode())
  h.update(first.tobytes())
  h.update(last.tobytes())
  for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(params),
                           key=lambda kv: jax.tree_util.keystr(kv[0])):
    leaf = np.asarray(leaf)
    h.update(jax.tree_util.keystr(path).encode() + repr(leaf.shape).encode())
    h.update(np.ascontiguousarray(leaf.reshape(-1)[::997]).tobytes())
  name = (preprocess if isinstance(preprocess, str)
          else getattr(preprocess, "__qualname__", repr(preprocess)))
  h.update(name.encode())
  return h.hexdigest()


def _run_backbone(model, params, images, taps, batch_size, preprocess, mesh,
                  desc):
  if isinstance(preprocess, str):
    mode = preprocess
    preprocess = lambda x: vgg.preprocess_imagenet(x, mode=mode)
  n = len(images)
  if n == 0:
    raise UserError("No images to extract features from.")
  first = np.asarray(images[:1])
  if first.dtype != np.uint8 or first.ndim != 4:
    raise UserError(f"Images must be uint8 (N, H, W, C); got {first.dtype} "
                    f"of shape {(n, *first.shape[1:])}.")
  mesh = parallel.create_mesh() if mesh is None else mesh
  if batch_size % mesh.devices.size:  # Unshardable: one device does it all.
    mesh = parallel.create_mesh(mesh.devices.flat[:1])

  @jax.jit
  def pooled_taps(params, batch):
    acts = model.apply({"params": params}, preprocess(batch), capture=True)
    return pool_activations(acts, taps)

  raw, bounds = None, None
  for start, rows, pooled in inference.iterate_batches(
      pooled_taps, params, (images,), batch_size=batch_size, mesh=mesh,
      desc=desc):
    if raw is None:
      dims = tuple(pooled[name].shape[1] for name in taps)
      bounds = np.cumsum((0,) + dims)
      raw = np.empty((n, bounds[-1]), np.float32)
    for i, name in enumerate(taps):
      raw[start:start + rows, bounds[i]:bounds[i + 1]] = pooled[name]
  return raw, dims

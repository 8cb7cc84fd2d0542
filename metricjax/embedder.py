"""What turns images into the embeddings of an index: a trained net, from
its checkpoint or from an exported-model file (metricjax/artifact.py), with
a reference that says which model it is."""

import dataclasses
import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np

from metricjax import artifact
from metricjax import restore as restore_lib
from metricjax.errors import UserError
from metricjax.inference import batched_apply


def fingerprint(variables) -> str:
  """SHA-256 of a variables pytree: paths, dtypes, shapes and values."""
  h = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(variables))[0]
  for path, leaf in sorted(leaves, key=lambda x: jax.tree_util.keystr(x[0])):
    a = np.ascontiguousarray(leaf)
    h.update(f"{jax.tree_util.keystr(path)} {a.dtype} {a.shape}\n".encode())
    h.update(a.tobytes())
  return "sha256:" + h.hexdigest()


def describe_image_shape(shape) -> str:
  """(H, W, C) in words, for errors about images of the wrong shape."""
  if len(shape) != 3:
    return f"an array of shape {tuple(shape)}"
  h, w, c = shape
  kind = {1: "1 channel (grayscale)", 3: "3 channels (RGB)"}.get(
      c, f"{c} channels")
  return f"{w}x{h} pixels with {kind}"


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
  """uint8 (N, H, W, C) images -> (N, D) embeddings, and which model it is.

  `reference` holds workdir, step, fingerprint (SHA-256 of the variables),
  image_shape and embedding_dim; an index stores it and refuses queries from
  a model with another fingerprint.
  """
  embed_fn: object  # images -> embeddings, numpy in and out.
  reference: dict
  module: object = None  # The Flax module and variables, from a checkpoint.
  variables: object = None

  @classmethod
  def from_checkpoint(cls, workdir: str, step: int | None = None) -> "Model":
    restored = restore_lib.restore(workdir, step)
    config, mesh = restored.config, restored.mesh
    if config.task != "retrieval":
      raise UserError(
          f"{workdir} holds a {config.task!r} model; search indexes embed "
          "images with a retrieval model (config.task = 'retrieval').")
    variables = {"params": restored.state.params,
                 "batch_stats": restored.state.batch_stats}
    image_shape = restored.meta.image_shape
    devices = mesh.devices.size
    # Jitted once: a model queried again does not compile again.
    apply = jax.jit(lambda v, x: restored.model.apply(v, x, train=False))

    def embed_fn(images):
      # Small query sets get a small batch rather than a padded full one.
      batch = min(config.eval.batch_size, -(-len(images) // devices) * devices)
      return batched_apply(apply, variables, (images,), batch_size=batch,
                           mesh=mesh, desc="embed")["embedding"]

    out = jax.eval_shape(
        lambda v, x: restored.model.apply(v, x, train=False), variables,
        jax.ShapeDtypeStruct((1, *image_shape), jnp.uint8))
    reference = dict(workdir=os.path.abspath(workdir), step=int(restored.step),
                     fingerprint=fingerprint(variables),
                     image_shape=list(image_shape),
                     embedding_dim=int(out["embedding"].shape[-1]))
    return cls(embed_fn, reference, restored.model, variables)

  @classmethod
  def from_export(cls, path: str) -> "Model":
    exported, header = artifact.load(path)
    batch = header["batch"]

    def embed_fn(images):
      if batch == "polymorphic":
        return np.asarray(exported.call(images))
      pad = -len(images) % batch
      images = np.concatenate([images, np.zeros((pad, *images.shape[1:]),
                                                images.dtype)])
      out = [np.asarray(exported.call(images[i:i + batch]))
             for i in range(0, len(images), batch)]
      return np.concatenate(out)[:len(images) - pad]

    return cls(embed_fn, dict(header["model"], export=os.path.abspath(path)))

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.reference["image_shape"])

  def __call__(self, images, names=None) -> np.ndarray:
    """Embeddings of uint8 images, an (N, H, W, C) array or a list of
    (H, W, C) ones; `names` (paths) make a wrong-shape error name the image."""
    for i, image in enumerate(images):
      image = np.asarray(image)
      if image.dtype != np.uint8:
        raise UserError(f"Images must be uint8, got {image.dtype}.")
      if image.shape != self.image_shape:
        what = f"Query image {names[i]}" if names is not None else "An image"
        raise UserError(
            f"{what} is {describe_image_shape(image.shape)}; the model takes "
            f"{describe_image_shape(self.image_shape)}. Resize or convert it "
            "to match the images the model was trained on.")
    if len(images) == 0:
      return np.zeros((0, self.reference["embedding_dim"]), np.float32)
    return np.asarray(self.embed_fn(np.stack(images)), np.float32)

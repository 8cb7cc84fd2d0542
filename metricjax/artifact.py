"""The exported-model file: an embedding function serialised with jax.export.

The file holds the embedding function, uint8 NHWC images -> embeddings,
serialised with `jax.export` (StableHLO) with the parameters and batch
statistics baked in as constants, so it runs without metricjax, Flax or the
checkpoint: `jax.export.deserialize(payload).call(images)`. A short JSON
header in front records the model reference (workdir, step, SHA-256 of the
variables; an index built with the same model accepts it), the input shape
and the payload's length and SHA-256, so a truncated file is detected.

Layout: the line "METRICJAX-EXPORT", one line of JSON, the payload.
`python -m metricjax.export` writes one from a checkpoint.
"""

import hashlib
import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metricjax.errors import UserError
from metricjax.files import atomic_write

MAGIC = b"METRICJAX-EXPORT\n"
FORMAT_VERSION = 1


def export_embedding(model, variables, image_shape, *, batch: int | None):
  """jax.export of images -> model.apply(...)["embedding"], variables baked in.

  Args:
    model: a Flax module whose apply(variables, images, train=False) returns
      a dict with "embedding".
    variables: its variables ({"params", "batch_stats"}).
    image_shape: (H, W, C) of one uint8 image.
    batch: images per call, or None for a symbolic batch dimension.
  """
  # Host copies: constants must not stay tied to the training mesh.
  variables = jax.tree.map(np.asarray, jax.device_get(variables))

  def embed(images):
    return model.apply(variables, images, train=False)["embedding"]

  h, w, c = image_shape
  shape = (jax.export.symbolic_shape(f"b, {h}, {w}, {c}") if batch is None
           else (batch, h, w, c))
  return jax.export.export(jax.jit(embed))(
      jax.ShapeDtypeStruct(shape, jnp.uint8))


def write(path: str, exported, header: dict) -> int:
  """Writes header + serialised `exported` atomically; returns the bytes."""
  payload = bytes(exported.serialize())
  header = dict(header, format="metricjax-export", version=FORMAT_VERSION,
                payload_bytes=len(payload),
                payload_sha256=hashlib.sha256(payload).hexdigest())
  line = json.dumps(header, sort_keys=True).encode() + b"\n"
  with atomic_write(path, "wb") as f:
    f.write(MAGIC + line + payload)
  return len(MAGIC) + len(line) + len(payload)


class Loaded(NamedTuple):
  exported: jax.export.Exported
  header: dict


def load(path: str) -> Loaded:
  """Reads a file written by `write`; a UserError when it is not whole."""
  hint = ("Export it again with `python -m metricjax.export --workdir=DIR "
          f"--out={path}`.")
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise UserError(f"Cannot read the exported model {path}: "
                    f"{e.strerror or e}.") from None
  if not data.startswith(MAGIC):
    raise UserError(f"{path} is not a metricjax exported model (it does not "
                    f"start with {MAGIC.strip().decode()}). {hint}")
  end = data.find(b"\n", len(MAGIC))
  try:
    header = json.loads(data[len(MAGIC):end]) if end > 0 else None
  except ValueError:
    header = None
  payload = data[end + 1:]
  if (not isinstance(header, dict) or len(payload) != header.get("payload_bytes")
      or hashlib.sha256(payload).hexdigest() != header.get("payload_sha256")):
    raise UserError(f"The exported model {path} is truncated or corrupt "
                    f"({len(data):,} bytes). {hint}")
  if header.get("version") != FORMAT_VERSION:
    raise UserError(f"{path} has export format version {header.get('version')}"
                    f"; this metricjax reads version {FORMAT_VERSION}. {hint}")
  return Loaded(jax.export.deserialize(bytearray(payload)), header)

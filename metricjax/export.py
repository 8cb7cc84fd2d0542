r"""Exports a trained embedding net as one self-contained file for devices.

  python -m metricjax.export --workdir=DIR [--step=N] --out=model.jaxexport \
      [--batch=N | --batch=polymorphic]

The file holds the embedding function, uint8 NHWC images -> embeddings,
serialised with `jax.export` (StableHLO) with the parameters and batch
statistics baked in as constants, so it runs without metricjax, Flax or the
checkpoint: `jax.export.deserialize(payload).call(images)`. A short JSON
header in front records the model reference (workdir, step, SHA-256 of the
variables; an index built with the same model accepts it), the input shape
and the payload's length and SHA-256, so a truncated file is detected.

Layout: the line "METRICJAX-EXPORT", one line of JSON, the payload.
"""

import hashlib
import json
import os
from typing import NamedTuple

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from metricjax import cli
from metricjax import models
from metricjax.errors import UserError, exit_on_user_error, parse_flags_or_exit
from metricjax.io import atomic_write

MAGIC = b"METRICJAX-EXPORT\n"
FORMAT_VERSION = 1

FLAGS = flags.FLAGS


def _define_flags():
  flags.DEFINE_string("workdir", None, "A directory written by metricjax.train.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("out", None, "The file to write, e.g. model.jaxexport.")
  flags.DEFINE_string("batch", "polymorphic",
                      "Images per call: a number, or 'polymorphic' for any.")
  flags.mark_flags_as_required(["workdir", "out"])


def parse_batch(batch) -> int | None:
  """'polymorphic' -> None; '8' or 8 -> 8."""
  if batch is None or str(batch) == "polymorphic":
    return None
  try:
    value = int(batch)
  except ValueError:
    value = 0
  if value < 1:
    raise UserError(f"--batch={batch!r}: give a positive number of images per "
                    "call, or 'polymorphic' for any batch size.")
  return value


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


def export(workdir: str, out: str, *, step: int | None = None,
           batch: int | None = None) -> dict:
  """Checkpoint -> `out`; returns the header with the measured sizes."""
  from metricjax import search  # The model reference lives with the index.
  model = search.Model.from_checkpoint(workdir, step)
  variables = model.variables
  exported = export_embedding(model.module, variables,
                              model.reference["image_shape"], batch=batch)
  params = variables["params"]
  header = dict(
      model=model.reference, batch="polymorphic" if batch is None else batch,
      num_params=models.count_params(params),
      param_bytes=models.param_bytes(params),
      constant_bytes=models.param_bytes(variables),
      input=dict(shape=str(exported.in_avals[0].shape), dtype="uint8"),
      output=dict(shape=str(exported.out_avals[0].shape),
                  dtype=str(exported.out_avals[0].dtype)),
      platforms=list(exported.platforms), jax_version=jax.__version__)
  header["file_bytes"] = write(out, exported, header)
  return header


def format_report(out: str, header: dict) -> str:
  size = header["file_bytes"]
  return "\n".join([
      f"wrote       {out}",
      f"artifact    {size:,} bytes ({size / 1e6:.3f} MB) on disk",
      f"parameters  {header['num_params']:,} float32 = "
      f"{header['param_bytes']:,} bytes ({header['param_bytes'] / 1e6:.3f} MB);"
      f" with batch statistics {header['constant_bytes']:,} bytes",
      f"function    uint8 {header['input']['shape']} -> "
      f"{header['output']['dtype']} {header['output']['shape']} "
      f"({', '.join(header['platforms'])})",
      f"model       {header['model']['workdir']} step {header['model']['step']}"
      f" ({header['model']['fingerprint'][:19]}...)",
  ])


@exit_on_user_error
def main(argv):
  if len(argv) > 1:
    raise UserError(f"Unexpected arguments: {' '.join(argv[1:])}.")
  cli.quiet_logging()
  header = export(FLAGS.workdir, FLAGS.out, step=FLAGS.step,
                  batch=parse_batch(FLAGS.batch))
  print(format_report(os.path.abspath(FLAGS.out), header))


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=parse_flags_or_exit)

r"""Exports a trained embedding net as one self-contained file for devices.

  python -m metricjax.export --workdir=DIR [--step=N] --out=model.jaxexport \
      [--batch=N | --batch=polymorphic]
  python -m metricjax.export --workdir=DIR --format=onnx --out=model.onnx

The file (metricjax/artifact.py) holds the embedding function, uint8 NHWC
images -> embeddings, serialised with `jax.export` (StableHLO) with the
parameters and batch statistics baked in, so it runs without metricjax,
Flax or the checkpoint: `jax.export.deserialize(payload).call(images)`;
its header records the model reference, so an index built with the same
model accepts it. --format=onnx writes the same function as an ONNX model
instead (metricjax/onnx_export.py), for runtimes without JAX.

`export_trained_vgg` writes the other export, a trained VGG's weights as an
FNE backbone .npz (tools/export_vgg_backbone.py is its command line).
"""

import os

from absl import app
from absl import flags
import jax

from metricjax import artifact
from metricjax import cli
from metricjax import models
from metricjax import onnx_export
from metricjax import restore as restore_lib
from metricjax.embedder import Model
from metricjax.errors import UserError, exit_on_user_error, parse_flags_or_exit
from metricjax.models import weights

FLAGS = flags.FLAGS
# jaxexport: metricjax/artifact.py's file (jax.export); onnx: an ONNX model.
FORMATS = ("jaxexport", "onnx")


def _define_flags():
  flags.DEFINE_string("workdir", None, "A directory written by metricjax.train.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("out", None, "The file to write, e.g. model.jaxexport.")
  flags.DEFINE_string("batch", "polymorphic",
                      "Images per call: a number, or 'polymorphic' for any.")
  # A string, not an enum: an unknown format is a UserError (exit 2) like
  # every other bad input here.
  flags.DEFINE_string("format", "jaxexport",
                      f"The file's format: {' or '.join(FORMATS)}.")
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


def check_format(fmt: str) -> str:
  if fmt not in FORMATS:
    raise UserError(f"--format={fmt!r} is not an export format; use one of "
                    f"{', '.join(FORMATS)} (jaxexport: the jax.export file "
                    "search and the device tools read; onnx: an ONNX model "
                    "for runtimes without JAX).")
  return fmt


def export(workdir: str, out: str, *, step: int | None = None,
           batch: int | None = None, fmt: str = "jaxexport") -> dict:
  """Checkpoint -> `out` in format fmt (FORMATS); returns the header with
  the measured sizes."""
  check_format(fmt)
  model = Model.from_checkpoint(workdir, step)
  variables = model.variables
  params = variables["params"]
  header = dict(
      model=model.reference, batch="polymorphic" if batch is None else batch,
      num_params=models.count_params(params),
      param_bytes=models.param_bytes(params),
      constant_bytes=models.param_bytes(variables), jax_version=jax.__version__)
  if fmt == "onnx":
    proto = onnx_export.export_onnx(
        model.module, variables, model.reference["image_shape"], batch=batch)
    header.update(onnx_export.signature(proto), platforms=["onnx"])
    header["file_bytes"] = onnx_export.write(out, proto, header)
    return header
  exported = artifact.export_embedding(
      model.module, variables, model.reference["image_shape"], batch=batch)
  header.update(
      input=dict(shape=str(exported.in_avals[0].shape), dtype="uint8"),
      output=dict(shape=str(exported.out_avals[0].shape),
                  dtype=str(exported.out_avals[0].dtype)),
      platforms=list(exported.platforms))
  header["file_bytes"] = artifact.write(out, exported, header)
  return header


def export_trained_vgg(workdir: str, out: str, step: int | None = None) -> dict:
  """A VGG trained here (config.model.name "vgg") -> an FNE backbone .npz,
  the format of models/weights.py's save_npz; returns its meta."""
  restored = restore_lib.restore(workdir, step)
  model = restored.model
  if not isinstance(model, models.VGGNet):
    raise UserError(f"{workdir} holds a {type(model).__name__}, not a VGG "
                    "(config.model.name='vgg'); nothing to export.")
  arch = dict(blocks=model.blocks, fc_dims=model.fc_dims,
              num_classes=model.num_classes, pool_size=model.pool_size)
  meta = dict(arch="vgg", framework="metricjax", model=arch,
              preprocess=model.preprocess,
              image_size=restored.meta.image_shape[0],
              num_classes=model.num_classes, has_fc=bool(model.fc_dims),
              source=f"{os.path.abspath(workdir)} step {restored.step}",
              trained_on=restored.meta.name)
  weights.save_npz(out, jax.device_get(restored.state.params["vgg"]), meta)
  return meta


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
  fmt = check_format(FLAGS.format)
  header = export(FLAGS.workdir, FLAGS.out, step=FLAGS.step,
                  batch=parse_batch(FLAGS.batch), fmt=fmt)
  print(format_report(os.path.abspath(FLAGS.out), header))


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=parse_flags_or_exit)

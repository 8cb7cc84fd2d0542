r"""Exports a VGG trained here (config.model.name "vgg") as an FNE backbone.

  python tools/export_vgg_backbone.py --workdir=runs/cifar_vgg \
      --out=runs/cifar_vgg.npz [--step=N]

Writes the .npz that tools/convert_vgg16.py writes for ImageNet weights:
the VGG's params, and a meta with its architecture ("model"), input size and
preprocessing, so configs/fne_vse.py takes it with backbone=vgg.
"""

import os
import sys

from absl import app
from absl import flags
import jax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from metricjax import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
from metricjax.errors import exit_on_user_error
from metricjax.errors import UserError
from metricjax.models import convert
from metricjax.models import VGGNet


def export(workdir: str, out: str, step: int | None = None) -> dict:
  """Writes out (.npz) from a checkpoint of workdir; returns its meta."""
  restored = evaluate_lib.restore(workdir, step)
  model = restored.model
  if not isinstance(model, VGGNet):
    raise UserError(f"{workdir} holds a {type(model).__name__}, not a VGG "
                    "(config.model.name='vgg'); nothing to export.")
  arch = dict(blocks=model.blocks, fc_dims=model.fc_dims,
              num_classes=model.num_classes, pool_size=model.pool_size)
  meta = dict(arch="vgg", framework="metricjax", model=arch,
              preprocess=model.preprocess,
              image_size=restored.meta["dataset"]["image_shape"][0],
              num_classes=model.num_classes, has_fc=bool(model.fc_dims),
              source=f"{os.path.abspath(workdir)} step {restored.step}",
              trained_on=restored.meta["dataset"]["name"])
  convert.save_params_npz(out, jax.device_get(restored.state.params["vgg"]),
                          meta)
  return meta


@exit_on_user_error
def main(argv):
  del argv
  meta = export(FLAGS.workdir, FLAGS.out, FLAGS.step)
  print(f"wrote {FLAGS.out} (VGG from {meta['source']}, "
        f"{meta['image_size']}px, preprocess={meta['preprocess']!r})")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "A run of metricjax.train with a VGG.")
  flags.DEFINE_string("out", None, "Output .npz.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.mark_flags_as_required(["workdir", "out"])
  FLAGS = flags.FLAGS
  app.run(main)

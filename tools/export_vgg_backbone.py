r"""Exports a VGG trained here (config.model.name "vgg") as an FNE backbone.

  python tools/export_vgg_backbone.py --workdir=runs/cifar_vgg \
      --out=runs/cifar_vgg.npz [--step=N]

Writes the .npz that tools/convert_vgg16.py writes for ImageNet weights:
the VGG's params, and a meta with its architecture ("model"), input size and
preprocessing, so configs/fne_vse.py takes it with backbone=vgg.
"""

from absl import app
from absl import flags

from metricjax import export
from metricjax.errors import exit_on_user_error

flags.DEFINE_string("workdir", None, "A run of metricjax.train with a VGG.")
flags.DEFINE_string("out", None, "Output .npz.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.mark_flags_as_required(["workdir", "out"])
FLAGS = flags.FLAGS


@exit_on_user_error
def main(argv):
  del argv
  meta = export.export_trained_vgg(FLAGS.workdir, FLAGS.out, FLAGS.step)
  print(f"wrote {FLAGS.out} (VGG from {meta['source']}, "
        f"{meta['image_size']}px, preprocess={meta['preprocess']!r})")


if __name__ == "__main__":
  app.run(main)

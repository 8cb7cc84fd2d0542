r"""Writes the SYNTHETIC captioned demo dataset (Karpathy JSON + PNGs).

  python tools/make_caption_demo.py --out=$METRICJAX_DATA_DIR/caption_demo \
      [--dataset=cifar10] [--train=5000 --val=500 --test=500] [--seed=0]

Captions are generated from class names and measured image attributes
(metricjax/data/caption_demo.py); see the README.txt written beside them.
Then `load_captions("caption_demo", split)` finds it under
$METRICJAX_DATA_DIR.
"""


from absl import app
from absl import flags

from metricjax.data import caption_demo
from metricjax.data import load_dataset
from metricjax.errors import exit_on_user_error

flags.DEFINE_string("out", None, "Output folder.")
flags.DEFINE_string("dataset", "cifar10",
                    "Source images: any metricjax.data.load_dataset name with "
                    "train and test splits (cifar10, fashion_mnist, ...).")
flags.DEFINE_integer("train", 5000, "Training images.")
flags.DEFINE_integer("val", 500, "Validation images (from the training split).")
flags.DEFINE_integer("test", 500, "Test images (from the test split).")
flags.DEFINE_integer("seed", 0, "Seed of the image choice and the phrasing.")
flags.mark_flag_as_required("out")
FLAGS = flags.FLAGS


@exit_on_user_error
def main(argv):
  del argv
  train = load_dataset(FLAGS.dataset, "train")
  test = load_dataset(FLAGS.dataset, "test")
  path = caption_demo.write_caption_demo(
      FLAGS.out, train, test, sizes=(FLAGS.train, FLAGS.val, FLAGS.test),
      seed=FLAGS.seed)
  print(f"wrote {path} ({FLAGS.train}/{FLAGS.val}/{FLAGS.test} images from "
        f"{train.name}; synthetic captions)")


if __name__ == "__main__":
  app.run(main)

r"""Converts ImageNet VGG16 weights to metricjax's .npz (Flax params + meta).

  python tools/convert_vgg16.py --torch=vgg16-397923af.pth --out=vgg16.npz
  python tools/convert_vgg16.py \
      --keras=vgg16_weights_tf_dim_ordering_tf_kernels.h5 --out=vgg16.npz

The .npz records which input preprocessing the weights expect ("torch" for
torchvision, "caffe" for Keras); metricjax.models.weights.read_npz
returns it in the meta. A check runs the converted net on a random image.
"""

import os

from absl import app
from absl import flags
import jax
import numpy as np

from metricjax.errors import exit_on_user_error
from metricjax.errors import UserError
from metricjax.models import convert
from metricjax.models import vgg
from metricjax.models import weights

flags.DEFINE_string("torch", None, "torchvision vgg16 state_dict (.pth).")
flags.DEFINE_string("keras", None, "Keras VGG16 weights (.h5).")
flags.DEFINE_string("out", None, "Output .npz.")
flags.DEFINE_bool("check", True, "Run the converted net once on random input.")
flags.mark_flag_as_required("out")
FLAGS = flags.FLAGS


def _load_torch_state_dict(path):
  try:
    import torch
  except ImportError:
    raise UserError("Reading a .pth file needs PyTorch (`pip install "
                    "torch`).") from None
  if not os.path.isfile(path):
    raise UserError(f"--torch={path}: no such file.")
  sd = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(sd, dict):
    raise UserError(f"--torch={path} holds a {type(sd).__name__}, not a "
                    "state_dict; save model.state_dict() instead.")
  return sd.get("state_dict", sd)


@exit_on_user_error
def main(argv):
  del argv
  if bool(FLAGS.torch) == bool(FLAGS.keras):
    raise UserError("Give exactly one of --torch=FILE.pth or --keras=FILE.h5.")
  if FLAGS.torch:
    state_dict = _load_torch_state_dict(FLAGS.torch)
    params = convert.vgg16_params_from_torch(state_dict)
    meta = {"arch": "vgg16", "source": os.path.basename(FLAGS.torch),
            "framework": "torchvision", "preprocess": "torch"}
  else:
    params = convert.vgg16_params_from_keras(FLAGS.keras)
    meta = {"arch": "vgg16", "source": os.path.basename(FLAGS.keras),
            "framework": "keras", "preprocess": "caffe"}
  meta["num_classes"] = (int(params["fc8"]["bias"].size) if "fc8" in params
                         else None)
  meta["has_fc"] = "fc6" in params
  # The architecture, as kwargs of models.vgg16 (models.load_backbone).
  meta["model"] = {"num_classes": meta["num_classes"],
                   "fc_dims": (4096, 4096) if meta["has_fc"] else ()}
  if FLAGS.check:
    model = vgg.vgg16(**meta["model"])
    images = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3),
                                               np.uint8)
    x = vgg.preprocess_imagenet(images, mode=meta["preprocess"])
    out = jax.jit(model.apply)({"params": params}, x)
    print(f"check: output {tuple(out.shape)}, finite: "
          f"{bool(np.isfinite(np.asarray(out)).all())}")
  weights.save_npz(FLAGS.out, params, meta)
  print(f"wrote {FLAGS.out} ({meta['framework']} weights, preprocess="
        f"{meta['preprocess']!r})")


if __name__ == "__main__":
  app.run(main)

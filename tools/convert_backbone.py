r"""Converts the PyTorch state_dict of a registered backbone (--arch: any
name of metricjax.models.TRUNKS, models/backbones.py: a torchvision ResNet,
a DINO / timm ViT-S/16, an efficientnet_lite_pytorch EfficientNet-Lite, ...)
to metricjax's weights .npz (metricjax/models/weights.py).

  python tools/convert_backbone.py --arch=resnet50 \
      --torch=resnet50-11ad3fa6.pth --out=resnet50.npz
  python tools/convert_backbone.py --arch=vit_s16 \
      --torch=dino_deitsmall16_pretrain.pth --out=vit_s16.npz
  python tools/convert_backbone.py --arch=efficientnet_lite0 \
      --torch=efficientnet-lite0-57934424.pth --out=efficientnet_lite0.npz

Every tensor is checked against the architecture before anything is
written; the classifier (fc / head / _fc) is dropped. (weights=
efficientnet_lite0 converts the packaged checkpoint itself:
metricjax/models/packaged.py.) Then
`metricjax.models.load_backbone(out)` -> (module, variables), and configs
take `weights=out` (configs/dml_benchmark.py).
"""

import os

from absl import app
from absl import flags
import jax
import numpy as np

from metricjax.errors import exit_on_user_error
from metricjax.models import backbones
from metricjax.models import weights

flags.DEFINE_enum("arch", None, list(backbones.TRUNKS), "The architecture "
                  "(metricjax.models.TRUNKS).")
flags.DEFINE_string("torch", None, "state_dict saved by torch.save (.pth).")
flags.DEFINE_string("out", None, "Output .npz.")
flags.DEFINE_bool("check", True, "Run the converted trunk once on random "
                  "input.")
for _name in ("arch", "torch", "out"):
  flags.mark_flag_as_required(_name)
FLAGS = flags.FLAGS


@exit_on_user_error
def main(argv):
  del argv
  flat, meta = weights.convert_torch(weights.load_torch(FLAGS.torch),
                                     FLAGS.arch,
                                     source=os.path.basename(FLAGS.torch))
  if FLAGS.check:
    module = weights.build(meta, FLAGS.torch)
    variables = weights.place(flat, weights.target_shapes(module, meta),
                              FLAGS.torch)
    size = meta.get("image_size", 224)
    x = np.random.default_rng(0).normal(size=(1, size, size, 3))
    out = jax.jit(lambda v, x: module.apply(v, x, train=False))(
        variables, x.astype(np.float32))
    print(f"check: features {tuple(out.shape)}, finite: "
          f"{bool(np.isfinite(np.asarray(out)).all())}")
  weights.save_npz(FLAGS.out, flat, meta)
  print(f"wrote {FLAGS.out} ({FLAGS.arch}, {len(flat)} tensors)")


if __name__ == "__main__":
  app.run(main)

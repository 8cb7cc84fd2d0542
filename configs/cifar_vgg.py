r"""A slim VGG classifier on CIFAR-10, the offline stand-in for ImageNet VGG16
as the frozen backbone of the Full-Network Embedding (paper 3).

  python -m metricjax.train --config=configs/cifar_vgg.py --workdir=runs/cifar_vgg
  python tools/export_vgg_backbone.py --workdir=runs/cifar_vgg --out=runs/cifar_vgg.npz

VGG16's layout (13 convs in 5 blocks, fc6, fc7, fc8) at an eighth of its
width, so FNE has every layer to read; 32x32 input pools to 1x1 before
fc6. Trained with cross-entropy through the retrieval task; a few minutes
on a CPU: it only needs to be a real trained CNN, not a good one.
"""

from metricjax.config_utils import base_config
from metricjax.config_utils import parse_arg

# 8 to 64 channels instead of 64 to 512: about 5M multiply-adds per 32x32
# image, 3-6 steps/s of batch 128 on two shared CPU cores.
SLIM_BLOCKS = ((8, 8), (16, 16), (32, 32, 32), (64, 64, 64), (64, 64, 64))


def get_config(arg=None):
  arg = parse_arg(arg, dataset="cifar10")
  config = base_config()
  config.dataset = arg.dataset

  config.model = dict(name="vgg", blocks=SLIM_BLOCKS, fc_dims=(256, 256),
                      pool_size=(1, 1), preprocess="torch")
  # A classifier trained with cross-entropy on uniform batches of 128.
  config.classification_head = True
  config.loss.name = "ce"
  config.sampler = "uniform"
  config.augment = True

  config.total_steps = 1500  # ~4 epochs.
  config.log_every = 100
  config.keep_checkpoints = 1
  config.val_size = 2000  # Held out when validating (--config.eval_every=N).
  return config

r"""Paper 1: compact similarity-search model with one involution layer.

Islam et al., "Spatially Optimized Compact Deep Metric Learning Model for
Similarity Search" (arXiv 2404.06593). Where the paper is silent the choice
is ours and says so below.

  python -m metricjax.train --config=configs/compact_involution.py \
      --workdir=/tmp/fmnist_ms
  python -m metricjax.train \
      --config=configs/compact_involution.py:dataset=cifar10,loss=ce \
      --workdir=/tmp/cifar_ce --config.total_steps=4000
"""

from metricjax.config_utils import base_config
from metricjax.config_utils import parse_arg
from metricjax.losses import spec as loss_spec


def get_config(arg=None):
  arg = parse_arg(arg, dataset="fashion_mnist", loss="ms", variant="hybrid1",
                  activation="gelu")
  config = base_config()
  config.dataset = arg.dataset

  config.model = dict(name="compact", variant=arg.variant,
                      activation=arg.activation, widths=(32, 64, 64, 96),
                      embedding_dim=64)
  # CE trains the classification head; the embedding is what retrieval uses.
  config.classification_head = arg.loss == "ce"

  # Any registered loss; those with learnable parameters (proxies, class
  # weights) train them at config.loss.param_lr_multiplier x the learning
  # rate.
  # A loss, or a loss with its miner: loss=contrastive+multi_similarity_miner
  # (metricjax/losses/spec.py).
  loss_spec.configure(config.loss, arg.loss)
  if arg.loss == "ms":
    # pytorch-metric-learning defaults (the paper does not give its own).
    config.loss.kwargs = dict(alpha=2.0, beta=50.0, base=0.5, epsilon=0.1)

  # Metric losses see P classes x K images per batch; CE samples uniformly.
  config.sampler = "balanced" if arg.loss != "ce" else "uniform"
  config.batch_size = 256
  config.samples_per_class = 32  # P = 256 / 32 = 8 classes per batch.
  # Random crop (pad 4) + horizontal flip only where the paper's datasets
  # are not centred digits/garments.
  config.augment = arg.dataset == "cifar10"

  config.total_steps = 1000 if arg.dataset != "cifar10" else 6000
  config.learning_rate = 3e-3

  # Validation (--config.eval_every=N) on 2000 training images, held out of
  # training when it is on (stratified by class).
  config.val_size = 2000
  return config

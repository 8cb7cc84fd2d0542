r"""Paper 2: Shadow loss vs Triplet loss in a Siamese network.

Khan et al., "Shadow: A Novel Loss Function for Efficient Training in Siamese
Networks" (arXiv 2311.14012). One network with shared weights embeds anchor,
positive and negative; the two losses differ only in the per-pair term.

  python -m metricjax.train --config=configs/siamese.py:loss=shadow --workdir=/tmp/shadow
  python -m metricjax.train --config=configs/siamese.py:loss=triplet --workdir=/tmp/triplet

Arguments:
  loss       shadow | triplet
  mining     random: explicit random (a, p, n) triplets, batch_size of them;
             all | hard | semihard: triplets mined in a P x K labelled batch.
  normalize  L2-normalise the embeddings (model output and loss input).
  margin     shadow: in units of delta = 1 - cos on unit vectors; triplet:
             of the euclidean distance. Shadow(m) on unit vectors equals
             half the squared-euclidean triplet loss with margin 2m.
  distance   triplet only: euclidean | squared_euclidean | cosine.
  keep       fraction of the examples kept in classes 0-4 (1 = balanced).
"""

from metricjax.config_utils import base_config
from metricjax.config_utils import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, dataset="fashion_mnist", loss="shadow", mining="random",
                  normalize=True, margin=0.2, distance="euclidean", keep=1.0,
                  variant="hybrid1")
  config = base_config()
  config.dataset = arg.dataset
  if arg.keep < 1:  # Classes 0-4 keep `keep` of their examples.
    config.imbalance.classes = tuple(range(5))
    config.imbalance.keep_fraction = arg.keep

  # Embedding size 64 as in the paper's v2; the backbone is paper 1's.
  config.model = dict(name="compact", variant=arg.variant, activation="gelu",
                      widths=(32, 64, 64, 96), embedding_dim=64,
                      normalize_embedding=arg.normalize)

  explicit = arg.mining == "random"
  config.loss.name = f"{arg.loss}_explicit" if explicit else arg.loss
  config.loss.kwargs = dict(margin=arg.margin, normalize=arg.normalize)
  if not explicit:
    config.loss.kwargs.mining = arg.mining
  if arg.loss == "triplet":
    config.loss.kwargs.distance = arg.distance
  config.sampler = "triplets" if explicit else "balanced"
  # Explicit: 88 triplets = 264 images a step; mined: 8 classes x 32 = 256.
  config.batch_size = 88 if explicit else 256
  config.samples_per_class = 32
  config.augment = arg.dataset == "cifar10"

  config.total_steps = 1500
  config.keep_checkpoints = 2
  # Learning curves for "epochs to converge": validation every 100 steps on
  # 2000 training images held out of training (stratified by class).
  config.eval_every = 100
  config.val_size = 2000
  return config

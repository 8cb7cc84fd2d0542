r"""The field's deep metric learning benchmarks: CUB-200-2011, Cars196,
Stanford Online Products, In-Shop, or a CSV catalogue of photos.

Each dataset is read in its official layout under $METRICJAX_DATA_DIR
(CUB_200_2011/, cars196/, Stanford_Online_Products/, inshop/; see
metricjax/data/benchmarks.py) with the class-disjoint split of the field,
decoded on the host by the photo pipeline (RandomResizedCrop + flip for
training, resize + centre crop for evaluation), and evaluated with the
benchmark's Recall@K convention, P@1, R-Precision, MAP@R and k-means NMI /
AMI.

  python -m metricjax.train \
      --config=configs/dml_benchmark.py:dataset=cub,backbone=compact,image_size=64 \
      --workdir=/tmp/cub
  python -m metricjax.evaluate --workdir=/tmp/cub

The backbone is picked by name (BACKBONES below, each a model config of
the metricjax.models registry); image_size and embedding_dim apply to all.
resnet18 | resnet50 | vit_s16 are pretrained trunks (models.EmbeddingNet:
frozen batch norm for the ResNets, global average + max pooling, a linear
512-d head, L2-normalised), filled from weights=FILE.npz
(tools/convert_backbone.py; without it they start from random weights).

protocol= sets the training recipe of a published comparison:
  reality_check  Musgrave et al. 2020 (powerful-benchmarker's configs):
                 512-d, batches of 32 = 8 classes x 4, RandomResizedCrop
                 227 + flip, RMSprop at 1e-6 (momentum 0.9, weight decay
                 1e-4) for trunk, head and loss. The paper's BN-Inception is
                 not available here: ResNet-50 stands in (backbone=resnet50,
                 the default), so figures are not the paper's.
  proxy_anchor   Kim et al. 2020: ResNet-50, 512-d, batches of 180, AdamW
                 at 1e-4 with the proxies at 1e-2 (param_lr_multiplier 100),
                 224 px.
Validation on held-out training classes is not available for photo
benchmarks yet (metricjax/tasks/retrieval.py refuses eval_every there).

  python -m metricjax.train --config=configs/dml_benchmark.py:dataset=cub,\
      loss=ms,backbone=resnet50,weights=resnet50.npz,protocol=proxy_anchor \
      --workdir=/tmp/cub_pa
"""

import ml_collections

from metricjax.config_utils import add_shared_fields
from metricjax.config_utils import parse_arg
from metricjax.errors import UserError
from metricjax.tasks.retrieval import recall_ks

# backbone name -> config.model (its `name` is the models registry entry).
BACKBONES = {
    "compact": dict(name="compact", variant="hybrid1", activation="gelu",
                    widths=(32, 64, 128, 256)),
    **{name: dict(name="embedding_net", backbone=name)
       for name in ("resnet18", "resnet50", "vit_s16")},
}
PROTOCOLS = ("reality_check", "proxy_anchor")


def get_config(arg=None):
  arg = parse_arg(arg, dataset="cub", loss="ms", backbone="compact",
                  image_size=0, embedding_dim=512, weights="", protocol="")
  if arg.backbone not in BACKBONES:
    raise UserError(f"backbone={arg.backbone!r}; known: "
                    f"{', '.join(sorted(BACKBONES))}.")
  if arg.protocol and arg.protocol not in PROTOCOLS:
    raise UserError(f"protocol={arg.protocol!r}; known: "
                    f"{', '.join(PROTOCOLS)} (or none for the defaults).")
  if arg.weights and BACKBONES[arg.backbone]["name"] != "embedding_net":
    raise UserError(f"weights= fills a pretrained trunk; backbone="
                    f"{arg.backbone!r} has none (use resnet18, resnet50 or "
                    "vit_s16).")
  if not arg.image_size:
    arg.image_size = 227 if arg.protocol == "reality_check" else 224
  config = ml_collections.ConfigDict()
  add_shared_fields(config)
  config.dataset = arg.dataset  # cub | cars196 | sop | inshop | csv:FILE
  config.train_split = "train"
  config.eval_split = "test"
  config.image_size = arg.image_size

  config.model = dict(BACKBONES[arg.backbone], embedding_dim=arg.embedding_dim)
  if arg.weights:
    config.model.weights = arg.weights
  config.classification_head = arg.loss == "ce"
  config.loss = dict(name=arg.loss, kwargs={}, param_lr_multiplier=1.0)
  if arg.loss == "ms":
    # pytorch-metric-learning defaults.
    config.loss.kwargs = dict(alpha=2.0, beta=50.0, base=0.5, epsilon=0.1)

  # P x K class-balanced batches (K = 4, as most of the field): 32 classes.
  config.sampler = "balanced" if arg.loss != "ce" else "uniform"
  config.batch_size = 128
  config.samples_per_class = 4
  config.data = dict(
      placement="stream",  # Photo benchmarks always stream from the host.
      boxes=False,  # Crop CUB / Cars196 to their bounding boxes first.
      crop_scale=(0.16, 1.0), crop_ratio=(3 / 4, 4 / 3), flip=True,
      # Evaluation: shorter side to eval_resize (0: image_size * 256 / 224),
      # then the centre image_size crop.
      eval_resize=0,
      draft=True,  # Reduced-DCT JPEG decoding when the view loses nothing.
      skip_corrupt=False,  # True: skip (and count) undecodable images.
      num_threads=8, prefetch=256,  # grain's decode threads and queue.
      workers=0)  # > 0: decode in that many processes (grain mp_prefetch).
  config.augment = False  # The host pipeline augments.

  config.total_steps = 3000
  config.learning_rate = 1e-3
  config.warmup_steps = 100
  config.weight_decay = 1e-4

  config.log_every = 50
  config.checkpoint_every = 500
  config.keep_checkpoints = 3

  config.eval = dict(batch_size=256, ks=recall_ks(arg.dataset),
                     clustering=True, kmeans_max_iter=100)
  config.eval_every = 0
  config.val_size = 0
  if arg.protocol == "reality_check":
    config.batch_size, config.samples_per_class = 32, 4
    config.data.crop_scale = (0.08, 1.0)  # torchvision's RandomResizedCrop.
    config.optimizer, config.momentum = "rmsprop", 0.9
    config.learning_rate, config.weight_decay = 1e-6, 1e-4
    config.warmup_steps = 0
  elif arg.protocol == "proxy_anchor":
    config.batch_size = 180  # 45 classes x 4.
    config.optimizer, config.learning_rate = "adamw", 1e-4
    config.loss.param_lr_multiplier = 100.0  # Proxies at 1e-2.
  return config

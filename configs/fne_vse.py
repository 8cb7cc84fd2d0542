r"""Paper 3: the Full-Network Embedding in a visual-semantic embedding pipeline.

Vilalta et al., "Full-Network Embedding in a Multimodal Embedding Pipeline"
(arXiv 1707.09872): the image side of Kiros et al.'s VSE (and VSE++) reads
a frozen CNN's FNE (every conv layer + fc6 + fc7, standardised,
discretised) instead of its fc7 alone.

  python tools/convert_vgg16.py --torch=vgg16-397923af.pth --out=vgg16.npz
  python -m metricjax.train \
      --config=configs/fne_vse.py:dataset=flickr8k,image_features=fne,loss=sum,weights=vgg16.npz \
      --workdir=runs/f8k_fne_sum
  python -m metricjax.evaluate --workdir=runs/f8k_fne_sum --select=val_rsum

Arguments:
  dataset         flickr8k | flickr30k | coco | caption_demo, or a spec
                  (karpathy:PATH/dataset_X.json, tfds:coco_captions).
  image_features  fne | fc7 (the one-layer baseline).
  loss            sum (VSE: every in-batch negative) | max (VSE++: hardest).
  weights         backbone .npz (tools/convert_vgg16.py, or
                  tools/export_vgg_backbone.py for a VGG trained here).
  backbone        vgg16 (ImageNet, 224x224) | vgg (a VGG trained here; the
                  architecture comes from the .npz).
  embed_dim       joint space width.
"""

from metricjax.config_utils import base_config
from metricjax.config_utils import parse_arg
from metricjax.errors import UserError

# Training steps: ~30 epochs of batch 128 over the training images, as
# VSE++ (whose epochs count captions, so it sees each image 5x as often).
_STEPS = {"flickr8k": 1400, "flickr30k": 6800, "coco": 26500}


def get_config(arg=None):
  arg = parse_arg(arg, dataset="flickr8k", image_features="fne", loss="sum",
                  weights="vgg16.npz", backbone="vgg16", embed_dim=2048)
  config = base_config("vse")
  config.dataset = arg.dataset
  coco = arg.dataset in ("coco", "tfds:coco_captions")
  config.train_split = "train+restval" if coco else "train"

  config.image_features = arg.image_features
  # The backbone's preprocessing and image size: what its weights file
  # records (base_config's backbone.preprocess, backbone.image_size).
  config.backbone.name = arg.backbone
  config.backbone.weights = arg.weights

  # Joint dim 2048 as in the FNE runs (Kiros et al.: 1024); word dim 300;
  # VSE++'s vocabulary (words seen 4 times in the training captions) and
  # 50-word captions are base_config's.
  config.model = dict(name="vse", embed_dim=arg.embed_dim, word_dim=300)

  if arg.loss not in ("sum", "max"):
    raise UserError(f"loss={arg.loss!r}: use sum (VSE, every in-batch "
                    "negative) or max (VSE++, the hardest).")
  config.loss.kwargs = dict(margin=0.2, max_violation=arg.loss == "max")
  config.batch_size = 128  # VSE++'s.
  config.total_steps = _STEPS.get("coco" if coco else arg.dataset, 1400)
  # Adam 2e-4 (VSE++ drops it 10x halfway; here cosine decay), clip 2.
  config.learning_rate = 2e-4
  config.warmup_steps = 0
  config.weight_decay = 0.0
  config.grad_clip_norm = 2.0

  # Model selection by validation rsum: a checkpoint at every validation,
  # all kept (references: overriding eval_every or total_steps follows);
  # evaluate with --select=val_rsum.
  config.eval_every = 1000 if coco else 200
  config.checkpoint_every = config.get_ref("eval_every")
  config.keep_checkpoints = (config.get_ref("total_steps")
                             // config.get_ref("eval_every") + 1)
  config.val_size = 1000  # COCO validates on 1,000 of its 5,000 (VSE++).
  return config

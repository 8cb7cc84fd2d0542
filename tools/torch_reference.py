"""PyTorch peers of metricjax's models, for the benchmarks in tools/.

  involution_naive   d-li14/involution's involution_naive.py forward (unfold).
  Involution         the official layer: 1x1 reduce -> BN -> act -> 1x1 span,
                     then involution_naive; the same generator as
                     metricjax.models.Involution (min 4 reduced channels).
  CompactNet         metricjax.models.CompactNet in NCHW: same stages, widths,
                     exact GELU, BN (momentum 0.1 = flax's 0.9, eps 1e-5),
                     2x2 max pool with ceil_mode (= flax "SAME": 7 -> 4),
                     global average pool, Linear embedding, L2 normalisation.
  VSEModel           VSE++'s EncoderImagePrecomp + EncoderText (Linear of the
                     features; embedding -> GRU over packed sequences, the
                     last real state), both L2-normalised.
  vse_ranking_loss   VSE++'s ContrastiveLoss (sum or max violation).
  torchvision_resnet torchvision's own resnet18 / resnet50, and
  timm_vit_s16       timm's own vit_small_patch16_224, for the backbone
                     references (tests/models) and benchmarks: their model
                     code is pure Python, but `import torchvision` also loads
                     its C++ ops, which fail against a CPU torch of the same
                     version from PyPI ("operator torchvision::nms does not
                     exist"); import_model_code imports the model modules
                     without torchvision's __init__ (nor its ops).
  ms_objective,      the losses of tools/bench_train.py's cases (PML's
  vse_objective      MultiSimilarityLoss on its miner's pairs; VSE++'s), and
  train_step         its training step: AdamW on the trainable parameters
                     with metricjax's warm-up + cosine schedule, clipping.
  EmbeddingNet       metricjax.models.EmbeddingNet on those trunks: uint8
                     images -> torchvision's normalisation -> trunk -> avg +
                     max pooling (ResNets, batch norm frozen as Proxy Anchor
                     freezes it: eval mode, affine not trained) or the CLS
                     token (ViT) -> Linear to 512 -> L2 normalisation.

Initialisation follows flax's defaults, which metricjax uses: conv and dense
kernels lecun_normal (truncated normal, variance 1/fan_in), biases zero, BN
scale 1 and offset 0; the VSE image projection Xavier-uniform as in VSE++,
word embeddings U(-0.1, 0.1). The GRU keeps PyTorch's own initialisation (the
flax GRUCell's differs, but not the cost of a step). Imported by the
benchmarks when run as scripts from the repository root.
"""

import importlib
import importlib.util
import math
import sys
import types

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


def involution_naive(x, weight, kernel_size, stride, groups):
  """involution_naive.py's forward (d-li14/involution), NCHW.

  x (B, C, H, W); weight (B, G*K*K, Ho, Wo), G-major.
  """
  b, c = x.shape[:2]
  h, w = weight.shape[-2:]
  weight = weight.view(b, groups, kernel_size**2, h, w).unsqueeze(2)
  unfold = F.unfold(x, kernel_size, dilation=1,
                    padding=(kernel_size - 1) // 2, stride=stride)
  out = unfold.view(b, groups, c // groups, kernel_size**2, h, w)
  return (weight * out).sum(dim=3).view(b, c, h, w)


def _bn(channels):
  # flax momentum 0.9 is PyTorch's 0.1 (the weight of the new statistic).
  return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)


class Involution(nn.Module):
  """The official involution layer (stride 1), metricjax's generator sizes."""

  def __init__(self, channels, act, kernel_size=3, group_channels=16,
               reduction_ratio=4, min_reduced_channels=4):
    super().__init__()
    self.kernel_size = kernel_size
    self.groups = max(1, channels // group_channels)
    reduced = max(channels // reduction_ratio, min_reduced_channels)
    self.reduce = nn.Conv2d(channels, reduced, 1, bias=False)
    self.reduce_bn = _bn(reduced)
    self.act = act
    self.span = nn.Conv2d(reduced, kernel_size**2 * self.groups, 1)

  def forward(self, x):
    weight = self.span(self.act(self.reduce_bn(self.reduce(x))))
    return involution_naive(x, weight, self.kernel_size, 1, self.groups)


class CompactNet(nn.Module):
  """metricjax.models.CompactNet (embedding only), NCHW; see the docstring."""

  def __init__(self, variant="hybrid1", widths=(32, 64, 64, 96),
               embedding_dim=64, in_channels=1):
    super().__init__()
    n = len(widths)
    if variant.startswith("hybrid"):
      k = int(variant[len("hybrid"):])
      plan = [("involution" if i < k else None, 3) for i in range(n)]
    elif variant == "conv_only":
      plan = [("conv", 3)] + [(None, 3)] * (n - 1)
    elif variant == "involution_only":
      plan = [("involution", 1)] * n
    else:
      raise ValueError(f"unknown variant {variant!r}")
    act = nn.GELU()  # Exact (erf), as metricjax's.
    layers = []
    c = in_channels
    for i, (spatial, size) in enumerate(plan):
      if spatial == "involution":
        layers += [Involution(c, act), _bn(c), act]
      elif spatial == "conv":
        layers += [nn.Conv2d(c, c, 3, padding=1, bias=False), _bn(c), act]
      layers += [nn.Conv2d(c, widths[i], size, padding=size // 2, bias=False),
                 _bn(widths[i]), act]
      if i < n - 1:
        layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
      c = widths[i]
    self.body = nn.Sequential(*layers)
    self.embedding = nn.Linear(c, embedding_dim)
    lecun_init_(self)

  def forward(self, images):
    # Preprocessing as metricjax's: uint8 -> [0, 1] -> (x - 0.5) / 0.25.
    x = (images.float() / 255.0 - 0.5) / 0.25
    x = self.body(x).mean(dim=(2, 3))
    return F.normalize(self.embedding(x), dim=-1)


def lecun_init_(module):
  """flax's lecun_normal kernels and zero biases on every conv and linear."""
  for m in module.modules():
    if isinstance(m, (nn.Conv2d, nn.Linear)):
      fan_in = m.weight[0].numel()
      # flax: truncated normal on (-2, 2) rescaled to the target variance.
      std = math.sqrt(1.0 / fan_in) / .87962566103423978
      nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
      if m.bias is not None:
        nn.init.zeros_(m.bias)


class VSEModel(nn.Module):
  """VSE++'s precomputed-feature image encoder and GRU caption encoder."""

  def __init__(self, features_dim, vocab_size, embed_dim=2048, word_dim=300):
    super().__init__()
    self.image_proj = nn.Linear(features_dim, embed_dim)
    nn.init.xavier_uniform_(self.image_proj.weight)
    nn.init.zeros_(self.image_proj.bias)
    self.embed = nn.Embedding(vocab_size, word_dim)
    nn.init.uniform_(self.embed.weight, -0.1, 0.1)
    self.gru = nn.GRU(word_dim, embed_dim, batch_first=True)

  def forward(self, features, ids, lengths):
    image = F.normalize(self.image_proj(features.float()), dim=-1)
    # VSE++: packed sequences, the GRU runs only the real words.
    packed = nn.utils.rnn.pack_padded_sequence(
        self.embed(ids), lengths, batch_first=True, enforce_sorted=False)
    _, last = self.gru(packed)
    return image, F.normalize(last[0], dim=-1)


def vse_ranking_loss(image, text, margin=0.2, max_violation=False):
  """VSE++'s ContrastiveLoss (fartashf/vsepp model.py)."""
  scores = image @ text.t()
  diagonal = scores.diag().view(-1, 1)
  cost_s = (margin + scores - diagonal).clamp(min=0)
  cost_im = (margin + scores - diagonal.t()).clamp(min=0)
  eye = torch.eye(scores.shape[0], dtype=torch.bool)
  cost_s = cost_s.masked_fill(eye, 0)
  cost_im = cost_im.masked_fill(eye, 0)
  if max_violation:
    return cost_s.max(1)[0].sum() + cost_im.max(0)[0].sum()
  return cost_s.sum() + cost_im.sum()


def count_params(module) -> int:
  """Trainable scalars (metricjax keeps frozen batch norm out of params)."""
  return sum(p.numel() for p in module.parameters() if p.requires_grad)


def import_model_code(module: str):
  """Imports torchvision.models.<x> / timm.models.<x> without running
  torchvision/__init__.py, whose C++ extension need not load: torchvision
  becomes a bare package over its own files. A torchvision that imports
  normally is used as it is. ImportError when torchvision (or timm) is
  not installed."""
  if "torchvision" not in sys.modules:
    try:
      importlib.import_module("torchvision")
    except RuntimeError:  # Its C++ ops did not load; the model code will.
      for name in [m for m in sys.modules if m.startswith("torchvision")]:
        del sys.modules[name]
      spec = importlib.util.find_spec("torchvision")
      package = types.ModuleType("torchvision")
      package.__path__ = list(spec.submodule_search_locations)
      package.__spec__ = spec
      sys.modules["torchvision"] = package
  return importlib.import_module(module)


def torchvision_resnet(arch: str) -> nn.Module:
  """torchvision's resnet18 / resnet50, random init, fc = identity."""
  resnet = import_model_code("torchvision.models.resnet")
  model = getattr(resnet, arch)()
  model.fc = nn.Identity()
  return model


def timm_vit_s16(img_size: int = 224) -> nn.Module:
  """timm's vit_small_patch16_224 without head (num_classes=0), random
  init, for img_size x img_size images."""
  vit = import_model_code("timm.models.vision_transformer")
  return vit.vit_small_patch16_224(num_classes=0, img_size=img_size)


class _AvgMaxPool(nn.Module):
  """Proxy Anchor's pooling: global average + global max, summed."""

  def forward(self, x):
    return x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))


# torchvision's ImageNet normalisation (metricjax.models.preprocess_imagenet).
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class EmbeddingNet(nn.Module):
  """metricjax.models.EmbeddingNet (no classification head), NCHW; see the
  module docstring. backbone: resnet18 | resnet50 | vit_s16."""

  def __init__(self, backbone="resnet50", embedding_dim=512, img_size=224):
    super().__init__()
    if backbone.startswith("resnet"):
      self.trunk = torchvision_resnet(backbone)
      # torchvision's forward: avgpool -> flatten -> fc (identity).
      self.trunk.avgpool = _AvgMaxPool()
      features = self.trunk.inplanes  # The last stage's output width.
    else:
      self.trunk = timm_vit_s16(img_size)
      features = self.trunk.num_features
    self.frozen = [m for m in self.trunk.modules()
                   if isinstance(m, nn.BatchNorm2d)]
    for m in self.frozen:
      m.requires_grad_(False)
    self.embedding = nn.Linear(features, embedding_dim)
    self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1) * 255)
    self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1) * 255)

  def train(self, mode=True):
    super().train(mode)
    for m in self.frozen:  # Frozen: running statistics, never updated.
      m.eval()
    return self

  def forward(self, images):
    x = (images.float() - self.mean) / self.std
    return F.normalize(self.embedding(self.trunk(x)), dim=-1)


def ms_objective(net, batch, kw):
  """() -> PML's MultiSimilarityLoss of net(images) on its miner's pairs."""
  from pytorch_metric_learning import losses as pml_losses  # pylint: disable=g-import-not-at-top
  from pytorch_metric_learning import miners as pml_miners  # pylint: disable=g-import-not-at-top
  loss_fn = pml_losses.MultiSimilarityLoss(alpha=kw.alpha, beta=kw.beta,
                                           base=kw.base)
  miner = pml_miners.MultiSimilarityMiner(epsilon=kw.epsilon)
  images = torch.from_numpy(batch["images"].transpose(0, 3, 1, 2).copy())
  labels = torch.from_numpy(batch["labels"].astype(np.int64))

  def objective():
    emb = net(images)
    return loss_fn(emb, labels, miner(emb, labels))
  return objective


def vse_objective(net, batch, kw):
  """() -> VSE++'s ContrastiveLoss of net(features, captions)."""
  features = torch.from_numpy(batch["features"])
  ids = torch.from_numpy(batch["ids"].astype(np.int64))
  lengths = torch.from_numpy(batch["lengths"].astype(np.int64))

  def objective():
    image, text = net(features, ids, lengths)
    return vse_ranking_loss(image, text, kw.margin, kw.max_violation)
  return objective


def _warmup_cosine(config):
  """optax.warmup_cosine_decay_schedule's multiplier, for LambdaLR."""
  warmup = min(config.warmup_steps, config.total_steps - 1)

  def multiplier(step):
    if step < warmup:
      return step / warmup
    t = min(1.0, (step - warmup) / max(1, config.total_steps - warmup))
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))
  return multiplier


def train_step(model, objective, config, threads):
  """A blocking training step of `objective` on `threads` threads: AdamW on
  model's trainable parameters, the config's schedule and clipping."""
  model.train()
  trained = [p for p in model.parameters() if p.requires_grad]
  optimiser = torch.optim.AdamW(trained, lr=config.learning_rate,
                                weight_decay=config.weight_decay)
  scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser,
                                                _warmup_cosine(config))
  clip = config.grad_clip_norm

  def step():
    torch.set_num_threads(threads)
    optimiser.zero_grad(set_to_none=True)
    loss = objective()
    loss.backward()
    if clip:
      torch.nn.utils.clip_grad_norm_(trained, clip)
    optimiser.step()
    scheduler.step()
    return loss.item()
  return step

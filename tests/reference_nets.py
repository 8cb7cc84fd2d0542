"""torchvision's / timm's own models as references for the backbone tests:
random initialisation, non-trivial batch-norm statistics, the outputs on
the same images, and the state_dict to convert. Skips (with the reason) when
torch, torchvision or timm cannot load."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is an optional reference")
import torch_reference  # tools/, on the path by setup.cfg  # pylint: disable=g-import-not-at-top


def reference(arch: str, img_size: int):
  """The torch model of arch, in eval mode, with random BN statistics."""
  model = _build(arch, lambda: (
      torch_reference.timm_vit_s16(img_size) if arch == "vit_s16"
      else torch_reference.torchvision_resnet(arch)))
  randomise_(model)
  return model.eval()


def embedding_peer(arch: str, img_size: int, embedding_dim: int = 512):
  """torch_reference.EmbeddingNet (the benchmarks' peer of
  models.EmbeddingNet) on arch, its trunk randomised, in train mode (its
  batch norm stays frozen)."""
  model = _build(arch, lambda: torch_reference.EmbeddingNet(
      arch, embedding_dim, img_size))
  randomise_(model.trunk)
  return model.train()


def _build(arch, make):
  try:
    return make()
  except ImportError as e:
    pytest.skip(f"{arch}'s reference model code cannot load: {e}")


def randomise_(model) -> None:
  """Random batch-norm statistics and affine parameters, layer-norm affine
  parameters, and (a ViT's) class token and position embedding, in place."""
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        # Non-trivial statistics and affine parameters, so a swapped or
        # missing one shows.
        c = module.num_features
        module.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
        module.running_var.copy_(0.5 + torch.rand(c, generator=gen))
        module.weight.copy_(1 + 0.2 * torch.randn(c, generator=gen))
        module.bias.copy_(0.2 * torch.randn(c, generator=gen))
      if isinstance(module, torch.nn.LayerNorm):
        c = module.normalized_shape[0]
        module.weight.copy_(1 + 0.2 * torch.randn(c, generator=gen))
        module.bias.copy_(0.2 * torch.randn(c, generator=gen))
    if hasattr(model, "cls_token"):  # timm initialises these near zero.
      model.cls_token.copy_(torch.randn(model.cls_token.shape, generator=gen))
      model.pos_embed.copy_(0.1 * torch.randn(model.pos_embed.shape,
                                              generator=gen))


def forward(model, images_nhwc: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    x = torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())
    return model(x).numpy()


def images(n: int, size: int) -> np.ndarray:
  return np.random.default_rng(1).normal(
      size=(n, size, size, 3)).astype(np.float32)

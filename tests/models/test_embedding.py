"""EmbeddingNet against its PyTorch peer (tools/torch_reference.EmbeddingNet,
what tools/bench_train.py times it against): the same trainable parameters
and, on the same trunk weights, the same embeddings in train mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_nets
import torch_reference
from metricjax import models
from metricjax.models import weights


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "vit_s16"])
def test_same_trainable_parameter_count(backbone):
  peer = reference_nets.embedding_peer(backbone, 224)
  net = models.EmbeddingNet(backbone=backbone)
  shapes = jax.eval_shape(
      lambda: net.init(jax.random.key(0),
                       jnp.zeros((1, 224, 224, 3), jnp.uint8), train=False))
  # Frozen batch norm: in "batch_stats" here, requires_grad=False there.
  assert models.count_params(shapes["params"]) == torch_reference.count_params(
      peer)


@pytest.mark.parametrize("backbone,size", [("resnet18", 64), ("vit_s16", 32)])
def test_same_embeddings_in_train_mode(backbone, size, tmp_path):
  torch = reference_nets.torch
  peer = reference_nets.embedding_peer(backbone, size)
  flat, meta = weights.convert_torch(peer.trunk.state_dict(), backbone)
  path = tmp_path / f"{backbone}.npz"
  weights.save_npz(path, flat, meta)
  net = models.EmbeddingNet(backbone=backbone, weights=str(path))
  images = np.random.default_rng(0).integers(0, 256, (2, size, size, 3),
                                             dtype=np.uint8)
  variables = models.load_pretrained(
      net, net.init(jax.random.key(0), images, train=False))
  head = peer.embedding
  variables["params"]["embedding"] = {
      "kernel": head.weight.detach().numpy().T,
      "bias": head.bias.detach().numpy()}
  got, _ = jax.jit(lambda v, x: net.apply(v, x, train=True,
                                          mutable=["batch_stats"]))(
                                              variables, images)
  with torch.no_grad():
    want = peer(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
  # 64 px: ResNet-18's last map is 2x2, so avg + max is not 2 x avg.
  np.testing.assert_allclose(got["embedding"], want, rtol=0, atol=1e-4)

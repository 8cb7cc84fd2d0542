"""VGG16: torchvision / Keras weight conversion gives the same activations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metricjax.errors import UserError
from metricjax.models import convert
from metricjax.models import vgg
from metricjax.models import weights

torch = pytest.importorskip("torch")
nn = torch.nn

# A VGG16-shaped net with few channels: same 13 convs, 5 pools and 3 fc
# layers (so the same state_dict keys and Keras layer names), cheap to write.
SLIM_BLOCKS = ((4, 4), (8, 8), (8, 8, 8), (16, 16, 16), (16, 16, 16))


def torch_vgg(blocks=vgg.VGG16_BLOCKS, fc=(4096, 4096), classes=1000):
  """torchvision.models.vgg16's layer sequence (indices match its keys)."""
  layers, c = [], 3
  for block in blocks:
    for width in block:
      layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU()]
      c = width
    layers.append(nn.MaxPool2d(2, 2))
  model = nn.Module()
  model.features = nn.Sequential(*layers)
  model.avgpool = nn.AdaptiveAvgPool2d((7, 7))
  model.classifier = nn.Sequential(
      nn.Linear(c * 49, fc[0]), nn.ReLU(), nn.Dropout(),
      nn.Linear(fc[0], fc[1]), nn.ReLU(), nn.Dropout(),
      nn.Linear(fc[1], classes))
  for m in model.modules():  # torchvision's initialisation.
    if isinstance(m, nn.Conv2d):
      nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
      nn.init.uniform_(m.bias, -0.1, 0.1)
    elif isinstance(m, nn.Linear):
      nn.init.normal_(m.weight, 0, 0.01)
      nn.init.uniform_(m.bias, -0.1, 0.1)
  return model.eval()


def torch_taps(model, x, blocks):
  """Every post-ReLU activation, NHWC, plus the logits, by our tap names."""
  names = iter(vgg.conv_names(blocks))
  acts = {}
  with torch.no_grad():
    for layer in model.features:
      x = layer(x)
      if isinstance(layer, nn.ReLU):
        acts[next(names)] = x.permute(0, 2, 3, 1).numpy()
    x = torch.flatten(model.avgpool(x), 1)
    c = model.classifier
    acts["fc6"] = (x := c[1](c[0](x))).numpy()
    acts["fc7"] = (x := c[4](c[3](x))).numpy()
    acts["fc8"] = c[6](x).numpy()
  return acts


def assert_taps_match(ours, theirs, rtol=1e-4):
  assert set(ours) == set(theirs)
  for name, want in theirs.items():
    got = np.asarray(ours[name])
    assert got.shape == want.shape, name
    scale = float(np.abs(want).max())
    assert scale > 0, f"{name} is all zero: the test would prove nothing"
    err = float(np.abs(got - want).max())
    assert err <= rtol * scale, f"{name}: max error {err} vs scale {scale}"


def test_vgg16_torch_conversion_matches_every_tap():
  torch.manual_seed(0)
  model = torch_vgg()
  x = torch.randn(2, 3, 64, 64)  # 2x2 after the pools: adaptive pool to 7x7.
  want = torch_taps(model, x, vgg.VGG16_BLOCKS)
  params = convert.vgg16_params_from_torch(model.state_dict())
  del model
  net = vgg.vgg16()
  got = jax.jit(lambda p, x: net.apply({"params": p}, x, capture=True))(
      params, jnp.asarray(x.permute(0, 2, 3, 1).numpy()))
  assert list(got) == list(net.taps)
  assert net.taps[:2] == ("conv1_1", "conv1_2") and net.taps[-3:] == (
      "fc6", "fc7", "fc8")
  assert_taps_match(got, want)


def test_slim_vgg_matches_at_224_and_odd_sizes():
  torch.manual_seed(1)
  model = torch_vgg(SLIM_BLOCKS, (32, 32), 10)
  params = convert.vgg_params_from_torch(model.state_dict(), blocks=SLIM_BLOCKS)
  net = vgg.VGG(blocks=SLIM_BLOCKS, fc_dims=(32, 32), num_classes=10)
  apply = jax.jit(lambda p, x: net.apply({"params": p}, x, capture=True))
  # 224: no adaptive pooling; 75x45: odd maps, floor pooling, uneven bins.
  for shape in ((1, 3, 224, 224), (2, 3, 75, 45)):
    x = torch.randn(*shape)
    assert_taps_match(apply(params, jnp.asarray(x.permute(0, 2, 3, 1).numpy())),
                      torch_taps(model, x, SLIM_BLOCKS))


@pytest.mark.parametrize("size, out", [((2, 2), (7, 7)), ((10, 13), (7, 7)),
                                       ((7, 7), (7, 7)), ((5, 9), (3, 4))])
def test_adaptive_avg_pool_matches_torch(size, out):
  x = np.random.default_rng(0).normal(size=(2, 3) + size).astype(np.float32)
  want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), out)
  got = vgg.adaptive_avg_pool(jnp.asarray(x.transpose(0, 2, 3, 1)), out)
  np.testing.assert_allclose(np.asarray(got),
                             want.permute(0, 2, 3, 1).numpy(), atol=1e-6)


def write_keras_h5(path, state_dict, blocks):
  """A Keras VGG16 weights file (Keras 2 layout) of a torch net's weights."""
  h5py = pytest.importorskip("h5py")
  sd = {k: v.numpy() for k, v in state_dict.items()}
  layers = ["input_1"]
  with h5py.File(path, "w") as f:
    def add(name, kernel, bias):
      g = f.create_group(name)
      g.attrs["weight_names"] = [f"{name}/kernel:0".encode(),
                                 f"{name}/bias:0".encode()]
      g[f"{name}/kernel:0"] = kernel
      g[f"{name}/bias:0"] = bias
      layers.append(name)

    index = 0
    for b, block in enumerate(blocks):
      for i in range(len(block)):
        w, bias = sd[f"features.{index}.weight"], sd[f"features.{index}.bias"]
        add(f"block{b + 1}_conv{i + 1}", w.transpose(2, 3, 1, 0), bias)  # HWIO
        index += 2
      index += 1
      f.create_group(f"block{b + 1}_pool").attrs["weight_names"] = []
      layers.append(f"block{b + 1}_pool")
    f.create_group("flatten").attrs["weight_names"] = []
    layers.append("flatten")
    # Keras flattens the (7, 7, C) map in HWC order; torch's rows are CHW.
    w = sd["classifier.0.weight"]
    c = blocks[-1][-1]
    add("fc1", w.reshape(-1, c, 7, 7).transpose(2, 3, 1, 0).reshape(49 * c, -1),
        sd["classifier.0.bias"])
    add("fc2", sd["classifier.3.weight"].T, sd["classifier.3.bias"])
    add("predictions", sd["classifier.6.weight"].T, sd["classifier.6.bias"])
    f.attrs["layer_names"] = [n.encode() for n in layers]
    f.attrs["backend"] = b"tensorflow"


def test_keras_conversion_equals_torch_conversion(tmp_path):
  torch.manual_seed(2)
  model = torch_vgg(SLIM_BLOCKS, (32, 32), 10)
  path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
  write_keras_h5(path, model.state_dict(), SLIM_BLOCKS)
  from_keras = convert.vgg_params_from_keras(path, blocks=SLIM_BLOCKS)
  from_torch = convert.vgg_params_from_torch(model.state_dict(),
                                             blocks=SLIM_BLOCKS)
  assert jax.tree.structure(from_keras) == jax.tree.structure(from_torch)
  for a, b in zip(jax.tree.leaves(from_keras), jax.tree.leaves(from_torch)):
    np.testing.assert_array_equal(a, b)


def test_npz_round_trip(tmp_path):
  torch.manual_seed(3)
  params = convert.vgg_params_from_torch(
      torch_vgg(SLIM_BLOCKS, (32, 32), 10).state_dict(), blocks=SLIM_BLOCKS)
  path = tmp_path / "w.npz"
  weights.save_npz(path, params, {"preprocess": "torch"})
  flat, meta = weights.read_npz(path)
  assert sorted(flat) == sorted(f"{layer}/{k}" for layer in params
                                for k in params[layer])
  loaded = weights.unflatten(flat)
  assert meta == {"preprocess": "torch"}
  assert jax.tree.structure(loaded) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


def test_conversion_errors_name_the_problem(tmp_path):
  sd = torch_vgg(SLIM_BLOCKS, (32, 32), 10).state_dict()
  del sd["features.5.weight"]
  with pytest.raises(UserError, match="features.5.weight"):
    convert.vgg_params_from_torch(sd, blocks=SLIM_BLOCKS)
  with pytest.raises(UserError, match="vgg16_bn"):
    convert.vgg16_params_from_torch({"features.1.running_mean": np.zeros(3)})
  with pytest.raises(UserError, match="does not exist"):
    convert.vgg16_params_from_keras(tmp_path / "missing.h5")


def test_preprocess_imagenet():
  images = np.array([[[[0, 128, 255]]]], np.uint8)
  torch_mode = np.asarray(vgg.preprocess_imagenet(images))
  np.testing.assert_allclose(
      torch_mode[0, 0, 0],
      (np.array([0, 128, 255]) / 255 - [0.485, 0.456, 0.406])
      / [0.229, 0.224, 0.225], rtol=1e-5)
  caffe = np.asarray(vgg.preprocess_imagenet(images, mode="caffe"))
  np.testing.assert_allclose(caffe[0, 0, 0],
                             [255 - 103.939, 128 - 116.779, 0 - 123.68],
                             rtol=1e-5)
  gray = vgg.preprocess_imagenet(np.zeros((1, 2, 2, 1), np.uint8))
  assert gray.shape == (1, 2, 2, 3)
  with pytest.raises(UserError, match="caffe"):
    vgg.preprocess_imagenet(images, mode="tf")

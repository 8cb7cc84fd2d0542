"""Shared test helpers: synthetic image sets, configs, a random backbone.

Importable from any test file (`from helpers import ...`; setup.cfg puts
tests/ on the path). Fixtures live in conftest.py.
"""

import gzip
import io
import os
import struct
import zipfile

import numpy as np

# The repository's root, whatever the depth of the test file that asks.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def xla_flags(devices: int = 1) -> str:
  """XLA_FLAGS for the suite's processes: `devices` simulated CPU devices,
  compiled at the suite's optimisation level (tests/conftest.py says why).
  A subprocess that compares numbers with this process's compiles alike."""
  return (f"--xla_force_host_platform_device_count={devices} "
          "--xla_backend_optimization_level=0")


_IDX_TYPES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}


def write_idx(path, array: np.ndarray, *, gz: bool | None = None) -> bytes:
  """MNIST-format IDX file of a uint8 or int32 array (big-endian, as the
  format says), gzipped when gz or, by default, when the name ends in .gz;
  -> the uncompressed bytes."""
  array = np.asarray(array)
  if array.dtype not in _IDX_TYPES:
    array = array.astype(np.uint8)
  header = struct.pack(">BBBB", 0, 0, _IDX_TYPES[array.dtype], array.ndim)
  header += struct.pack(f">{array.ndim}I", *array.shape)
  data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
  gz = str(path).endswith(".gz") if gz is None else gz
  with (gzip.open if gz else open)(path, "wb") as f:
    f.write(data)
  return data


def make_separable_images(num: int, num_classes: int, seed: int):
  """28x28 digits-like images whose class is a bright square's position."""
  rng = np.random.default_rng(seed)
  labels = np.arange(num) % num_classes
  images = rng.integers(0, 40, size=(num, 28, 28), dtype=np.uint8)
  for i, c in enumerate(labels):
    r, q = divmod(int(c), 2)
    images[i, 4 + 10 * r:12 + 10 * r, 4 + 12 * q:12 + 12 * q] = 220
  return images, labels


def make_grating_images(num: int, num_classes: int, seed: int,
                        noise: float = 60.0):
  """28x28 noisy gratings whose class is their orientation (random phase).

  Unlike make_separable_images, an untrained net does not already rank
  them by class (P@1 ~0.45 at 4 classes), so training has something to
  learn and a broken loss shows.
  """
  rng = np.random.default_rng(seed)
  labels = np.arange(num) % num_classes
  yy, xx = np.mgrid[:28, :28]
  images = np.empty((num, 28, 28), np.uint8)
  for i, c in enumerate(labels):
    theta = np.pi * c / num_classes + rng.normal(0, 0.05)
    wave = np.sin(2 * np.pi / 7 * (np.cos(theta) * xx + np.sin(theta) * yy)
                  + rng.uniform(0, 2 * np.pi))
    images[i] = np.clip(128 + 50 * wave + rng.normal(0, noise, (28, 28)),
                        0, 255)
  return images, labels


def load_config(name: str, arg: str | None = None):
  """configs/<name>.py's get_config(arg), loaded as the CLI loads it."""
  from metricjax.config_utils import load_config as load  # after XLA_FLAGS
  path = os.path.join(REPO, "configs", f"{name}.py")
  return load(path + (f":{arg}" if arg else ""))


def hue_images(n: int, seed: int, name: str = "hues"):
  """16x16 RGB ArrayDataset, 4 classes, each its own dominant channel
  (the caption demo's captions then name a colour per class)."""
  from metricjax.data.dataset import ArrayDataset
  from metricjax.data.sources.folder import CIFAR10_CLASSES
  rng = np.random.default_rng(seed)
  labels = (np.arange(n) % 4).astype(np.int32)
  images = rng.integers(0, 80, (n, 16, 16, 3), np.uint8)
  for i, c in enumerate(labels):
    images[i, ..., c % 3] += 120
  return ArrayDataset(images, labels, 10, CIFAR10_CLASSES, name, "x", "x")


def write_random_vgg(path, arch: dict, image_size: int = 16) -> None:
  """A backbone .npz of a VGG of `arch` with random weights (drawn in
  numpy: no init compilation)."""
  import jax
  from metricjax.models import vgg
  from metricjax.models import weights
  shapes = jax.eval_shape(
      vgg.VGG(**arch).init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(
      np.float32), shapes["params"])
  weights.save_npz(path, params, dict(
      arch="vgg", model=arch, image_size=image_size, preprocess="torch"))


def tiny_config(data_dir, **overrides):
  config = load_config("compact_involution", overrides.pop("arg", None))
  config.dataset = f"idx:{data_dir}"
  config.model.widths = (8, 16, 16, 16)
  config.model.embedding_dim = 16
  config.batch_size = 16
  config.samples_per_class = 4
  config.total_steps = 6
  config.warmup_steps = 1
  config.log_every = 2
  config.checkpoint_every = 3
  config.eval.batch_size = 16
  config.update(overrides)
  return config


def png_members(layout: dict, size=(5, 4), mode: str = "RGB"):
  """An image folder's files as {member: PNG bytes} (layout: {split:
  {class: count}}) and per split the arrays a reader must return:
  (images, labels, sorted class names)."""
  from PIL import Image
  files, expected = {}, {}
  for split, classes in layout.items():
    names = sorted(classes)
    arrays, labels = [], []
    for label, cls in enumerate(names):
      for i in range(classes[cls]):
        rng = np.random.default_rng(len(files))
        shape = size[::-1] + ((3,) if mode == "RGB" else ())
        array = rng.integers(0, 256, shape, dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, "PNG")
        files[f"{split}/{cls}/{i:04d}.png"] = buf.getvalue()
        arrays.append(array.reshape(size[::-1] + (-1,)))
        labels.append(label)
    expected[split] = (np.stack(arrays), np.array(labels), tuple(names))
  return files, expected


def write_members(root, files: dict):
  """{member: bytes} as files under root; -> root."""
  for member, data in files.items():
    path = root / member
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
  return root


def zip_members(path, files: dict, prefix: str = ""):
  """{member: bytes} as a zip (members under prefix), plus the __MACOSX
  resource-fork entry macOS's archiver adds, which readers must skip;
  -> path."""
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
    for member, data in files.items():
      zf.writestr(prefix + member, data)
    zf.writestr("__MACOSX/train/cat/._0000.png", b"junk")
  return path


def pack_idx_split(source_dir, out_dir, split: str):
  """An `idx:` split packed (tools/pack_arrayrecord.py's format) in two
  chunks, the first of 40 examples, as OUT_DIR's dataset "tiny"; -> (the
  source split, the packed file)."""
  from metricjax.data import load_dataset
  from metricjax.data import packed
  ds = load_dataset(f"idx:{source_dir}", split)
  path = packed.packed_path(str(out_dir), "tiny", split)
  packed.write_packed(path, [(ds.images[:40], ds.labels[:40]),
                             (ds.images[40:], ds.labels[40:])],
                      name="tiny", split=split, class_names=ds.class_names,
                      source="test")
  return ds, path

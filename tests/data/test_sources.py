"""Data sources: IDX, image folder/zip (+ cache), TFDS, name resolution."""

import gzip
import io
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
from PIL import Image
import pytest

from metricjax.data import ArrayDataset
from metricjax.data import image_folder
from metricjax.data import load_dataset
from metricjax.data import read_idx
from metricjax.data import sources
from metricjax.data import tfds_source
from metricjax.errors import UserError

REAL_DATA = os.environ.get("METRICJAX_DATA_DIR")
needs_real_data = pytest.mark.skipif(
    not REAL_DATA, reason="METRICJAX_DATA_DIR is not set (real datasets: see "
    "shared/datasets/README.md)")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
  """No test sees the real cache, the real env data dir or /usr/share."""
  monkeypatch.setenv("METRICJAX_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.delenv("METRICJAX_DATA_DIR", raising=False)
  monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", (str(tmp_path / "system"),))


def _no_tfds(monkeypatch):
  def fail(name, split, **kwargs):
    raise tfds_source.TfdsUnavailableError("no tfds in tests", "offline test")
  monkeypatch.setattr(sources, "load_tfds", fail)


# --- IDX ---------------------------------------------------------------------

_TYPE_BYTES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}


def write_idx(path, array, *, gz=None):
  array = np.asarray(array)
  header = bytes([0, 0, _TYPE_BYTES[array.dtype], array.ndim])
  header += np.asarray(array.shape, ">u4").tobytes()
  data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
  gz = str(path).endswith(".gz") if gz is None else gz
  with (gzip.open if gz else open)(path, "wb") as f:
    f.write(data)
  return data


def write_idx_split(directory, prefix, images, labels):
  os.makedirs(directory, exist_ok=True)
  write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"), images)
  write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"), labels)


def tiny_idx(n=6, label=0):
  rng = np.random.default_rng(label)
  images = rng.integers(0, 256, (n, 4, 5), dtype=np.uint8)
  return images, np.full(n, label, np.uint8)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_read_idx_round_trip(tmp_path, gz, dtype):
  array = np.arange(2 * 3 * 4, dtype=dtype).reshape(2, 3, 4) * 7
  # No .gz suffix either way: compression is sniffed from the bytes.
  path = tmp_path / "x-idx3-ubyte"
  write_idx(path, array, gz=gz)
  out = read_idx(path)
  np.testing.assert_array_equal(out, array)
  assert out.dtype == dtype and out.dtype.isnative and out.flags.writeable


@pytest.mark.parametrize("corrupt, expected", [
    (lambda d: d[:3], "fewer than the 4-byte"),
    (lambda d: b"\x08\x03" + d[2:], "magic number"),
    (lambda d: d[:2] + b"\x42" + d[3:], "element type"),
    (lambda d: d[:6], "file ends"),
    (lambda d: d[:-1], "truncated"),
    (lambda d: d + b"\0", "extra bytes"),
])
def test_read_idx_corrupt(tmp_path, corrupt, expected):
  data = write_idx(tmp_path / "ok", np.zeros((3, 2, 2), np.uint8), gz=False)
  bad = tmp_path / "bad-images-idx3-ubyte"
  bad.write_bytes(corrupt(data))
  with pytest.raises(UserError, match=expected) as e:
    read_idx(bad)
  assert str(bad) in str(e.value)


def test_read_idx_truncated_gzip_and_missing(tmp_path):
  path = tmp_path / "t.gz"
  write_idx(path, np.random.default_rng(0).integers(0, 256, (9, 28, 28),
                                                    dtype=np.uint8))
  path.write_bytes(path.read_bytes()[:200])
  with pytest.raises(UserError, match="gzip stream is corrupt") as e:
    read_idx(path)
  assert str(path) in str(e.value)
  with pytest.raises(UserError, match="does not exist"):
    read_idx(tmp_path / "nope.gz")


# --- ArrayDataset ------------------------------------------------------------


def test_array_dataset_validates():
  ok = dict(images=np.zeros((2, 3, 3, 1), np.uint8),
            labels=np.array([0, 1], np.int32), num_classes=2,
            class_names=("a", "b"), name="t", split="train", source="test")
  assert len(ArrayDataset(**ok)) == 2
  for change, msg in [
      (dict(images=np.zeros((2, 3, 3, 1), np.float32)), "uint8"),
      (dict(images=np.zeros((2, 3, 3, 2), np.uint8)), "C = 1"),
      (dict(labels=np.array([0, 1], np.int64)), "int32"),
      (dict(labels=np.array([0], np.int32)), "belong together"),
      (dict(labels=np.array([0, 2], np.int32)), "outside"),
      (dict(class_names=("a",)), "class names"),
  ]:
    with pytest.raises(UserError, match=msg):
      ArrayDataset(**{**ok, **change})


# --- Image folder / zip ------------------------------------------------------

LAYOUT = {"train": {"dog": 2, "cat": 3, "ant": 1}, "test": {"cat": 1, "dog": 2}}


def make_images(layout=LAYOUT, size=(5, 4), mode="RGB"):
  """{member: png bytes} and the expected arrays per split."""
  files, expected = {}, {}
  for split, classes in layout.items():
    names = sorted(classes)
    arrays, labels = [], []
    for label, cls in enumerate(names):
      for i in range(classes[cls]):
        rng = np.random.default_rng(len(files))
        shape = size[::-1] + ((3,) if mode == "RGB" else ())
        array = rng.integers(0, 256, shape, dtype=np.uint8)
        path = f"{split}/{cls}/{i:04d}.png"
        image = Image.fromarray(array)
        buf = io.BytesIO()
        image.save(buf, "PNG")
        files[path] = buf.getvalue()
        arrays.append(array.reshape(size[::-1] + (-1,)))
        labels.append(label)
    expected[split] = (np.stack(arrays), np.array(labels), tuple(names))
  return files, expected


def write_dir(root, files):
  for member, data in files.items():
    path = root / member
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
  return root


def write_zip(path, files, prefix=""):
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
    for member, data in files.items():
      zf.writestr(prefix + member, data)
    zf.writestr("__MACOSX/train/cat/._0000.png", b"junk")
  return path


@pytest.mark.parametrize("container", ["dir", "zip", "zip_with_top_folder"])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_image_folder(tmp_path, container, mode):
  files, expected = make_images(mode=mode)
  if container == "dir":
    path = write_dir(tmp_path / "tiny", files)
    (path / "train" / "notes.txt").write_text("not an image")
  else:
    path = write_zip(tmp_path / "tiny.zip", files,
                     "tiny/" if container == "zip_with_top_folder" else "")
  for split in ("train", "test"):
    ds = image_folder.load_image_folder(path, split)
    images, labels, names = expected[split]
    assert ds.name == "tiny" and ds.split == split
    assert ds.class_names == names and ds.num_classes == len(names)
    assert ds.images.shape == (len(labels), 4, 5, 1 if mode == "L" else 3)
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, labels)
    assert str(path) in ds.source


def test_image_folder_errors(tmp_path):
  files, _ = make_images()
  path = write_zip(tmp_path / "tiny.zip", files)
  with pytest.raises(image_folder.SplitNotFoundError, match="test, train"):
    image_folder.load_image_folder(path, "validation")
  files["train/cat/big.png"] = make_images(
      {"train": {"cat": 1}}, size=(7, 7))[0]["train/cat/0000.png"]
  write_zip(tmp_path / "mixed.zip", files)
  with pytest.raises(UserError, match="same size"):
    image_folder.load_image_folder(tmp_path / "mixed.zip", "train")
  files["train/cat/big.png"] = b"not a png"
  write_zip(tmp_path / "broken.zip", files)
  with pytest.raises(UserError, match="Cannot decode image .*big.png"):
    image_folder.load_image_folder(tmp_path / "broken.zip", "train")
  with pytest.raises(UserError, match="does not exist"):
    image_folder.load_image_folder(tmp_path / "nothing", "train")


@pytest.mark.parametrize("container", ["dir", "zip"])
def test_image_folder_cache(tmp_path, monkeypatch, container):
  files, expected = make_images()
  if container == "dir":
    path = write_dir(tmp_path / "tiny", files)
  else:
    path = write_zip(tmp_path / "tiny.zip", files)
  decoded = []
  real_decode = image_folder.decode_image
  monkeypatch.setattr(image_folder, "decode_image",
                      lambda *a: decoded.append(1) or real_decode(*a))
  cache = tmp_path / "cache"

  first = image_folder.load_image_folder(path, "train")
  assert len(decoded) == 6
  entries = os.listdir(cache)
  assert len(entries) == 1 and entries[0].endswith(".npz")  # No temp files.
  second = image_folder.load_image_folder(path, "train")
  assert len(decoded) == 6  # Hit.
  np.testing.assert_array_equal(first.images, second.images)
  np.testing.assert_array_equal(first.labels, second.labels)
  assert second.class_names == expected["train"][2]

  # A corrupt entry (e.g. disk trouble) is ignored and rewritten.
  (cache / entries[0]).write_bytes(b"garbage")
  third = image_folder.load_image_folder(path, "train")
  assert len(decoded) == 12
  np.testing.assert_array_equal(first.images, third.images)
  image_folder.load_image_folder(path, "train")
  assert len(decoded) == 12

  # Changing the source invalidates the entry.
  files["train/ant/0001.png"] = files["train/ant/0000.png"]
  if container == "dir":
    write_dir(path, files)
  else:
    os.remove(path)
    write_zip(path, files)
  fourth = image_folder.load_image_folder(path, "train")
  assert len(decoded) == 19 and len(fourth) == 7


# --- load_dataset: resolution order ------------------------------------------


def test_resolution_order(tmp_path, monkeypatch):
  env, system, explicit = tmp_path / "env", tmp_path / "system", tmp_path / "x"
  for root, label in ((env, 1), (system, 2), (explicit, 3)):
    for prefix in ("train", "t10k"):
      write_idx_split(root / "fashion-mnist", prefix, *tiny_idx(label=label))
  tfds_calls = []
  monkeypatch.setattr(sources, "load_tfds", lambda name, split, **kw: (
      tfds_calls.append(name) or ArrayDataset(
          np.zeros((1, 2, 2, 1), np.uint8), np.zeros(1, np.int32), 1, ("a",),
          name, split, "fake tfds")))

  def source_label(name, split="train", **kwargs):
    ds = load_dataset(name, split, **kwargs)
    return ds.source, int(ds.labels[0])

  monkeypatch.setenv("METRICJAX_DATA_DIR", str(env))
  ds = load_dataset(f"idx:{explicit / 'fashion-mnist'}", "test")
  assert ds.labels[0] == 3 and ds.name == "fashion_mnist"
  assert ds.class_names[0] == "T-shirt/top"
  src, label = source_label("fashion-mnist")
  assert label == 1 and str(env) in src
  # The argument overrides the environment.
  assert source_label("fashion_mnist", data_dir=str(explicit))[1] == 3
  monkeypatch.delenv("METRICJAX_DATA_DIR")
  assert source_label("fashion_mnist", "test")[1] == 2
  monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", ())
  assert source_label("fashion_mnist") == ("fake tfds", 0)
  assert tfds_calls == ["fashion_mnist"]


def test_resolution_skips_incomplete_places(tmp_path, monkeypatch):
  env, system = tmp_path / "env", tmp_path / "system"
  write_idx_split(env / "mnist", "t10k", *tiny_idx(label=1))  # No train.
  write_idx_split(system / "mnist", "train10k", *tiny_idx(label=2))
  monkeypatch.setenv("METRICJAX_DATA_DIR", str(env))
  _no_tfds(monkeypatch)
  ds = load_dataset("mnist", "train")
  assert ds.labels[0] == 2 and "10k" in ds.source
  # The full training set wins over the 10k subset.
  write_idx_split(system / "mnist", "train", *tiny_idx(n=9, label=3))
  ds = load_dataset("mnist", "train")
  assert len(ds) == 9 and "10k" not in ds.source
  assert ds.class_names == tuple("0123456789")


def test_folder_spec_and_known_cifar_layout(tmp_path, monkeypatch):
  files, expected = make_images()
  write_zip(tmp_path / "pets.zip", files)
  ds = load_dataset(f"folder:{tmp_path / 'pets.zip'}", "test")
  assert ds.name == "pets" and ds.class_names == expected["test"][2]
  # cifar10 in a data dir must have the CIFAR-10 classes.
  write_zip(tmp_path / "cifar10-jpeg.zip", files)
  with pytest.raises(UserError, match="class folders"):
    load_dataset("cifar10", "train", data_dir=str(tmp_path))


def test_missing_data_lists_every_place(tmp_path, monkeypatch):
  env = tmp_path / "env"
  env.mkdir()
  monkeypatch.setenv("METRICJAX_DATA_DIR", str(env))
  _no_tfds(monkeypatch)
  with pytest.raises(UserError) as e:
    load_dataset("fashion_mnist", "train")
  msg = str(e.value)
  for place in (env / "fashion-mnist", env / "fashion_mnist",
                tmp_path / "system"):
    assert str(place) in msg
  for hint in ("TFDS", "METRICJAX_DATA_DIR", "apt-get install "
               "dataset-fashion-mnist", "tfds build fashion_mnist"):
    assert hint in msg
  with pytest.raises(UserError) as e:
    load_dataset("cifar10", "test")
  for entry in sources.KNOWN["cifar10"].entries:
    assert str(env / entry) in str(e.value)


def test_unknown_name_and_split():
  with pytest.raises(UserError) as e:
    load_dataset("imagenet", "train")
  for word in ("mnist", "fashion_mnist", "cifar10", "idx:DIR", "folder:PATH",
               "tfds:NAME"):
    assert word in str(e.value)
  with pytest.raises(UserError, match="no split 'validation'"):
    load_dataset("mnist", "validation")


# --- TFDS --------------------------------------------------------------------


@pytest.mark.parametrize("name, shape, first_class", [
    ("mnist", (28, 28, 1), "0"), ("cifar10", (32, 32, 3), "airplane")])
def test_tfds_mock(name, shape, first_class):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):
    explicit = load_dataset(f"tfds:{name}", "train")
    # With no offline copy anywhere, the known name falls back to TFDS.
    implicit = load_dataset(name, "test")
  for ds in (explicit, implicit):
    assert ds.name == name and len(ds) == 12
    assert ds.images.shape == (12,) + shape and ds.images.dtype == np.uint8
    assert ds.num_classes == 10 and ds.class_names[0] == first_class
    assert "TFDS" in ds.source


def test_tfds_mock_without_tensorflow():
  """tfds.data_source and mock_data work with TensorFlow hidden."""
  code = textwrap.dedent("""
      import sys

      class HideTensorFlow:  # The usual finders, as if TF were not installed.

        def __init__(self, finders):
          self.finders = finders

        def find_spec(self, name, path=None, target=None):
          if name.partition(".")[0] == "tensorflow":
            return None
          for finder in self.finders:
            spec = finder.find_spec(name, path, target)
            if spec is not None:
              return spec
          return None

      sys.meta_path[:] = [HideTensorFlow(list(sys.meta_path))]
      import tensorflow_datasets as tfds
      from metricjax.data import load_dataset
      with tfds.testing.mock_data(num_examples=3):
        print(load_dataset("tfds:cifar10", "test").images.shape)
      assert "tensorflow" not in sys.modules
  """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=120, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "(3, 32, 32, 3)" in out.stdout


def test_tfds_not_prepared(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(tfds_source.TfdsUnavailableError) as e:
    tfds_source.load_tfds("mnist", "train", data_dir=str(tmp_path),
                          download=False)
  assert str(tmp_path) in str(e.value) and "tfds build mnist" in str(e.value)


# --- Real data (METRICJAX_DATA_DIR) ------------------------------------------


@needs_real_data
@pytest.mark.parametrize("split, size", [("train", 60000), ("test", 10000)])
def test_real_fashion_mnist(monkeypatch, split, size):
  monkeypatch.setenv("METRICJAX_DATA_DIR", REAL_DATA)
  ds = load_dataset("fashion_mnist", split)
  assert ds.images.shape == (size, 28, 28, 1)
  assert np.bincount(ds.labels).tolist() == [size // 10] * 10
  assert ds.class_names[-1] == "Ankle boot"


@needs_real_data
def test_real_mnist_train10k(monkeypatch):
  monkeypatch.setenv("METRICJAX_DATA_DIR", REAL_DATA)
  ds = load_dataset("mnist", "train")
  assert ds.images.shape == (10000, 28, 28, 1) and "10k" in ds.source
  assert len(load_dataset("mnist", "test")) == 10000


@needs_real_data
def test_real_cifar10_test(monkeypatch):
  # Decodes 10k JPEGs into the per-test cache: a few seconds.
  monkeypatch.setenv("METRICJAX_DATA_DIR", REAL_DATA)
  ds = load_dataset("cifar10", "test")
  assert ds.images.shape == (10000, 32, 32, 3)
  assert ds.class_names == sources.CIFAR10_CLASSES
  assert np.bincount(ds.labels).tolist() == [1000] * 10
  assert ds.source.endswith("cifar10-jpeg.zip")


def test_class_halves_of_an_image_folder(tmp_path):
  """CUB-style layout (images/<class>/<file>), split by classes."""
  from PIL import Image
  for c in range(5):
    folder = tmp_path / "cub" / "images" / f"{c:03d}.bird{c}"
    folder.mkdir(parents=True)
    for i in range(3):
      Image.fromarray(np.full((6, 6, 3), 40 * c + i, np.uint8)).save(
          folder / f"{i}.png")
  spec = f"halves:folder:{tmp_path / 'cub'}@images"
  train, test = load_dataset(spec, "train"), load_dataset(spec, "test")
  assert train.class_names == ("000.bird0", "001.bird1")
  assert test.class_names == ("002.bird2", "003.bird3", "004.bird4")
  assert sorted(set(train.labels)) == [0, 1] and len(train) == 6
  assert sorted(set(test.labels)) == [0, 1, 2] and len(test) == 9
  assert int(test.images[test.labels == 0][0, 0, 0, 0]) == 80
  with pytest.raises(UserError, match="halves:SPEC@SPLIT"):
    load_dataset(f"halves:folder:{tmp_path / 'cub'}", "train")

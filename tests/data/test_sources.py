"""metricjax.data.sources: dataset specs, the resolution of known names
(argument, environment, system folders, TFDS), the message when none has
the data, class halves, and the real datasets where they are installed."""

import os

import numpy as np
from PIL import Image
import pytest

from metricjax.data import ArrayDataset
from metricjax.data import load_dataset
from metricjax.data import sources
from metricjax.data import tfds_source
from metricjax.errors import UserError
from helpers import png_members
from helpers import write_idx
from helpers import zip_members

REAL_DATA = os.environ.get("METRICJAX_DATA_DIR")
needs_real_data = pytest.mark.skipif(
    not REAL_DATA, reason="METRICJAX_DATA_DIR is not set: point it at a "
    "folder holding mnist/, fashion-mnist/ and cifar10 (docs/data.md, "
    "'Dataset names')")
# Each test runs isolated (tests/data/conftest.py): a cache, data dir and
# system folder of its own.
LAYOUT = {"train": {"dog": 2, "cat": 3, "ant": 1}, "test": {"cat": 1, "dog": 2}}


def _no_tfds(monkeypatch):
  def fail(name, split, **kwargs):
    raise tfds_source.TfdsUnavailableError("no tfds in tests", "offline test")
  monkeypatch.setattr(sources, "load_tfds", fail)


def write_idx_split(directory, prefix, images, labels):
  os.makedirs(directory, exist_ok=True)
  write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"), images)
  write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"), labels)


def tiny_idx(n=6, label=0):
  rng = np.random.default_rng(label)
  images = rng.integers(0, 256, (n, 4, 5), dtype=np.uint8)
  return images, np.full(n, label, np.uint8)


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
  files, expected = png_members(LAYOUT)
  zip_members(tmp_path / "pets.zip", files)
  ds = load_dataset(f"folder:{tmp_path / 'pets.zip'}", "test")
  assert ds.name == "pets" and ds.class_names == expected["test"][2]
  # cifar10 in a data dir must have the CIFAR-10 classes.
  zip_members(tmp_path / "cifar10-jpeg.zip", files)
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
  for entry in sources.REGISTRY["cifar10"].entries:
    assert str(env / entry) in str(e.value)


def test_unknown_name_and_split():
  with pytest.raises(UserError) as e:
    load_dataset("imagenet", "train")
  for word in ("mnist", "fashion_mnist", "cifar10", "idx:DIR", "folder:PATH",
               "tfds:NAME"):
    assert word in str(e.value)
  with pytest.raises(UserError, match="no split 'validation'"):
    load_dataset("mnist", "validation")


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
  assert ds.class_names == sources.REGISTRY["cifar10"].class_names
  assert np.bincount(ds.labels).tolist() == [1000] * 10
  assert ds.source.endswith("cifar10-jpeg.zip")


def test_class_halves_of_an_image_folder(tmp_path):
  """CUB-style layout (images/<class>/<file>), split by classes."""
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


def test_a_new_source_is_one_registry_line(tmp_path, monkeypatch):
  """A Source in REGISTRY resolves as a named dataset (each data directory,
  its download hint when none has it) and as a spec, with its convention."""
  def read(path, split, options):
    if not os.path.isfile(os.path.join(path, f"{split}.npy")):
      raise sources.NotHere(f"no {split}.npy")
    images = np.load(os.path.join(path, f"{split}.npy"))
    return ArrayDataset(images, np.zeros(len(images), np.int32), 1, ("a",),
                        options.name, split, f"toy {path}")
  conv = sources.Convention(recall_ks=(1, 3))
  monkeypatch.setitem(sources.REGISTRY, "toy", sources.Source(
      read=read, entries=("toy",), splits=("train",), download="make it",
      convention=conv))
  monkeypatch.setitem(sources.REGISTRY, "toys", sources.Source(
      read=read, form="toys:DIR"))
  (tmp_path / "toy").mkdir()
  with pytest.raises(UserError) as e:
    load_dataset("toy", "train", data_dir=str(tmp_path))
  assert f"{tmp_path / 'toy'} (data_dir argument; no train.npy)" in str(e.value)
  assert str(e.value).endswith("To get it: make it.")
  np.save(tmp_path / "toy" / "train.npy", np.zeros((2, 3, 3, 1), np.uint8))
  assert len(load_dataset("toy", "train", data_dir=str(tmp_path))) == 2
  assert load_dataset(f"toys:{tmp_path / 'toy'}", "train").name == "toys"
  assert sources.recall_ks("toy") == (1, 3)
  with pytest.raises(UserError, match="no split 'test'; use one of train"):
    load_dataset("toy", "test")

"""metricjax.data.dataset: the Dataset protocol, and ids that survive every
way of taking examples out of a dataset."""

import numpy as np
from PIL import Image
import pytest

from metricjax import data as data_lib
from metricjax.data import dataset
from metricjax.data import packed
from metricjax.errors import UserError


def _folder(root, split, classes, per_class=3):
  """root/split/<class>/<i>.png, 8x8 grayscale; -> the sorted member paths."""
  members = []
  for c in classes:
    (root / split / c).mkdir(parents=True)
    for i in range(per_class):
      Image.fromarray(np.full((8, 8), 10 * i, np.uint8)).save(
          root / split / c / f"{i}.png")
      members.append(f"{split}/{c}/{i}.png")
  return sorted(members)


@pytest.fixture
def folder(tmp_path, monkeypatch):
  monkeypatch.setenv("METRICJAX_CACHE_DIR", str(tmp_path / "cache"))
  root = tmp_path / "photos"
  return root, _folder(root, "all", ("a", "b", "c", "d"))


def test_image_folder_ids_are_paths_decoded_or_cached(folder):
  root, members = folder
  first = data_lib.load_dataset(f"folder:{root}", "all")
  assert list(first.ids) == members
  again = data_lib.load_dataset(f"folder:{root}", "all")  # From the cache.
  assert list(again.ids) == members


def test_halves_keep_the_file_ids(folder):
  root, members = folder
  train = data_lib.load_dataset(f"halves:folder:{root}@all", "train")
  test = data_lib.load_dataset(f"halves:folder:{root}@all", "test")
  assert list(train.ids) == [m for m in members if m.split("/")[1] in "ab"]
  assert list(test.ids) == [m for m in members if m.split("/")[1] in "cd"]
  assert test.class_names == ("c", "d") and list(test.labels) == [0] * 3 + [1] * 3
  # Labels still match the class folder of each id.
  for ds in (train, test):
    assert [ds.class_names[l] for l in ds.labels] == [
        i.split("/")[1] for i in ds.ids]


def test_subsets_keep_the_file_ids(folder):
  root, members = folder
  ds = data_lib.load_dataset(f"folder:{root}", "all")
  rest, held = data_lib.hold_out(ds, 4, seed=1)
  assert sorted([*rest.ids, *held.ids]) == members and len(held.ids) == 4
  for part in (rest, held):
    assert [ds.class_names[l] for l in part.labels] == [
        i.split("/")[1] for i in part.ids]
  cut = data_lib.imbalanced(ds, classes=(1,), keep_fraction=0.5, seed=0)
  assert len(cut) == 11 and set(cut.ids) < set(members)
  picked = dataset.subset(ds, np.array([0, 5, 11]), "three")
  assert list(picked.ids) == [members[0], members[5], members[11]]


def test_array_datasets_default_to_split_row_ids():
  images = np.zeros((3, 4, 4, 1), np.uint8)
  labels = np.array([0, 1, 0], np.int32)
  ds = data_lib.ArrayDataset(images, labels, 2, ("x", "y"), "toy", "train",
                             "memory")
  assert list(ds.ids) == ["train/0", "train/1", "train/2"]
  named = data_lib.ArrayDataset(images, labels, 2, ("x", "y"), "toy", "train",
                                "memory", ids=["p", "q", "r"])
  assert named.ids.dtype.kind == "U" and list(named.ids) == ["p", "q", "r"]
  with pytest.raises(UserError, match="3 examples but ids"):
    data_lib.ArrayDataset(images, labels, 2, ("x", "y"), "toy", "train",
                          "memory", ids=["p", "q"])


def test_packed_datasets_carry_ids_and_meet_the_protocol(folder, tmp_path):
  pytest.importorskip("array_record")
  pytest.importorskip("grain")
  root, members = folder
  ds = data_lib.load_dataset(f"folder:{root}", "all")
  with_ids = packed.packed_path(str(tmp_path / "a"), "photos", "all")
  packed.write_packed(with_ids, [(ds.images, ds.labels)], name="photos",
                      split="all", class_names=ds.class_names,
                      source=ds.source, ids=ds.ids)
  loaded = data_lib.load_dataset(f"packed:{with_ids}", "all")
  assert list(loaded.ids) == members
  # A subset of the lazy split keeps them too, and the images stay lazy.
  half = dataset.subset(loaded, np.array([1, 2]), "two")
  assert list(half.ids) == members[1:3]
  np.testing.assert_array_equal(half.images[0:2], ds.images[1:3])
  without = packed.packed_path(str(tmp_path / "b"), "photos", "all")
  packed.write_packed(without, [(ds.images, ds.labels)], name="photos",
                      split="all", class_names=ds.class_names, source="test")
  assert list(data_lib.load_dataset(f"packed:{without}", "all").ids) == [
      f"all/{i}" for i in range(12)]
  for each in (ds, loaded, half):
    assert isinstance(each, dataset.Dataset)
  assert not isinstance(np.zeros(3), dataset.Dataset)


def test_array_dataset_validates():
  ok = dict(images=np.zeros((2, 3, 3, 1), np.uint8),
            labels=np.array([0, 1], np.int32), num_classes=2,
            class_names=("a", "b"), name="t", split="train", source="test")
  assert len(data_lib.ArrayDataset(**ok)) == 2
  for change, msg in [
      (dict(images=np.zeros((2, 3, 3, 1), np.float32)), "uint8"),
      (dict(images=np.zeros((2, 3, 3, 2), np.uint8)), "C = 1"),
      (dict(labels=np.array([0, 1], np.int64)), "int32"),
      (dict(labels=np.array([0], np.int32)), "belong together"),
      (dict(labels=np.array([0, 2], np.int32)), "outside"),
      (dict(class_names=("a",)), "class names"),
  ]:
    with pytest.raises(UserError, match=msg):
      data_lib.ArrayDataset(**{**ok, **change})

"""metricjax.data.image_folder: class folders in a directory or a zip, its
errors, and the decoded-array cache."""

import os

import numpy as np
import pytest

from metricjax.data import image_folder
from metricjax.errors import UserError
from helpers import png_members
from helpers import write_members
from helpers import zip_members

LAYOUT = {"train": {"dog": 2, "cat": 3, "ant": 1}, "test": {"cat": 1, "dog": 2}}




@pytest.mark.parametrize("container", ["dir", "zip", "zip_with_top_folder"])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_image_folder(tmp_path, container, mode):
  files, expected = png_members(LAYOUT, mode=mode)
  if container == "dir":
    path = write_members(tmp_path / "tiny", files)
    (path / "train" / "notes.txt").write_text("not an image")
  else:
    path = zip_members(tmp_path / "tiny.zip", files,
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
  files, _ = png_members(LAYOUT)
  path = zip_members(tmp_path / "tiny.zip", files)
  with pytest.raises(image_folder.SplitNotFoundError, match="test, train"):
    image_folder.load_image_folder(path, "validation")
  files["train/cat/big.png"] = png_members(
      {"train": {"cat": 1}}, size=(7, 7))[0]["train/cat/0000.png"]
  zip_members(tmp_path / "mixed.zip", files)
  with pytest.raises(UserError, match="same size"):
    image_folder.load_image_folder(tmp_path / "mixed.zip", "train")
  files["train/cat/big.png"] = b"not a png"
  zip_members(tmp_path / "broken.zip", files)
  with pytest.raises(UserError, match="Cannot decode image .*big.png"):
    image_folder.load_image_folder(tmp_path / "broken.zip", "train")
  with pytest.raises(UserError, match="does not exist"):
    image_folder.load_image_folder(tmp_path / "nothing", "train")


@pytest.mark.parametrize("container", ["dir", "zip"])
def test_image_folder_cache(tmp_path, monkeypatch, container):
  files, expected = png_members(LAYOUT)
  if container == "dir":
    path = write_members(tmp_path / "tiny", files)
  else:
    path = zip_members(tmp_path / "tiny.zip", files)
  decoded = []
  real_decode = image_folder.decode_image
  monkeypatch.setattr(image_folder, "decode_image",
                      lambda *a, **k: decoded.append(1) or real_decode(*a, **k))
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
    write_members(path, files)
  else:
    os.remove(path)
    zip_members(path, files)
  fourth = image_folder.load_image_folder(path, "train")
  assert len(decoded) == 19 and len(fourth) == 7

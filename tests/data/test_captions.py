"""Caption data: the Karpathy JSON loader, data-dir resolution, TFDS
COCO captions."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image
import pytest

from metricjax.data import captions as captions_lib
from metricjax.errors import UserError


def write_karpathy_fixture(root, *, coco=False):
  """A 6-image Karpathy JSON + PNG folder; images have 5 to 7 captions."""
  splits = ["train", "train", "restval", "val", "test", "test"]
  entries = []
  for k, split in enumerate(splits):
    folder = ("train2014" if split == "train" else "val2014") if coco else ""
    os.makedirs(root / "images" / folder, exist_ok=True)
    filename = f"img{k}.png"
    Image.fromarray(np.full((8 + k, 10, 3), 20 * k, np.uint8)).save(
        root / "images" / folder / filename)
    sentences = [{"raw": f"Image {k}, caption {c}.",
                  "tokens": ["image", str(k), "caption", str(c)]}
                 for c in range(5 + k % 3)]
    entry = {"filename": filename, "split": split, "imgid": k,
             "sentences": sentences}
    if coco:
      entry["filepath"] = folder
    entries.append(entry)
  path = root / ("dataset_coco.json" if coco else "dataset_flickr8k.json")
  path.write_text(json.dumps({"dataset": "coco" if coco else "flickr8k",
                              "images": entries}))
  return path


@pytest.mark.parametrize("coco", [False, True])
def test_karpathy_loader(tmp_path, coco):
  path = write_karpathy_fixture(tmp_path, coco=coco)
  test = captions_lib.load_karpathy(path, "test", image_size=6)
  assert test.name == ("coco" if coco else "flickr8k") and len(test) == 2
  assert [os.path.basename(p) for p in test.image_names] == ["img4.png",
                                                             "img5.png"]
  # First 5 of 6 or 7 captions, caption j of image j // 5.
  assert len(test.captions) == 10
  assert test.captions[:2] == ("Image 4, caption 0.", "Image 4, caption 1.")
  assert test.captions[5] == "Image 5, caption 0."
  batch = test.images[0:2]
  assert batch.shape == (2, 6, 6, 3) and batch.dtype == np.uint8
  assert batch[1].max() == 100
  train = captions_lib.load_karpathy(path, "train+restval", image_size=None)
  assert len(train) == 3 and len(train.captions) == 15
  assert train.images[0].shape == (8, 10, 3)
  with pytest.raises(UserError, match="size"):
    train.images[0:2]  # Different sizes cannot stack without resizing.


def test_karpathy_loader_errors(tmp_path):
  path = write_karpathy_fixture(tmp_path)
  data = json.loads(path.read_text())
  data["images"][3]["sentences"] = data["images"][3]["sentences"][:4]
  path.write_text(json.dumps(data))
  with pytest.raises(UserError, match="img3.png has 4 captions"):
    captions_lib.load_karpathy(path, "val")
  with pytest.raises(UserError, match="Unknown caption split"):
    captions_lib.load_karpathy(path, "dev")
  os.remove(tmp_path / "images" / "img4.png")
  with pytest.raises(UserError, match="1 of the 2 test images"):
    captions_lib.load_karpathy(path, "test")


def test_load_captions_resolves_data_dir(tmp_path, monkeypatch):
  write_karpathy_fixture(tmp_path / "flickr8k")
  monkeypatch.setenv("METRICJAX_DATA_DIR", str(tmp_path))
  split = captions_lib.load_captions("flickr8k", "val", image_size=4)
  assert len(split) == 1 and split.name == "flickr8k"
  spec = captions_lib.load_captions(
      f"karpathy:{tmp_path}/flickr8k/dataset_flickr8k.json", "val")
  assert spec.captions == split.captions
  with pytest.raises(UserError, match="flickr30k"):
    captions_lib.load_captions("flickr30k", "test")


def test_coco_builder_still_needs_the_int64_patch():
  """Fails when TFDS builds coco_captions without TensorFlow by itself: then
  captions._let_coco_builder_run_without_tensorflow can go."""
  pytest.importorskip("tensorflow_datasets")
  if importlib.util.find_spec("tensorflow") is not None:
    pytest.skip("TensorFlow is installed: the patch is not used")
  code = textwrap.dedent("""
      import tensorflow_datasets as tfds
      with tfds.testing.mock_data(num_examples=2):
        try:
          tfds.data_source("coco_captions", split="test")
        except Exception as e:
          print("needs tensorflow" if "tensorflow" in str(e) else repr(e))
        else:
          print("builds without tensorflow")
  """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=120, check=False)
  assert out.stdout.split()[-2:] == ["needs", "tensorflow"], (
      out.stdout + out.stderr[-2000:])


def test_tfds_coco_captions_mock():
  tfds = pytest.importorskip("tensorflow_datasets")
  # Without TensorFlow, TFDS's coco builder needs the loader's tf.int64
  # stand-in (captions._let_coco_builder_run_without_tensorflow).
  captions_lib._let_coco_builder_run_without_tensorflow()
  with tfds.testing.mock_data(num_examples=6):
    source = tfds.data_source("coco_captions", split="test")
    counts = [len(source[i]["captions"]["text"]) for i in range(len(source))]
    texts = [str(source[i]["captions"]["text"][0]) for i in range(2)]
    # The mock draws 5 or more captions per image (seeded); more than the
    # shortest image has must be refused.
    with pytest.raises(UserError, match=f"fewer than {min(counts) + 1}"):
      captions_lib.load_coco_captions_tfds(
          "test", image_size=5, captions_per_image=min(counts) + 1)
    cpi = min(5, min(counts))
    split = captions_lib.load_coco_captions_tfds("test", image_size=5,
                                                 captions_per_image=cpi)
    batch = split.images[0:3]
  assert len(split) == 6 and len(split.captions) == 6 * cpi
  assert split.captions[0] == texts[0] and split.captions[cpi] == texts[1]
  assert batch.shape == (3, 5, 5, 3) and batch.dtype == np.uint8

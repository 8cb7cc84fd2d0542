"""The synthetic caption demo: attribute captions of images, a Karpathy JSON."""

import json

import numpy as np
import pytest

from metricjax.data import caption_demo
from metricjax.data import captions as captions_lib
from metricjax.data.dataset import ArrayDataset
from metricjax.errors import UserError


def tiny_array_dataset(n, split, seed):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 60, (n, 12, 12, 3), np.uint8)
  labels = (np.arange(n) % 3).astype(np.int32)
  for i in range(n):
    images[i, :4, -4:] = 250  # Bright top right corner...
    images[i, ..., i % 3] += 120  # ... in a per-image hue.
  return ArrayDataset(images, labels, 3, ("airplane", "cat", "T-shirt/top"),
                      "tiny", split, "test")


def test_describe_image():
  image = np.zeros((9, 9, 3), np.uint8)
  image[..., 2] = 200
  image[6:, :3] = 255
  got = caption_demo.describe_image(image)
  assert got == {"colour": "blue", "brightness": "dark",
                 "position": "bottom left"}
  assert caption_demo.colour_name((250, 250, 250)) == "white"
  assert caption_demo.colour_name((200, 30, 30)) == "red"
  assert caption_demo.colour_name((128, 128, 128)) == "gray"


def test_caption_demo_round_trip(tmp_path):
  train, test = tiny_array_dataset(30, "train", 0), tiny_array_dataset(
      8, "test", 1)
  out = tmp_path / "caption_demo"
  path = caption_demo.write_caption_demo(out, train, test, sizes=(20, 5, 5),
                                         seed=3)
  data = json.loads(open(path).read())
  assert data["synthetic"] and "SYNTHETIC" in data["description"]
  assert (out / "README.txt").exists()
  sizes = {s: sum(e["split"] == s for e in data["images"])
           for s in ("train", "val", "test")}
  assert sizes == {"train": 20, "val": 5, "test": 5}
  sources = [e["source"] for e in data["images"] if e["split"] != "test"]
  assert len(set(sources)) == 25  # train and val do not overlap
  for e in data["images"]:
    raws = [s["raw"] for s in e["sentences"]]
    assert len(raws) == 5 and len(set(raws)) == 5  # 5 different phrasings
    assert e["attributes"]["position"] == "top right"
    assert all(e["attributes"]["colour"] in r for r in raws[:5]
               if "tones" in r)
  val = captions_lib.load_karpathy(path, "val", image_size=None)
  assert val.images[0:5].shape == (5, 12, 12, 3) and len(val.captions) == 25
  first = data["images"][20]
  index = int(first["source"].split("[")[1].rstrip("]"))
  np.testing.assert_array_equal(val.images[0], train.images[index])
  # Seeded: the same call writes the same captions.
  again = caption_demo.write_caption_demo(tmp_path / "again", train, test,
                                          sizes=(20, 5, 5), seed=3)
  assert json.loads(open(again).read())["images"] == data["images"]
  with pytest.raises(UserError, match="fewer than"):
    caption_demo.write_caption_demo(tmp_path / "big", train, test,
                                    sizes=(29, 5, 5))

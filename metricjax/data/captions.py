"""Captioned image splits: Karpathy JSON + image folder, or TFDS coco_captions.

Karpathy's `dataset_{flickr8k,flickr30k,coco}.json` lists images[] with
`filename`, `filepath` (COCO: "train2014"/"val2014"), `split` (train,
restval, val, test) and `sentences[]` with `raw` and `tokens`. Every image
keeps exactly its first 5 captions (some COCO images have 6 or 7); fewer is
an error. Caption j of a split belongs to image j // captions_per_image, the
order the metrics expect (metrics.crossmodal_metrics).

Images are decoded lazily (ImageFiles, TfdsImages): a split's slice is a
uint8 (n, size, size, 3) array, each image resized so its shorter side is
`size` and centre-cropped, ImageNet's evaluation crop.
"""

import dataclasses
import importlib.util
import json
import os
import sys
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from metricjax.data.decode import decode_image
from metricjax.data.sources import DATA_DIR_ENV
from metricjax.data.tfds_source import default_tfds_dir
from metricjax.data.tfds_source import TfdsUnavailableError
from metricjax.errors import one_line
from metricjax.errors import UserError

CAPTIONS_PER_IMAGE = 5
KARPATHY_SPLITS = ("train", "restval", "val", "test")
# Offline layout: $METRICJAX_DATA_DIR/<name>/dataset_<name>.json + images/.
KNOWN_CAPTION_DATASETS = ("flickr8k", "flickr30k", "coco", "caption_demo")


def resize_center_crop(image: np.ndarray | Image.Image,
                       size: int) -> np.ndarray:
  """RGB uint8 (size, size, 3): shorter side to size, centre crop."""
  im = image
  if not isinstance(im, Image.Image):
    a = np.asarray(im)
    im = Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a)
  im = im.convert("RGB")
  w, h = im.size
  scale = size / min(w, h)
  nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
  if (nw, nh) != (w, h):
    im = im.resize((nw, nh), Image.BILINEAR)
  left, top = (nw - size) // 2, (nh - size) // 2
  return np.asarray(im.crop((left, top, left + size, top + size)))


class ImageFiles(Sequence):
  """Image files read on access; a slice is a uint8 (n, H, W, 3) array.

  size=None keeps the files' own size (they must all be the same), else
  each is resized and centre-cropped to size x size.
  """

  def __init__(self, paths: Sequence[str], size: int | None = 224):
    self.paths = tuple(paths)
    self.size = size

  def __len__(self) -> int:
    return len(self.paths)

  def _read(self, path) -> np.ndarray:
    try:
      with open(path, "rb") as f:
        data = f.read()
    except FileNotFoundError:
      raise UserError(f"Image {path} does not exist.") from None
    except OSError as e:
      raise UserError(f"Cannot read image {path}: {e.strerror or e}.") from None
    image = decode_image(data, path)
    return image if self.size is None else resize_center_crop(image, self.size)

  def __getitem__(self, index):
    if isinstance(index, slice):
      arrays = [self._read(p) for p in self.paths[index]]
      return _stack(arrays, self.paths[index])
    return self._read(self.paths[index])


class TfdsImages(Sequence):
  """Images of a tfds.data_source, decoded one example at a time."""

  def __init__(self, source, size: int | None = 224):
    self.source = source
    self.size = size

  def __len__(self) -> int:
    return len(self.source)

  def _read(self, i) -> np.ndarray:
    image = np.asarray(self.source[i]["image"])
    if self.size is not None:
      return resize_center_crop(image, self.size)
    return image if image.shape[-1] == 3 else np.repeat(image, 3, axis=-1)

  def __getitem__(self, index):
    if isinstance(index, slice):
      indices = range(len(self))[index]
      return _stack([self._read(i) for i in indices],
                    [f"example {i}" for i in indices])
    return self._read(range(len(self))[index])


def _stack(arrays, names):
  if not arrays:
    return np.zeros((0, 0, 0, 3), np.uint8)
  shape = arrays[0].shape
  for a, name in zip(arrays, names):
    if a.shape != shape:
      raise UserError(f"{name} is {a.shape[1]}x{a.shape[0]} pixels, "
                      f"{names[0]} {shape[1]}x{shape[0]}; give an image size "
                      "to resize them to one size.")
  return np.stack(arrays)


@dataclasses.dataclass(frozen=True, eq=False)
class CaptionSplit:
  """One split of a captioned image dataset.

  Attributes:
    images: lazy uint8 images (ImageFiles or TfdsImages); len = N.
    image_names: file paths (Karpathy) or TFDS file names, len N.
    captions: N * captions_per_image raw caption strings; caption j belongs
      to image j // captions_per_image.
    captions_per_image: 5 for Flickr and COCO.
    name, split, source: for logs and eval reports.
  """
  images: Sequence
  image_names: tuple[str, ...]
  captions: tuple[str, ...]
  captions_per_image: int
  name: str
  split: str
  source: str

  def __post_init__(self):
    if len(self.captions) != len(self.images) * self.captions_per_image:
      raise UserError(f"{self.name}/{self.split}: {len(self.captions)} "
                      f"captions for {len(self.images)} images.")

  def __len__(self) -> int:
    return len(self.image_names)


def _split_parts(split: str, allowed) -> list[str]:
  parts = [p.strip() for p in split.split("+")]
  bad = [p for p in parts if p not in allowed]
  if bad or not parts:
    raise UserError(f"Unknown caption split {split!r}; use one of "
                    f"{', '.join(allowed)}, or several joined by '+' "
                    "(COCO trains on train+restval).")
  return parts


def load_karpathy(json_path: str | os.PathLike, split: str, *,
                  image_dir: str | os.PathLike | None = None,
                  image_size: int | None = 224,
                  captions_per_image: int = CAPTIONS_PER_IMAGE,
                  name: str | None = None) -> CaptionSplit:
  """One split ("train", "val", "test", "restval", "train+restval").

  Args:
    json_path: a Karpathy dataset_*.json.
    split: the split, or several joined by "+".
    image_dir: root of the images; an image is image_dir/filepath/filename
      (filepath only when the entry has one). Default: the "images" folder
      next to the JSON when there is one, else the JSON's folder.
    image_size: resize + centre crop size of the lazy images; None keeps
      the files' size.
    captions_per_image: captions kept per image, the first ones.
    name: dataset name; default from the JSON ("dataset") or file name.
  """
  json_path = os.path.abspath(os.fspath(json_path))
  try:
    with open(json_path, encoding="utf-8") as f:
      data = json.load(f)
  except FileNotFoundError:
    raise UserError(
        f"Karpathy caption file {json_path} does not exist.") from None
  except json.JSONDecodeError as e:
    raise UserError(f"{json_path} is not valid JSON ({e}).") from None
  if not isinstance(data, dict) or not isinstance(data.get("images"), list):
    raise UserError(f"{json_path} has no 'images' list; it is not a Karpathy "
                    "dataset_*.json.")
  if name is None:
    name = data.get("dataset") or os.path.basename(json_path).removeprefix(
        "dataset_").removesuffix(".json")
  if image_dir is None:
    base = os.path.dirname(json_path)
    image_dir = (os.path.join(base, "images")
                 if os.path.isdir(os.path.join(base, "images")) else base)
  image_dir = os.fspath(image_dir)
  wanted = set(_split_parts(split, KARPATHY_SPLITS))

  paths, captions = [], []
  for k, entry in enumerate(data["images"]):
    if not isinstance(entry, dict) or "split" not in entry:
      raise UserError(f"{json_path}: images[{k}] has no 'split'; a Karpathy "
                      "entry needs filename, split and sentences.")
    if entry["split"] not in wanted:
      continue
    try:
      filename = entry["filename"]
      sentences = entry["sentences"]
    except KeyError as e:
      raise UserError(
          f"{json_path}: images[{k}] has no {e.args[0]!r}; a Karpathy entry "
          "needs filename, split and sentences.") from None
    if len(sentences) < captions_per_image:
      raise UserError(
          f"{json_path}: image {filename} has {len(sentences)} captions, "
          f"fewer than {captions_per_image}. Every image needs "
          f"{captions_per_image} (the first are kept); fix or drop it.")
    for s in sentences[:captions_per_image]:
      raw = s.get("raw") if isinstance(s, dict) else None
      if raw is None and not (isinstance(s, dict) and "tokens" in s):
        raise UserError(f"{json_path}: a sentence of image {filename} has "
                        "neither 'raw' nor 'tokens'.")
      captions.append(raw if raw is not None else " ".join(s["tokens"]))
    paths.append(os.path.join(image_dir, entry.get("filepath", ""), filename))
  if not paths:
    found = sorted({str(e.get("split")) for e in data["images"]})
    raise UserError(f"{json_path} has no images in split {split!r}; its "
                    f"splits are {', '.join(found)}.")
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise UserError(
        f"{len(missing)} of the {len(paths)} {split} images of {json_path} are "
        f"not in {image_dir}, e.g. {missing[0]}. Pass image_dir= the folder "
        "holding the images (COCO: the one with train2014/ and val2014/).")
  return CaptionSplit(ImageFiles(paths, image_size), tuple(paths),
                      tuple(captions), captions_per_image, name, split,
                      f"Karpathy {json_path}")


def load_coco_captions_tfds(split: str, *, data_dir: str | None = None,
                            image_size: int | None = 224,
                            captions_per_image: int = CAPTIONS_PER_IMAGE,
                            download: bool = False) -> CaptionSplit:
  """TFDS `coco_captions` (Karpathy splits: train, restval, val, test).

  Reads through tfds.data_source (array_record, no TensorFlow) one example
  at a time; the captions pass decodes every image once, the images are
  decoded again when sliced.
  """
  _split_parts(split, KARPATHY_SPLITS)
  where = data_dir or default_tfds_dir()
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    _let_coco_builder_run_without_tensorflow()
    source = tfds.data_source("coco_captions", split=split, data_dir=data_dir,
                              download=download)
  except Exception as e:  # ImportError, DatasetNotFoundError, ...
    reason = f"{type(e).__name__}: {one_line(e)}"
    raise TfdsUnavailableError(
        f"TFDS could not load coco_captions split {split!r} in {where}: "
        f"{reason}. Prepare it on a machine with internet (`tfds build "
        "coco_captions --file_format=array_record`) and copy it there, or use "
        "the Karpathy JSON (karpathy:PATH/dataset_coco.json).", reason) from e
  names, captions = [], []
  for i in tqdm(range(len(source)), desc=f"reading coco_captions/{split}",
                unit="img", file=sys.stderr, mininterval=0.5,
                dynamic_ncols=True):
    example = source[i]
    texts = [str(t.decode() if isinstance(t, bytes) else t)
             for t in example["captions"]["text"]]
    name = example.get("image/filename", f"example {i}")
    name = name.decode() if isinstance(name, bytes) else str(name)
    if len(texts) < captions_per_image:
      raise UserError(
          f"TFDS coco_captions/{split}: {name} has {len(texts)} captions, "
          f"fewer than {captions_per_image}; the prepared data is not the "
          "Karpathy COCO split.")
    captions.extend(texts[:captions_per_image])
    names.append(name)
  if not names:
    raise UserError(f"TFDS coco_captions split {split!r} in {where} is empty.")
  return CaptionSplit(TfdsImages(source, image_size), tuple(names),
                      tuple(captions), captions_per_image, "coco", split,
                      f"TFDS coco_captions in {where}")


class _Int64OnlyTF:
  """TFDS's lazy `tf` in its coco module, answering tf.int64 without TF."""

  def __init__(self, lazy_tf):
    self._lazy_tf = lazy_tf

  def __getattr__(self, name):
    if name == "int64":
      return np.int64
    return getattr(self._lazy_tf, name)  # Still needs TensorFlow.


def _let_coco_builder_run_without_tensorflow():
  # TFDS 4.9 (checked up to 4.9.10): Coco._info declares 'image/id' as
  # tf.int64, so coco_captions cannot even be constructed (to read prepared
  # array_record files, or under tfds.testing.mock_data) without
  # TensorFlow. np.int64 is what TFDS turns tf.int64 into; nothing else of
  # TF is used on the reading path. tests/data/test_captions.py
  # test_coco_builder_still_needs_the_int64_patch fails once a TFDS release
  # no longer needs this; then delete it.
  if importlib.util.find_spec("tensorflow") is not None:
    return
  from tensorflow_datasets.object_detection import coco  # pylint: disable=g-import-not-at-top
  if not isinstance(coco.tf, _Int64OnlyTF):
    coco.tf = _Int64OnlyTF(coco.tf)


def load_captions(name: str, split: str, *, data_dir: str | None = None,
                  image_size: int | None = 224) -> CaptionSplit:
  """A captioned split by name or spec.

  Resolution: "karpathy:PATH.json" (images next to it, see load_karpathy);
  "tfds:coco_captions"; a known name (flickr8k, flickr30k, coco,
  caption_demo) in data_dir or $METRICJAX_DATA_DIR as
  <name>/dataset_<name>.json with <name>/images/; then, for coco, TFDS.
  """
  kind, _, arg = name.partition(":")
  if kind == "karpathy" and arg:
    return load_karpathy(os.path.expanduser(arg), split, image_size=image_size)
  if kind == "tfds" and arg:
    if arg != "coco_captions":
      raise UserError(f"TFDS captions: only coco_captions has a builder (TFDS "
                      f"has none for Flickr), got {arg!r}.")
    return load_coco_captions_tfds(split, image_size=image_size, download=True)
  canonical = name.strip().lower().replace("-", "_")
  if canonical not in KNOWN_CAPTION_DATASETS:
    raise UserError(f"Unknown caption dataset {name!r}. Known: "
                    f"{', '.join(KNOWN_CAPTION_DATASETS)}; or a spec "
                    "karpathy:PATH/dataset_X.json or tfds:coco_captions.")
  root = data_dir or os.environ.get(DATA_DIR_ENV)
  looked = []
  if root:
    path = os.path.join(os.path.abspath(root), canonical,
                        f"dataset_{canonical}.json")
    if os.path.isfile(path):
      return load_karpathy(path, split, image_size=image_size, name=canonical)
    looked.append(f"{path} (not there)")
  else:
    looked.append(f"${DATA_DIR_ENV} (not set)")
  if canonical == "coco":
    try:
      return load_coco_captions_tfds(split, image_size=image_size,
                                     download=True)
    except TfdsUnavailableError as e:
      looked.append(f"TFDS coco_captions ({e.reason})")
  todo = ("python tools/make_caption_demo.py --out=$METRICJAX_DATA_DIR/"
          "caption_demo" if canonical == "caption_demo" else
          "download Karpathy's caption_datasets.zip and the images")
  raise UserError(
      f"Caption dataset {canonical!r} was not found. Looked in: "
      f"{'; '.join(looked)}. Lay it out as <dir>/{canonical}/dataset_"
      f"{canonical}.json + <dir>/{canonical}/images/ and set {DATA_DIR_ENV}="
      f"<dir> ({todo}), or pass karpathy:PATH.json.")

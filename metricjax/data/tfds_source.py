"""TFDS splits through `tfds.data_source` (random access, no TensorFlow)."""

import os
import socket
import sys

import numpy as np
from tqdm import tqdm

from metricjax.data.dataset import ArrayDataset
from metricjax.data.dataset import row_ids
from metricjax.errors import one_line
from metricjax.errors import UserError


class TfdsUnavailableError(UserError):
  """TFDS could not provide the dataset; `reason` says why in one line."""

  def __init__(self, message: str, reason: str):
    super().__init__(message)
    self.reason = reason


def default_tfds_dir() -> str:
  """Where TFDS reads and writes when no data_dir is given (as TFDS decides)."""
  return os.environ.get("TFDS_DATA_DIR") or os.path.join(
      os.path.expanduser("~"), "tensorflow_datasets")


def _prepared(tfds, name: str, data_dir: str | None) -> bool:
  try:
    return tfds.builder(name, data_dir=data_dir).is_prepared()
  except Exception:  # Unknown name etc.: let data_source report it.
    return False


def _offline(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
    return False
  except OSError:
    return True


def load_tfds(name: str, split: str, *, data_dir: str | None = None,
              download: bool = False) -> ArrayDataset:
  """Loads a TFDS split with an 'image' and a 'label' feature into memory.

  Args:
    name: TFDS name, optionally with config and version ("mnist:3.0.1").
    split: any TFDS split string ("train", "test[:1000]").
    data_dir: TFDS data directory; None means $TFDS_DATA_DIR or
      ~/tensorflow_datasets.
    download: download and prepare (as array_record) when not there yet.
  """
  where = data_dir or default_tfds_dir()
  try:
    # Imported here: it is slow to import and only this source needs it.
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise TfdsUnavailableError(
        f"TFDS is not usable ({e}); install tensorflow-datasets to load "
        f"{name!r} from TFDS, or use offline data (set METRICJAX_DATA_DIR).",
        f"tensorflow_datasets cannot be imported: {e}") from e
  # Offline, TFDS retries each download for minutes before failing.
  download = download and not (_prepared(tfds, name, data_dir) or _offline())
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir,
                              download=download)
  except Exception as e:  # TFDS raises many types (also for a missing module).
    reason = f"{type(e).__name__}: {one_line(e)}"
    if download:
      todo = ("Check the internet connection and the name, or use offline "
              "data (set METRICJAX_DATA_DIR).")
    else:
      todo = (f"Prepare it on a machine with internet (`tfds build {name} "
              "--file_format=array_record`; tfds.data_source cannot read the "
              "default tfrecord format) and copy it there, or use offline "
              "data (set METRICJAX_DATA_DIR).")
    raise TfdsUnavailableError(
        f"TFDS could not {'download or ' if download else ''}load {name!r} "
        f"split {split!r} in {where}: {reason}. {todo}", reason) from e

  features = source.dataset_info.features
  missing = [k for k in ("image", "label") if k not in features]
  if missing:
    raise UserError(
        f"TFDS dataset {name!r} has no {' or '.join(map(repr, missing))} "
        f"feature (it has {', '.join(features.keys())}); only image "
        "classification datasets can be loaded.")
  label_feature = features["label"]
  if getattr(label_feature, "num_classes", None) is None:
    raise UserError(f"TFDS dataset {name!r}: its 'label' feature is "
                    f"{type(label_feature).__name__}, not a ClassLabel; only "
                    "image classification datasets can be loaded.")
  num_classes = int(label_feature.num_classes)
  class_names = tuple(label_feature.names)
  n = len(source)
  if n == 0:
    raise UserError(f"TFDS split {split!r} of {name!r} in {where} is empty.")
  images, labels = None, np.empty(n, np.int32)
  try:
    for i in tqdm(range(n), desc=f"reading tfds {name}/{split}", unit="img",
                  file=sys.stderr, mininterval=0.5, dynamic_ncols=True):
      example = source[i]
      image = np.asarray(example["image"])
      if images is None:
        images = np.empty((n,) + image.shape, np.uint8)
      if image.shape != images.shape[1:]:
        raise UserError(
            f"TFDS {name!r} split {split!r}: example {i} has image shape "
            f"{image.shape}, example 0 has {images.shape[1:]}; only datasets "
            "with one image size can be held as arrays.")
      images[i] = image
      labels[i] = example["label"]
  except UserError:
    raise
  except Exception as e:
    raise UserError(f"Reading TFDS {name!r} split {split!r} from {where} "
                    f"failed: {type(e).__name__}: {one_line(e)}. The "
                    "prepared files may be corrupt; delete and prepare them "
                    "again.") from e
  if images.ndim == 3:  # Some builders declare (H, W) grayscale images.
    images = images[..., None]
  info = source.dataset_info
  return ArrayDataset(
      images=images, labels=labels, num_classes=num_classes,
      class_names=class_names, name=info.name, split=split,
      source=f"TFDS {info.full_name} in {info.data_dir}",
      ids=row_ids(split, n))


"""Packed image splits: one ArrayRecord file of raw uint8 images, read by
random access, for datasets larger than the devices (or host memory).

  NAME-SPLIT.array_record        one record per image, H*W*C raw bytes,
                                 uncompressed (decoding costs nothing)
  NAME-SPLIT.array_record.json   format, version, count, image shape,
                                 class names, source
  NAME-SPLIT.array_record.labels.npy   int32 labels, all in memory (4 MB
                                 per million images): samplers need them
  NAME-SPLIT.array_record.ids.npy      the examples' ids (paths inside the
                                 source's folder or zip), when they have
                                 ids other than "split/row"

ArrayRecord is the random-access format of the JAX data stack (grain and
TFDS read it). `tools/pack_arrayrecord.py` packs any dataset spec.
"""

import dataclasses
import json
import os
from typing import ClassVar, Iterable

import numpy as np

from metricjax import files
from metricjax.data.dataset import check_ids
from metricjax.data.dataset import row_ids
from metricjax.errors import one_line
from metricjax.errors import UserError

FORMAT = "metricjax.packed_images"
EXTENSION = ".array_record"


def packed_path(directory: str, name: str, split: str) -> str:
  return os.path.join(directory, f"{name}-{split}{EXTENSION}")


def write_packed(path: str, batches: Iterable[tuple[np.ndarray, np.ndarray]],
                 *, name: str, split: str, class_names, source: str,
                 ids=None) -> dict:
  """Writes (images uint8 (B, H, W, C), labels (B,)) batches, and the ids of
  all examples when given (else they are "split/row"); returns the meta.
  The files appear together or not at all: each is written to a temporary
  name, and the .json, which vouches for the others, last."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1,uncompressed")
  labels, shape = [], None
  try:
    for images, batch_labels in batches:
      images = np.asarray(images)
      if shape is None:
        shape = images.shape[1:]
      if images.dtype != np.uint8 or images.shape[1:] != shape:
        raise UserError(f"Packing {name}/{split}: images must all be uint8 of "
                        f"shape {shape}; got {images.dtype} {images.shape[1:]}.")
      for image in images:
        writer.write(np.ascontiguousarray(image).tobytes())
      labels.append(np.asarray(batch_labels, np.int32))
    writer.close()
    labels = np.concatenate(labels) if labels else np.zeros((0,), np.int32)
    if not len(labels):
      raise UserError(f"Packing {name}/{split}: the dataset is empty.")
    with files.atomic_write(path + ".labels.npy", "wb") as f:
      np.save(f, labels)
    if ids is not None:
      ids = check_ids(ids, len(labels), f"Packing {name}/{split}")
      with files.atomic_write(path + ".ids.npy", "wb") as f:
        np.save(f, ids)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  meta = dict(format=FORMAT, version=1, count=int(len(labels)),
              image_shape=list(shape), num_classes=len(class_names),
              class_names=list(class_names), name=name, split=split,
              source=source, ids=ids is not None)
  files.write_json(path + ".json", meta, indent=1)
  return meta


class PackedImages:
  """Lazy (N, H, W, C) uint8 images of a packed file: `images[i]`,
  `images[a:b]` and `images[index_array]` read only those records."""

  def __init__(self, path: str, count: int, shape: tuple[int, ...]):
    import grain  # pylint: disable=g-import-not-at-top
    self.path, self.shape = path, (count, *shape)
    self.dtype = np.dtype(np.uint8)
    try:
      self._source = grain.sources.ArrayRecordDataSource(path)
      found = len(self._source)
    except Exception as e:  # RuntimeError from Riegeli, ValueError, ...
      raise _corrupt(path, e) from e
    if found != count:
      raise UserError(f"{path} holds {found} images but its .json says "
                      f"{count}: the file is truncated or not the one the "
                      ".json describes. Pack it again.")

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, index) -> np.ndarray:
    if isinstance(index, (int, np.integer)):
      return self[np.asarray([index])][0]
    rows = (np.arange(*index.indices(len(self))) if isinstance(index, slice)
            else np.asarray(index).reshape(-1))
    try:
      records = self._source.__getitems__([int(i) for i in rows])
    except Exception as e:
      raise _corrupt(self.path, e) from e
    images = np.frombuffer(b"".join(records), np.uint8)
    return images.reshape(len(rows), *self.shape[1:])


def _corrupt(path, e) -> UserError:
  return UserError(f"{path} cannot be read as a packed image file "
                   f"({type(e).__name__}: {one_line(e)}); it is truncated or "
                   "corrupt. Pack it again with tools/pack_arrayrecord.py.")


@dataclasses.dataclass(frozen=True, eq=False)
class PackedDataset:
  """A split read from disk on demand (a dataset.Dataset): the attributes of
  ArrayDataset, with `images` lazy."""
  images: PackedImages
  labels: np.ndarray
  num_classes: int
  class_names: tuple[str, ...]
  name: str
  split: str
  source: str
  ids: np.ndarray
  pipeline: ClassVar[str] = "arrays"

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.images.shape))


def load_packed(path: str, split: str | None = None) -> PackedDataset:
  """The packed split at `path` (a .array_record file, or a directory with
  NAME-SPLIT.array_record for `split`)."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(path):
    found = sorted(f for f in os.listdir(path)
                   if f.endswith(f"-{split}{EXTENSION}"))
    if len(found) != 1:
      raise UserError(f"packed:{path}: expected one *-{split}{EXTENSION} file "
                      f"there, found {found or 'none'}. Pack the split with "
                      "tools/pack_arrayrecord.py or name the file.")
    path = os.path.join(path, found[0])
  try:
    with open(path + ".json") as f:
      meta = json.load(f)
    labels = np.load(path + ".labels.npy", allow_pickle=False)
  except (OSError, ValueError) as e:
    raise UserError(f"packed:{path}: its .json or .labels.npy is missing or "
                    f"unreadable ({one_line(e)}). Pack it with "
                    "tools/pack_arrayrecord.py.") from None
  if meta.get("format") != FORMAT:
    raise UserError(f"{path}.json is not a metricjax packed-images file.")
  if split is not None and meta["split"] != split:
    raise UserError(f"{path} holds split {meta['split']!r}, not {split!r}.")
  count = int(meta["count"])
  if labels.shape != (count,):
    raise UserError(f"{path}.labels.npy has {labels.shape} labels, not "
                    f"{count}: the files do not belong together.")
  ids = row_ids(meta["split"], count)
  if meta.get("ids"):
    try:
      ids = check_ids(np.load(path + ".ids.npy", allow_pickle=False), count,
                      f"{path}.ids.npy")
    except (OSError, ValueError) as e:
      raise UserError(f"packed:{path}: its .ids.npy is missing or unreadable "
                      f"({one_line(e)}). Pack it again with "
                      "tools/pack_arrayrecord.py.") from None
  images = PackedImages(path, count, tuple(meta["image_shape"]))
  return PackedDataset(images=images, labels=labels.astype(np.int32),
                       num_classes=int(meta["num_classes"]),
                       class_names=tuple(meta["class_names"]),
                       name=meta["name"], split=meta["split"],
                       source=f"packed {path}", ids=ids)

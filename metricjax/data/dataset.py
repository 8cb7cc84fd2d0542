"""Labelled image splits: the protocols every source's split meets,
the in-memory ArrayDataset, and the functions that take examples out of any
of them (subset, hold_out, hold_out_classes, imbalanced), keeping each
example's id."""

import dataclasses
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from metricjax.errors import UserError


class Images(Protocol):
  """uint8 (N, H, W, C) images read by rows: a numpy array, or lazy rows of
  a file; `images[i]`, `images[a:b]` and `images[index_array]` are numpy."""

  @property
  def shape(self) -> tuple[int, ...]: ...

  @property
  def dtype(self) -> np.dtype: ...

  def __len__(self) -> int: ...

  def __getitem__(self, index) -> np.ndarray: ...


@runtime_checkable
class LabelledSplit(Protocol):
  """What every source's split has, whatever holds its images: the labels,
  the class names and one id per example. Photo benchmarks
  (data/photos.PhotoDataset) are only this: their images are decoded by the
  host pipeline, never held."""

  @property
  def labels(self) -> np.ndarray: ...

  @property
  def num_classes(self) -> int: ...

  @property
  def class_names(self) -> tuple[str, ...]: ...

  @property
  def name(self) -> str: ...

  @property
  def split(self) -> str: ...

  @property
  def source(self) -> str: ...

  @property
  def ids(self) -> np.ndarray: ...

  # How a task reads the images: "arrays" (same-size uint8 rows, `images`:
  # Dataset below) or "photos" (files of any size, decoded into views by
  # the host pipeline).
  pipeline: ClassVar[str]

  def __len__(self) -> int: ...


@runtime_checkable
class Dataset(LabelledSplit, Protocol):
  """A split of same-size images read by rows, held in memory (ArrayDataset)
  or read from disk on demand (packed.PackedDataset); training, evaluation
  and search take either. Attributes as documented on ArrayDataset."""

  @property
  def images(self) -> Images: ...

  @property
  def image_shape(self) -> tuple[int, int, int]: ...

  @property
  def nbytes(self) -> int: ...


def query_gallery(ds: LabelledSplit):
  """(is_query, is_gallery) bool (N,) of a split evaluated query -> gallery
  (In-Shop, a csv: catalogue with those columns), else None: every example
  queries all the others."""
  query = getattr(ds, "is_query", None)
  return None if query is None else (query, ds.is_gallery)


def row_ids(split: str, n: int) -> np.ndarray:
  """The ids of examples that have no file of their own: "split/row"."""
  return np.asarray([f"{split}/{i}" for i in range(n)])


def check_ids(ids, n: int, where: str) -> np.ndarray:
  """`ids` as a str (n,) array; a UserError unless one string per example."""
  ids = np.asarray(ids)
  if ids.shape != (n,) or ids.dtype.kind not in "US":
    raise UserError(f"{where} has {n} examples but ids "
                    f"{_describe(ids)}; give one string id per example.")
  return ids.astype(str)


# eq=False: generated __eq__ would compare arrays elementwise and then fail.
@dataclasses.dataclass(frozen=True, eq=False)
class ArrayDataset:
  """One split of an image classification dataset, held in host memory.

  Attributes:
    images: uint8 (N, H, W, C), C = 1 (grayscale) or 3 (RGB).
    labels: int32 (N,), each in [0, num_classes).
    num_classes: number of classes; labels index `class_names`.
    class_names: human-readable class names, len == num_classes.
    name: canonical dataset name ("mnist", "fashion_mnist", "cifar10", ...).
    split: split name ("train", "test", ...).
    source: where the arrays came from, for logs and eval reports.
    ids: str (N,), one per example, kept by every subset: the file's path
      inside the folder or zip it came from, else "split/row" (the default).
  """
  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  class_names: tuple[str, ...]
  name: str
  split: str
  source: str
  ids: np.ndarray | None = None
  pipeline: ClassVar[str] = "arrays"

  def __post_init__(self):
    where = f"dataset {self.name!r} split {self.split!r} (from {self.source})"
    images, labels = self.images, self.labels
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
      raise UserError(f"The images of {where} must be a uint8 numpy array, got "
                      f"{_describe(images)}.")
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise UserError(f"The images of {where} have shape {images.shape}; "
                      "expected (N, H, W, C) with C = 1 (grayscale) or 3 "
                      "(RGB).")
    if not isinstance(labels, np.ndarray) or labels.dtype != np.int32:
      raise UserError(f"The labels of {where} must be an int32 numpy array, "
                      f"got {_describe(labels)}.")
    if labels.shape != images.shape[:1]:
      raise UserError(f"{where} has {images.shape[0]} images but labels of "
                      f"shape {labels.shape}; the two files do not belong "
                      "together.")
    if images.shape[0] == 0:
      raise UserError(f"{where} has no examples.")
    if self.num_classes < 1 or len(self.class_names) != self.num_classes:
      raise UserError(f"{where} declares num_classes={self.num_classes} but "
                      f"{len(self.class_names)} class names.")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= self.num_classes:
      raise UserError(f"{where} has labels in [{low}, {high}], outside "
                      f"[0, {self.num_classes}); the label file is corrupt or "
                      "belongs to another dataset.")
    # Frozen: set once here, the default being the rows of the split.
    object.__setattr__(self, "ids", row_ids(self.split, len(labels))
                       if self.ids is None else
                       check_ids(self.ids, len(labels), where))

  def __len__(self) -> int:
    return self.images.shape[0]

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])

  @property
  def nbytes(self) -> int:
    return int(self.images.nbytes)


def imbalanced(ds: Dataset, *, classes, keep_fraction: float, seed: int = 0):
  """Keeps a seeded `keep_fraction` of the examples of `classes` (at least
  2 each, so they still have positives); other classes stay whole."""
  if not 0.0 < keep_fraction <= 1.0:
    raise UserError(f"keep_fraction={keep_fraction} (config.imbalance) must be "
                    "in (0, 1].")
  bad = [c for c in classes if not 0 <= c < ds.num_classes]
  if bad:
    raise UserError(f"config.imbalance.classes has {bad}, not classes of "
                    f"{ds.name} (0 .. {ds.num_classes - 1}).")
  rng = np.random.default_rng(seed)
  keep = np.ones(len(ds), bool)
  for c in classes:
    members = np.flatnonzero(ds.labels == c)
    n = max(2, int(round(keep_fraction * len(members))))
    keep[rng.permutation(members)[n:]] = False
  return subset(ds, np.flatnonzero(keep),
                f"classes {list(classes)} cut to {keep_fraction:g}")


class IndexedImages:
  """Rows `index` of lazy images (a packed file), still lazy."""

  def __init__(self, images, index: np.ndarray):
    self._images, self._index = images, np.asarray(index)
    self.shape = (len(self._index), *images.shape[1:])
    self.dtype = images.dtype

  def __len__(self) -> int:
    return len(self._index)

  def __getitem__(self, index):
    return self._images[self._index[index]]


def subset(ds: LabelledSplit, index: np.ndarray, note: str, *,
           split: str | None = None, relabel: bool = False) -> LabelledSplit:
  """Examples `index` (increasing indices, or a bool mask) of any split.

  Every per-example field (an array of one row per example: labels, ids,
  images, a photo split's boxes and query / gallery roles) keeps those
  rows; in-memory images are copied, lazy ones (a packed file) viewed.
  relabel: the labels become 0..C-1 over the classes that remain, in the
  old order, with their names (class-disjoint parts). Every function that
  takes examples out of a dataset goes through here.
  """
  index = np.asarray(index)
  index = np.flatnonzero(index) if index.dtype == bool else index
  n = len(ds)
  rows = {}
  for field in dataclasses.fields(ds):
    value = getattr(ds, field.name)
    if field.name == "images" and not isinstance(value, np.ndarray):
      rows["images"] = IndexedImages(value, index)
    elif isinstance(value, np.ndarray) and value.shape[:1] == (n,):
      rows[field.name] = value[index]
  if relabel:
    classes, labels = np.unique(rows["labels"], return_inverse=True)
    rows.update(labels=labels.astype(np.int32), num_classes=len(classes),
                class_names=tuple(ds.class_names[c] for c in classes))
  if split is not None:
    rows["split"] = split
  return dataclasses.replace(ds, source=f"{ds.source}, {note}", **rows)


def relabel(class_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(labels 0..C-1 in increasing class id order, the sorted class ids)."""
  classes, labels = np.unique(class_ids, return_inverse=True)
  return labels.astype(np.int32), classes


def _describe(x) -> str:
  if isinstance(x, np.ndarray):
    return f"a {x.dtype} array of shape {x.shape}"
  return type(x).__name__


def hold_out(ds: Dataset, size: int, *, seed: int = 0):
  """(rest, held_out): `size` examples split off `ds`, stratified by class.

  Each class gives its share of `size` (largest remainder, so the shares add
  up to `size`), drawn with a fixed seed: the same examples for every run
  of a config, whatever its training seed, so runs are compared on one
  validation set. Both parts keep the original order.
  """
  n = len(ds)
  if not 0 < size < n:
    raise UserError(f"config.val_size={size} must be between 1 and the "
                    f"{n - 1} examples of {ds.name} {ds.split} that would "
                    "leave at least one for training.")
  counts = np.bincount(ds.labels, minlength=ds.num_classes)
  exact = size * counts / n
  quota = np.floor(exact).astype(int)
  # Largest remainders first, lower class first among equals.
  order = np.lexsort((np.arange(ds.num_classes), -(exact - quota)))
  quota[order[:size - quota.sum()]] += 1
  rng = np.random.default_rng(seed)
  held = np.zeros(n, bool)
  for c in np.flatnonzero(quota):
    members = np.flatnonzero(ds.labels == c)
    held[rng.choice(members, size=quota[c], replace=False)] = True
  return (subset(ds, np.flatnonzero(~held),
                 f"without the {size} held-out examples"),
          subset(ds, np.flatnonzero(held),
                 f"{size} examples held out for validation"))


def hold_out_classes(ds: LabelledSplit, val_classes: float, *,
                     seed: int = 0) -> tuple[LabelledSplit, LabelledSplit]:
  """(rest, held_out): every example of some classes of `ds` split off, the
  validation of the field's benchmarks (classes held out of the training
  classes, never the test split: "A Metric Learning Reality Check",
  powerful-benchmarker's ClassDisjointSplitManager).

  val_classes: a fraction of the classes in (0, 1) (rounded, at least 2),
  or a count >= 2. The classes are drawn with a fixed seed: the same for
  every run of a config, whatever its training seed, so runs are compared
  on one validation set. Both parts keep the original order; each is
  relabelled 0..C-1 over its own classes.
  """
  total = ds.num_classes
  if 0 < val_classes < 1:
    count = max(2, int(round(val_classes * total)))
  elif val_classes >= 1 and float(val_classes).is_integer():
    count = int(val_classes)
  else:
    count = -1
  if not 2 <= count <= total - 2:
    raise UserError(
        f"config.data.val_classes={val_classes} must be a fraction in (0, 1) "
        f"or a whole number of classes, giving 2 to {total - 2} of the "
        f"{total} classes of {ds.name} {ds.split} (it gives {count}): "
        "validation ranks at least two classes and training keeps at least "
        "two.")
  held = np.zeros(total, bool)
  held[np.random.default_rng(seed).choice(total, size=count,
                                          replace=False)] = True
  rows = held[ds.labels]
  return (subset(ds, ~rows, relabel=True, note=f"without the {count} "
                 "classes held out for validation"),
          subset(ds, rows, split=f"{ds.split} (held out)", relabel=True,
                 note=f"{count} classes held out for validation"))

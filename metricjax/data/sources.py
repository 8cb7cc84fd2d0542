"""Dataset name -> ArrayDataset, trying each place a dataset can live.

Resolution order (DESIGN.md, "Data sources"):
  1. an explicit spec: `idx:DIR`, `folder:PATH` (directory or zip), `tfds:NAME`,
     `packed:PATH` (an ArrayRecord file of tools/pack_arrayrecord.py, read
     lazily: a PackedDataset, not an ArrayDataset);
  2. the data_dir argument, else the directory in $METRICJAX_DATA_DIR;
  3. SYSTEM_DATA_DIRS (Debian's `dataset-fashion-mnist` installs
     /usr/share/datasets/fashion-mnist/);
  4. TFDS (downloads when it can).
The offline layout of 2 and 3 is the one of shared/datasets/README.md.
"""

import dataclasses
import os

import numpy as np

from metricjax.data import benchmarks
from metricjax.data import idx as idx_lib
from metricjax.data.dataset import ArrayDataset
from metricjax.data.image_folder import load_image_folder
from metricjax.data.image_folder import SplitNotFoundError
from metricjax.data.packed import load_packed
from metricjax.data.tfds_source import default_tfds_dir
from metricjax.data.tfds_source import load_tfds
from metricjax.data.tfds_source import TfdsUnavailableError
from metricjax.errors import UserError

DATA_DIR_ENV = "METRICJAX_DATA_DIR"
# Module-level so tests can point it at a temporary directory.
SYSTEM_DATA_DIRS = ("/usr/share/datasets",)
SPEC_FORMS = ("idx:DIR", "folder:PATH", "tfds:NAME", "packed:PATH",
              "halves:SPEC@SPLIT", "csv:FILE")


@dataclasses.dataclass(frozen=True)
class _Known:
  kind: str  # "idx" or "folder".
  # Names of the directory/zip inside a data directory, in preference order.
  entries: tuple[str, ...]
  class_names: tuple[str, ...]
  splits: tuple[str, ...] = ("train", "test")


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog",
                   "frog", "horse", "ship", "truck")
# The TFDS ClassLabel names, so labels read the same from every source.
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(d) for d in range(10))

KNOWN = {
    "mnist": _Known("idx", ("mnist",), MNIST_CLASSES),
    "fashion_mnist": _Known("idx", ("fashion-mnist", "fashion_mnist"),
                            FASHION_MNIST_CLASSES),
    "cifar10": _Known("folder", ("cifar10-jpeg.zip", "cifar10.zip", "cifar10",
                                 "cifar10-jpeg"), CIFAR10_CLASSES),
}

# IDX file prefixes per split. MNIST's offline copy may hold only the 10k
# training digits ("train10k"); the full set wins when both are there.
_IDX_PREFIXES = {"train": ("train", "train10k"), "test": ("t10k", "test")}
_IDX_SUBSET_NOTE = {
    "train10k": "10k-digit subset of the training set, not the full 60k"}


def load_dataset(name: str, split: str, *, data_dir: str | None = None,
                 boxes: bool = False):
  """Loads one split of a known dataset or of an explicit spec.

  Args:
    name: "mnist", "fashion_mnist", "cifar10" ('-' for '_' accepted), or a
      spec "idx:DIR", "folder:PATH", "tfds:NAME", "packed:PATH", or
      "halves:SPEC@SPLIT" (below).
    split: "train" or "test" (any TFDS split string for "tfds:").
    data_dir: offline data directory; overrides $METRICJAX_DATA_DIR.
    boxes: the photo benchmarks (cub, cars196) crop to their bounding boxes.

  The photo benchmarks "cub", "cars196", "sop", "inshop" and "csv:FILE"
  return a lazy PhotoDataset (data/benchmarks.py), the others an
  ArrayDataset (or PackedDataset).

  "halves:SPEC@SPLIT" is the class split of the metric-learning benchmarks
  (CUB-200-2011, Cars196, Stanford Online Products): SPEC's split SPLIT
  holds every class; "train" is its first half of the classes, "test" the
  second half, each relabelled from 0. E.g. CUB as an image folder,
  halves:folder:/data/CUB_200_2011@images (images/<class>/<file>), or
  Cars196 from TFDS, halves:tfds:cars196@train+test.
  """
  kind, _, arg = name.partition(":")
  if arg and kind == "halves":
    return _class_half(arg, split, data_dir)
  if arg and kind == "packed":
    return load_packed(arg, split)
  if arg and kind == "csv":
    return benchmarks.load_csv(arg, split)
  if arg and kind in ("idx", "folder", "tfds"):
    return _load_spec(kind, arg, split)
  canonical = name.strip().lower().replace("-", "_")
  if canonical in benchmarks.LAYOUTS:
    roots = _data_roots(data_dir)
    return benchmarks.load_benchmark(canonical, split, roots, boxes=boxes)
  if canonical not in KNOWN:
    known = sorted([*KNOWN, *benchmarks.LAYOUTS])
    raise UserError(
        f"Unknown dataset {name!r}. Known names: {', '.join(known)}; "
        f"or give a spec: {', '.join(SPEC_FORMS)} (e.g. folder:/data/cub.zip, "
        "tfds:cars196).")
  known = KNOWN[canonical]
  if split not in known.splits:
    raise UserError(f"Dataset {canonical!r} has no split {split!r}; use one of "
                    f"{', '.join(known.splits)}.")

  looked = []
  if not (data_dir or os.environ.get(DATA_DIR_ENV)):
    looked.append(f"${DATA_DIR_ENV} (not set)")
  for root, origin in _data_roots(data_dir):
    for entry in known.entries:
      path = os.path.join(root, entry)
      ds, why_not = _try_offline(known, canonical, path, split)
      if ds is not None:
        return ds
      looked.append(f"{path} ({origin}; {why_not})")
  try:
    return _with_known_names(load_tfds(canonical, split, download=True))
  except TfdsUnavailableError as e:
    looked.append(f"TFDS {canonical!r} in {default_tfds_dir()} ({e.reason})")
  apt = ("; or `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, "
         "installs /usr/share/datasets/fashion-mnist/)"
         if canonical == "fashion_mnist" else "")
  raise UserError(
      f"Dataset {canonical!r} split {split!r} was not found. Looked in, in "
      f"order: {'; '.join(looked)}. To get it: set {DATA_DIR_ENV} to a "
      f"directory laid out as {_layout_hint(canonical)}{apt}; or on a machine "
      f"with internet run `tfds build {canonical} --file_format=array_record` "
      "(or just run again online: TFDS downloads it).")


def _data_roots(data_dir):
  """[(directory, why it is searched)] in search order."""
  roots = []
  if data_dir:
    roots.append((os.path.abspath(data_dir), "data_dir argument"))
  elif os.environ.get(DATA_DIR_ENV):
    roots.append((os.path.abspath(os.environ[DATA_DIR_ENV]), DATA_DIR_ENV))
  roots.extend((d, "system datasets") for d in SYSTEM_DATA_DIRS)
  return roots


def _with_known_names(ds: ArrayDataset) -> ArrayDataset:
  # TFDS's cifar10 learns its class names from the downloaded archive, so
  # unprepared metadata (tfds.testing.mock_data) only knows "0".."9".
  known = KNOWN.get(ds.name)
  default = tuple(str(i) for i in range(ds.num_classes))
  if known and ds.class_names == default != known.class_names and (
      len(known.class_names) == ds.num_classes):
    return dataclasses.replace(ds, class_names=known.class_names)
  return ds


def _layout_hint(canonical):
  if canonical == "cifar10":
    return "cifar10-jpeg.zip or cifar10/ holding {train,test}/<class>/<image>"
  entry = KNOWN[canonical].entries[0]
  return (f"{entry}/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte.gz "
          "(the official IDX files)")


def _try_offline(known, canonical, path, split):
  """(dataset, None) when `path` holds the split, else (None, why not)."""
  if not os.path.exists(path):
    return None, "not there"
  if known.kind == "idx":
    if not os.path.isdir(path):
      return None, "not a directory"
    try:
      return _load_idx_dir(path, split, canonical, known.class_names), None
    except _IdxSplitNotFound as e:
      return None, f"no {e.files}"
  try:
    ds = load_image_folder(path, split, name=canonical)
  except SplitNotFoundError:
    return None, f"no {split}/<class>/ images"
  if ds.class_names != known.class_names:
    raise UserError(
        f"{path} has class folders {', '.join(ds.class_names)} but "
        f"{canonical} has {', '.join(known.class_names)}. Rename the folders, "
        f"or load it as folder:{path}.")
  return ds, None


class _IdxSplitNotFound(SplitNotFoundError):

  def __init__(self, message, files):
    super().__init__(message)
    self.files = files


def _find_idx(directory, prefix, kind):
  for suffix in (".gz", ""):
    path = os.path.join(directory, f"{prefix}-{kind}-ubyte{suffix}")
    if os.path.isfile(path):
      return path
  return None


def _load_idx_dir(directory, split, name, class_names=None) -> ArrayDataset:
  """`{prefix}-images-idx3-ubyte[.gz]` + `{prefix}-labels-idx1-ubyte[.gz]`."""
  tried = []
  for prefix in _IDX_PREFIXES.get(split, (split,)):
    images_path = _find_idx(directory, prefix, "images-idx3")
    labels_path = _find_idx(directory, prefix, "labels-idx1")
    tried.append(f"{prefix}-images-idx3-ubyte[.gz] + "
                 f"{prefix}-labels-idx1-ubyte[.gz]")
    if images_path and labels_path:
      break
  else:
    files = " or ".join(tried)
    raise _IdxSplitNotFound(f"{directory} has no {files}.", files)

  images = idx_lib.read_idx(images_path)
  labels = idx_lib.read_idx(labels_path)
  if images.ndim == 3:
    images = images[..., None]
  if (images.dtype != np.uint8 or images.ndim != 4
      or images.shape[-1] not in (1, 3)):
    raise UserError(f"{images_path} holds {images.dtype} data of shape "
                    f"{images.shape}; expected uint8 images (N, H, W).")
  if labels.ndim != 1 or labels.dtype.kind not in "iu":
    raise UserError(f"{labels_path} holds {labels.dtype} data of shape "
                    f"{labels.shape}; expected integer labels (N,).")
  if class_names is None:
    num_classes = int(labels.max()) + 1 if labels.size else 1
    class_names = tuple(str(i) for i in range(num_classes))
  note = _IDX_SUBSET_NOTE.get(prefix)
  source = f"IDX {images_path} + {os.path.basename(labels_path)}"
  if note:
    source += f" ({name} {note})"
  return ArrayDataset(
      images=images, labels=labels.astype("int32"),
      num_classes=len(class_names), class_names=tuple(class_names), name=name,
      split=split, source=source)


def _load_spec(kind, arg, split):
  if kind == "tfds":
    return _with_known_names(load_tfds(arg, split, download=True))
  path = os.path.abspath(os.path.expanduser(arg))
  # A spec pointing at a known layout keeps the known name and class names.
  stem = os.path.basename(path.rstrip(os.sep))
  stem = stem.removesuffix(".zip").removesuffix("-jpeg").replace("-", "_")
  known = KNOWN.get(stem)
  if known is not None and known.kind != kind:
    known = None
  if kind == "idx":
    if not os.path.isdir(path):
      raise UserError(f"idx:{arg}: {path} is not a directory. Point it at a "
                      "directory of {train,t10k}-{images-idx3,labels-idx1}-"
                      "ubyte[.gz] files.")
    try:
      return _load_idx_dir(path, split,
                           stem if known else os.path.basename(path),
                           known.class_names if known else None)
    except _IdxSplitNotFound as e:
      raise UserError(f"idx:{arg}: {e} Use split 'train' or 'test' (read "
                      "from t10k-* files), or a split named like the "
                      "files.") from None
  return load_image_folder(path, split, name=stem if known else None)


def _class_half(arg: str, split: str, data_dir) -> ArrayDataset:
  inner, sep, source_split = arg.rpartition("@")
  if not sep or not inner:
    raise UserError(f"halves:{arg}: expected halves:SPEC@SPLIT, e.g. "
                    "halves:folder:/data/CUB_200_2011@images (the split "
                    "that holds every class).")
  if split not in ("train", "test"):
    raise UserError(f"halves:{arg} has splits train (first half of the "
                    f"classes) and test (second half), not {split!r}.")
  ds = load_dataset(inner, source_split, data_dir=data_dir)
  if ds.num_classes < 2:
    raise UserError(f"halves:{arg}: {ds.num_classes} class, nothing to split.")
  half = ds.num_classes // 2
  lo, hi = (0, half) if split == "train" else (half, ds.num_classes)
  keep = (ds.labels >= lo) & (ds.labels < hi)
  return dataclasses.replace(
      ds, images=ds.images[keep], labels=ds.labels[keep] - lo,
      num_classes=hi - lo, class_names=ds.class_names[lo:hi], split=split,
      source=f"{ds.source}, classes {lo}..{hi - 1} of {ds.num_classes}")

"""IDX files: `idx:DIR`, and MNIST and Fashion-MNIST in their official files.

    DIR/{train,t10k}-images-idx3-ubyte[.gz] + ...-labels-idx1-ubyte[.gz]

A split reads `{prefix}-images-idx3-ubyte[.gz]` with its labels file; the
prefixes of "train" are train (then train10k: the 10k-digit MNIST subset of
the offline copy), of "test" t10k (then test), of any other split its own
name. An `idx:` directory named like one of the known datasets keeps its
name and class names.
"""

import os

import numpy as np

from metricjax.data import idx as idx_lib
from metricjax.data.dataset import ArrayDataset
from metricjax.data.dataset import row_ids
from metricjax.data.sources import base
from metricjax.errors import UserError

# The TFDS ClassLabel names, so labels read the same from every source.
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(d) for d in range(10))
_KNOWN = {"mnist": MNIST_CLASSES, "fashion_mnist": FASHION_MNIST_CLASSES}

# IDX file prefixes per split. MNIST's offline copy may hold only the 10k
# training digits ("train10k"); the full set wins when both are there.
_PREFIXES = {"train": ("train", "train10k"), "test": ("t10k", "test")}
_SUBSET_NOTE = {
    "train10k": "10k-digit subset of the training set, not the full 60k"}


def read_dir(directory, split, name, class_names=None) -> ArrayDataset:
  """`{prefix}-images-idx3-ubyte[.gz]` + `{prefix}-labels-idx1-ubyte[.gz]`;
  base.NotHere when the directory has no such pair for the split."""
  tried = []
  for prefix in _PREFIXES.get(split, (split,)):
    images_path = _find(directory, prefix, "images-idx3")
    labels_path = _find(directory, prefix, "labels-idx1")
    tried.append(f"{prefix}-images-idx3-ubyte[.gz] + "
                 f"{prefix}-labels-idx1-ubyte[.gz]")
    if images_path and labels_path:
      break
  else:
    raise base.NotHere(f"no {' or '.join(tried)}")

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
  note = _SUBSET_NOTE.get(prefix)
  source = f"IDX {images_path} + {os.path.basename(labels_path)}"
  if note:
    source += f" ({name} {note})"
  return ArrayDataset(
      images=images, labels=labels.astype("int32"),
      num_classes=len(class_names), class_names=tuple(class_names), name=name,
      split=split, source=source, ids=row_ids(split, len(labels)))


def _find(directory, prefix, kind):
  for suffix in (".gz", ""):
    path = os.path.join(directory, f"{prefix}-{kind}-ubyte{suffix}")
    if os.path.isfile(path):
      return path
  return None


def read_spec(arg, split, options=None) -> ArrayDataset:
  del options
  path = os.path.abspath(os.path.expanduser(arg))
  stem = os.path.basename(path.rstrip(os.sep)).replace("-", "_")
  if not os.path.isdir(path):
    raise UserError(f"idx:{arg}: {path} is not a directory. Point it at a "
                    "directory of {train,t10k}-{images-idx3,labels-idx1}-"
                    "ubyte[.gz] files.")
  try:
    return read_dir(path, split, stem if stem in _KNOWN else
                    os.path.basename(path), _KNOWN.get(stem))
  except base.NotHere as e:
    raise UserError(f"idx:{arg}: {path} has {e.why}. Use split 'train' or "
                    "'test' (read from t10k-* files), or a split named like "
                    "the files.") from None


def _named(name, entries, extra_download=""):
  def read(path, split, options=None):
    del options
    if not os.path.isdir(path):
      raise base.NotHere("not a directory")
    return read_dir(path, split, name, _KNOWN[name])
  return base.Source(
      read=read, entries=entries, splits=("train", "test"), tfds=True,
      class_names=_KNOWN[name],
      download=f"set {base.DATA_DIR_ENV} to a directory laid out as "
      f"{entries[0]}/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte.gz "
      f"(the official IDX files){extra_download}")


MNIST = _named("mnist", ("mnist",))
FASHION_MNIST = _named(
    "fashion_mnist", ("fashion-mnist", "fashion_mnist"),
    "; or `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, installs "
    "/usr/share/datasets/fashion-mnist/)")
SPEC = base.Source(read=read_spec, form="idx:DIR")

"""Image folders: `folder:PATH`, and CIFAR-10 as a folder or zip.

    PATH/{train,test,...}/<class>/<image>   (a directory, or a zip of it)

Labels follow the sorted class folder names (data/image_folder.py decodes
and caches the images). A `folder:` path named like CIFAR-10 keeps its
name; CIFAR-10 in a data directory must have its ten class folders.
"""

import os

from metricjax.data.dataset import ArrayDataset
from metricjax.data.image_folder import load_image_folder
from metricjax.data.image_folder import SplitNotFoundError
from metricjax.data.sources import base
from metricjax.errors import UserError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog",
                   "frog", "horse", "ship", "truck")


def _stem(path):
  stem = os.path.basename(path.rstrip(os.sep))
  return stem.removesuffix(".zip").removesuffix("-jpeg").replace("-", "_")


def read_spec(arg, split, options=None) -> ArrayDataset:
  del options
  path = os.path.abspath(os.path.expanduser(arg))
  return load_image_folder(path, split,
                           name="cifar10" if _stem(path) == "cifar10" else None)


def read_cifar10(path, split, options=None) -> ArrayDataset:
  del options
  try:
    ds = load_image_folder(path, split, name="cifar10")
  except SplitNotFoundError:
    raise base.NotHere(f"no {split}/<class>/ images") from None
  if ds.class_names != CIFAR10_CLASSES:
    raise UserError(
        f"{path} has class folders {', '.join(ds.class_names)} but "
        f"cifar10 has {', '.join(CIFAR10_CLASSES)}. Rename the folders, "
        f"or load it as folder:{path}.")
  return ds


CIFAR10 = base.Source(
    read=read_cifar10,
    entries=("cifar10-jpeg.zip", "cifar10.zip", "cifar10", "cifar10-jpeg"),
    splits=("train", "test"), tfds=True, class_names=CIFAR10_CLASSES,
    download=f"set {base.DATA_DIR_ENV} to a directory laid out as "
    "cifar10-jpeg.zip or cifar10/ holding {train,test}/<class>/<image>")
SPEC = base.Source(read=read_spec, form="folder:PATH")

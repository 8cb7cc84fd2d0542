"""Dataset name -> split, trying each place a dataset can live.

Resolution order (DESIGN.md, "Data sources"):
  1. an explicit spec, PREFIX:ARG: `idx:DIR`, `folder:PATH` (directory or
     zip), `tfds:NAME`, `packed:PATH` (an ArrayRecord file of
     tools/pack_arrayrecord.py, read lazily), `csv:FILE`,
     `halves:SPEC@SPLIT`;
  2. the data_dir argument, else the directory in $METRICJAX_DATA_DIR;
  3. SYSTEM_DATA_DIRS (Debian's `dataset-fashion-mnist` installs
     /usr/share/datasets/fashion-mnist/);
  4. TFDS (downloads when it can), for the named datasets TFDS has.
The layout of 2 and 3 is the one docs/data.md describes.

Each name and prefix is a source: one file of this package and one line
of registry.py (see docs/data.md, "Adding a dataset format").
"""

import dataclasses
import os

from metricjax.data.dataset import LabelledSplit
from metricjax.data.sources.base import Convention
from metricjax.data.sources.base import DATA_DIR_ENV
from metricjax.data.sources.base import NotHere
from metricjax.data.sources.base import Options
from metricjax.data.sources.base import Source
from metricjax.data.sources.registry import REGISTRY
from metricjax.data.tfds_source import default_tfds_dir
from metricjax.data.tfds_source import load_tfds
from metricjax.data.tfds_source import TfdsUnavailableError
from metricjax.errors import UserError

__all__ = ["Convention", "DATA_DIR_ENV", "NotHere", "Options", "Source",
           "REGISTRY", "SYSTEM_DATA_DIRS", "benchmarks", "convention",
           "load_dataset", "recall_ks", "source"]

# Module-level so tests can point it at a temporary directory.
SYSTEM_DATA_DIRS = ("/usr/share/datasets",)


def load_dataset(name: str, split: str, *, data_dir: str | None = None,
                 boxes: bool = False) -> LabelledSplit:
  """Loads one split of a named dataset or of an explicit spec.

  Args:
    name: a registered name ("mnist", "fashion_mnist", "cifar10", "cub",
      "cars196", "sop", "inshop"; '-' for '_' accepted), or a spec
      "idx:DIR", "folder:PATH", "tfds:NAME", "packed:PATH", "csv:FILE" or
      "halves:SPEC@SPLIT" (each described in its file of this package).
    split: "train" or "test" (any TFDS split string for "tfds:").
    data_dir: offline data directory; overrides $METRICJAX_DATA_DIR.
    boxes: the photo benchmarks (cub, cars196) crop to their bounding boxes.

  Returns:
    An ArrayDataset (images in memory), a PackedDataset (images read on
    demand) or, for the photo benchmarks and csv:, a lazy PhotoDataset
    (data/photos.py).
  """
  kind, _, arg = name.partition(":")
  spec = REGISTRY.get(kind)
  if arg and spec is not None and spec.form:
    options = Options(name=kind, data_dir=data_dir, boxes=boxes,
                      load=load_dataset)
    return _with_known_names(spec.read(arg, split, options))
  canonical = name.strip().lower().replace("-", "_")
  found = source(canonical)
  if found is None:
    raise UserError(
        f"Unknown dataset {name!r}. Known names: "
        f"{', '.join(sorted(n for n, s in REGISTRY.items() if not s.form))}; "
        f"or give a spec: {', '.join(s.form for s in REGISTRY.values() if s.form)} "
        "(e.g. folder:/data/cub.zip, tfds:cars196).")
  found.check_split(canonical, split)
  options = Options(name=canonical, data_dir=data_dir, boxes=boxes,
                    load=load_dataset)
  looked = []
  if not (data_dir or os.environ.get(DATA_DIR_ENV)):
    looked.append(f"${DATA_DIR_ENV} (not set)")
  for root, origin in _data_roots(data_dir):
    for entry in found.entries:
      path = os.path.join(root, entry)
      why_not = "not there"
      if os.path.exists(path):
        try:
          return found.read(path, split, options)
        except NotHere as e:
          why_not = e.why
      looked.append(f"{path} ({origin}; {why_not})")
  online = ""
  if found.tfds:
    try:
      return _with_known_names(load_tfds(canonical, split, download=True))
    except TfdsUnavailableError as e:
      looked.append(f"TFDS {canonical!r} in {default_tfds_dir()} ({e.reason})")
    online = (f"; or on a machine with internet run `tfds build {canonical} "
              "--file_format=array_record` (or just run again online: TFDS "
              "downloads it)")
  raise UserError(
      f"Dataset {canonical!r} split {split!r} was not found. Looked in, in "
      f"order: {'; '.join(looked)}. To get it: {found.download}{online}.")


def source(name: str) -> Source | None:
  """The source of a dataset name or spec (None: not a registered one)."""
  kind, _, arg = name.partition(":")
  spec = REGISTRY.get(kind)
  if arg and spec is not None and spec.form:
    return spec
  named = REGISTRY.get(name.strip().lower().replace("-", "_"))
  return named if named is not None and not named.form else None


def convention(name: str) -> Convention:
  """How retrieval on dataset `name` is evaluated (base.Convention); the
  default for names and specs that set none."""
  found = source(name)
  return found.convention if found is not None else Convention()


def recall_ks(name: str) -> tuple[int, ...]:
  """The Recall@K the papers report on dataset `name` (CUB's 1, 2, 4, 8
  unless its source says otherwise)."""
  return convention(name).recall_ks


def benchmarks() -> tuple[str, ...]:
  """The names of the field's photo benchmarks."""
  return tuple(n for n, s in REGISTRY.items() if s.benchmark)


def _data_roots(data_dir):
  """[(directory, why it is searched)] in search order."""
  roots = []
  if data_dir:
    roots.append((os.path.abspath(data_dir), "data_dir argument"))
  elif os.environ.get(DATA_DIR_ENV):
    roots.append((os.path.abspath(os.environ[DATA_DIR_ENV]), DATA_DIR_ENV))
  roots.extend((d, "system datasets") for d in SYSTEM_DATA_DIRS)
  return roots


def _with_known_names(ds: LabelledSplit) -> LabelledSplit:
  """A split named like a registered dataset gets its class names when it
  has only numbers: TFDS's cifar10 learns its names from the downloaded
  archive, so unprepared metadata (tfds.testing.mock_data) has "0".."9"."""
  found = REGISTRY.get(ds.name)
  known = found.class_names if found is not None else ()
  default = tuple(str(i) for i in range(ds.num_classes))
  if (known and len(known) == ds.num_classes
      and ds.class_names == default != known):
    return dataclasses.replace(ds, class_names=known)
  return ds

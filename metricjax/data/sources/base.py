"""What a source is: the record each file of this package defines, one per
dataset format or benchmark, and the registry (registry.py) lists."""

import dataclasses
from typing import Callable

from metricjax.data.dataset import LabelledSplit
from metricjax.errors import UserError

DATA_DIR_ENV = "METRICJAX_DATA_DIR"


@dataclasses.dataclass(frozen=True)
class Convention:
  """How the field evaluates retrieval on a dataset.

  Attributes:
    recall_ks: the Recall@K its papers report (configs/dml_benchmark.py
      sets config.eval.ks from it).
    clustering: k-means NMI / AMI beside the ranking metrics, unless
      config.eval.clustering says otherwise.
    class_disjoint: the test split's classes are not the training classes,
      so a classification head's accuracy means nothing and is not
      reported.
  A query -> gallery protocol (In-Shop) is the split's: its reader sets
  the rows' `is_query` / `is_gallery` roles.
  """
  recall_ks: tuple[int, ...] = (1, 2, 4, 8)
  clustering: bool = False
  class_disjoint: bool = False


@dataclasses.dataclass(frozen=True)
class Options:
  """What load_dataset hands every reader besides the place and the split."""
  name: str  # The dataset's canonical name, or the spec's prefix.
  data_dir: str | None = None  # The data_dir argument of load_dataset.
  boxes: bool = False  # Crop to the bounding boxes (cub, cars196).
  # load_dataset itself, for a source that wraps another spec (halves:).
  load: Callable[..., LabelledSplit] | None = None


class NotHere(Exception):
  """A named dataset's reader, given a place that does not hold the split:
  the resolution goes on to the next place (and says `why` if none does)."""

  def __init__(self, why: str):
    super().__init__(why)
    self.why = why


@dataclasses.dataclass(frozen=True)
class Source:
  """A dataset format or benchmark: its reader, where it lives, its splits,
  how to get it and how retrieval on it is evaluated.

  Attributes:
    read: (path, split, options) -> the split, a data.LabelledSplit (an
      ArrayDataset, PackedDataset or PhotoDataset). For a spec, `path` is
      the spec's argument; for a named dataset, the first of `entries`
      that exists in a data directory, and read raises NotHere when that
      place does not hold the split. Every other problem is a UserError
      naming the file.
    form: a spec's syntax, "PREFIX:ARG" (e.g. "csv:FILE"); empty for a
      named dataset.
    entries: a named dataset's files or folders in a data directory, in
      preference order (a benchmark's marker file, e.g.
      "CUB_200_2011/images.txt").
    splits: a named dataset's splits.
    download: how to get a named dataset, completing "To get it: ...".
    tfds: a named dataset is also TFDS's dataset of that name (the last
      place looked at; it downloads when it can).
    class_names: a named dataset's class names, given to its TFDS splits
      when their metadata has only numbers.
    benchmark: one of the field's photo benchmarks
      (configs/dml_benchmark.py, experiments/compare_losses.py).
    convention: how retrieval on it is evaluated.
  """
  read: Callable[[str, str, Options], LabelledSplit]
  form: str = ""
  entries: tuple[str, ...] = ()
  splits: tuple[str, ...] = ()
  download: str = ""
  tfds: bool = False
  class_names: tuple[str, ...] = ()
  benchmark: bool = False
  convention: Convention = Convention()

  def check_split(self, name: str, split: str) -> None:
    if self.splits and split not in self.splits:
      note = " (the field's class-disjoint halves)" if self.benchmark else ""
      raise UserError(f"Dataset {name!r} has no split {split!r}; use one of "
                      f"{', '.join(self.splits)}{note}.")


# The photo benchmarks' convention; each sets its Recall@K ("A Metric
# Learning Reality Check", Table 1, and the works it compares).
BENCHMARK = Convention(clustering=True, class_disjoint=True)

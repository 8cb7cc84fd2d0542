"""Reading the benchmarks' text tables, and their class halves."""

import numpy as np

from metricjax.data.dataset import LabelledSplit
from metricjax.data.dataset import subset
from metricjax.errors import one_line
from metricjax.errors import UserError


def read_table(path: str, columns: tuple[str, ...], *, skip: int = 0,
               last_takes_rest: bool = False) -> list[list[str]]:
  """Whitespace-separated rows of `columns`; a bad line is an error naming
  the file and its line number."""
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"Cannot read {path}: {one_line(e)}.") from None
  rows = []
  n = len(columns)
  for number, line in enumerate(lines[skip:], skip + 1):
    if not line.strip():
      continue
    fields = line.split(None, n - 1) if last_takes_rest else line.split()
    if len(fields) != n:
      raise UserError(
          f"{path} line {number}: {line.strip()[:80]!r} does not parse as "
          f"{n} fields ({' '.join(columns)}). The file is truncated or not "
          "the dataset's original; extract it again.")
    rows.append(fields)
  return rows


def to_int(path, rows, column, what) -> np.ndarray:
  out = np.empty(len(rows), np.int64)
  for i, row in enumerate(rows):
    try:
      out[i] = int(row[column])
    except ValueError:
      raise UserError(f"{path}: {what} {row[column]!r} in row {i + 1} is not "
                      "an integer; the file is corrupt.") from None
  return out


def check_range(path, ids, valid, what):
  bad = np.flatnonzero(~np.isin(ids, valid))
  if len(bad):
    raise UserError(
        f"{path}: {what} {ids[bad[0]]} (row {bad[0] + 1}) is outside the "
        f"declared classes ({valid.min()}..{valid.max()}); "
        f"{len(bad)} row(s) are. The label file belongs to another copy.")


def class_half(ds: LabelledSplit, split: str, first_test: int,
               declared: str) -> LabelledSplit:
  """The field's class-disjoint split of a benchmark with one list of
  images: classes [0, first_test) train, the rest test."""
  train = ds.labels < first_test
  empty = np.flatnonzero(np.bincount(ds.labels, minlength=ds.num_classes) == 0)
  if len(empty):
    raise UserError(
        f"{declared} declares class(es) "
        f"{', '.join(ds.class_names[c] for c in empty[:5])} but no image has "
        "them; the label file is truncated or belongs to another copy.")
  return subset(ds, train if split == "train" else ~train, split=split,
                relabel=True, note=f"{split}: classes "
                + (f"1-{first_test}" if split == "train"
                   else f"{first_test + 1}-{ds.num_classes}"))

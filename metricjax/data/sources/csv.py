"""`csv:FILE`: a catalogue of photos, one row per image.

    path,label,split[,is_query,is_gallery][,x1,y1,x2,y2]
    images/0001.jpg,cat,train
    ...

The header names the columns, in any order. `path` is relative to the
CSV's directory; `label` any string or number (classes are numbered in
their sorted order within each split); `split` the split the row belongs
to. Optional: `is_query`, `is_gallery` (0/1 or true/false: a query ->
gallery evaluation, as In-Shop) and a box `x1,y1,x2,y2` in pixels that
views are taken from. The split is a lazy PhotoDataset, evaluated as the
photo benchmarks are (Recall@1/2/4/8, P@1, R-Precision, MAP@R, NMI / AMI).
"""

import csv
import os

import numpy as np

from metricjax.data.dataset import relabel
from metricjax.data.photos import check_files_exist
from metricjax.data.photos import PhotoDataset
from metricjax.data.sources import base
from metricjax.errors import one_line
from metricjax.errors import UserError

REQUIRED = ("path", "label", "split")
BOX = ("x1", "y1", "x2", "y2")


def read(path: str, split: str, options=None) -> PhotoDataset:
  del options  # The file says everything.
  path = os.path.abspath(os.path.expanduser(path))
  try:
    with open(path, newline="", encoding="utf-8") as f:
      reader = csv.DictReader(f)
      columns = tuple(reader.fieldnames or ())
      rows = list(reader)
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise UserError(f"Cannot read the CSV catalogue {path}: {one_line(e)}.") \
        from None
  missing = [c for c in REQUIRED if c not in columns]
  if missing:
    raise UserError(
        f"{path} has columns {', '.join(columns) or '(none)'} but lacks "
        f"{', '.join(missing)}. A catalogue needs a header with path,label,"
        "split (optional: is_query,is_gallery and x1,y1,x2,y2).")
  rows = [r for r in rows if r["split"] == split]
  if not rows:
    raise UserError(f"{path} has no rows with split {split!r}.")
  root = os.path.dirname(path)
  ids = np.array([r["path"] for r in rows])
  check_files_exist(root, ids, path)
  labels, classes = relabel(np.array([r["label"] for r in rows]))
  extra = {}
  if all(c in columns for c in BOX):
    extra["boxes"] = _numbers(path, rows, BOX, float, np.float32)
  if "is_query" in columns and "is_gallery" in columns:
    for c in ("is_query", "is_gallery"):
      extra[c] = _numbers(path, rows, (c,), _flag, bool)[:, 0]
  return PhotoDataset(
      labels=labels, num_classes=len(classes),
      class_names=tuple(str(c) for c in classes), split=split,
      source=f"CSV {path}",
      name=os.path.splitext(os.path.basename(path))[0], ids=ids, root=root,
      **extra)


def _flag(text: str) -> bool:
  value = {"1": True, "0": False, "true": True, "false": False}.get(
      text.strip().lower())
  if value is None:
    raise ValueError(text)
  return value


def _numbers(path, rows, columns, kind, dtype):
  out = np.empty((len(rows), len(columns)), dtype)
  for i, row in enumerate(rows):
    for k, c in enumerate(columns):
      try:
        out[i, k] = kind(row[c])
      except (TypeError, ValueError):
        raise UserError(f"{path}: column {c} of the row of {row['path']!r} is "
                        f"{row[c]!r}, not a number (0/1 for is_query, "
                        "is_gallery).") from None
  return out


# Evaluated as the photo benchmarks it stands in for.
SOURCE = base.Source(read=read, form="csv:FILE", convention=base.BENCHMARK)

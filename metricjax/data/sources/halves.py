"""`halves:SPEC@SPLIT`: the class split of the metric-learning benchmarks
(CUB-200-2011, Cars196, Stanford Online Products) over any spec. SPEC's
split SPLIT holds every class; "train" is its first half of the classes,
"test" the second half, each relabelled from 0. E.g. CUB as an image
folder, halves:folder:/data/CUB_200_2011@images (images/<class>/<file>), or
Cars196 from TFDS, halves:tfds:cars196@train+test."""

import numpy as np

from metricjax.data.dataset import subset
from metricjax.data.sources import base
from metricjax.errors import UserError


def read(arg, split, options):
  inner, sep, source_split = arg.rpartition("@")
  if not sep or not inner:
    raise UserError(f"halves:{arg}: expected halves:SPEC@SPLIT, e.g. "
                    "halves:folder:/data/CUB_200_2011@images (the split "
                    "that holds every class).")
  if split not in ("train", "test"):
    raise UserError(f"halves:{arg} has splits train (first half of the "
                    f"classes) and test (second half), not {split!r}.")
  ds = options.load(inner, source_split, data_dir=options.data_dir)
  if ds.num_classes < 2:
    raise UserError(f"halves:{arg}: {ds.num_classes} class, nothing to split.")
  half = ds.num_classes // 2
  lo, hi = (0, half) if split == "train" else (half, ds.num_classes)
  keep = (ds.labels >= lo) & (ds.labels < hi)
  return subset(ds, keep, f"classes {lo}..{hi - 1} of {ds.num_classes}",
                split=split, relabel=True)


SOURCE = base.Source(read=read, form="halves:SPEC@SPLIT",
                     convention=base.Convention(class_disjoint=True))

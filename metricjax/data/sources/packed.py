"""`packed:PATH`: an ArrayRecord file of raw images (tools/pack_arrayrecord.py),
read lazily by random access: a PackedDataset (data/packed.py). PATH is
the .array_record file, or a directory holding NAME-SPLIT.array_record."""

from metricjax.data.packed import load_packed
from metricjax.data.sources import base


def read(arg, split, options=None):
  del options
  return load_packed(arg, split)


SOURCE = base.Source(read=read, form="packed:PATH")

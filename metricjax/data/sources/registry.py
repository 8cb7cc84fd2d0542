"""Every dataset name and spec prefix, one line each.

A dataset format or benchmark is one file of this package, defining a
base.Source (its reader, layout, splits, download hint and retrieval
convention), and one line here. Named datasets are looked up in the data
directories (then TFDS, for those that have `tfds`); spec prefixes take
an argument, PREFIX:ARG. Names use '_' ('-' is accepted for it).
"""

from metricjax.data.sources import cars196
from metricjax.data.sources import csv
from metricjax.data.sources import cub
from metricjax.data.sources import folder
from metricjax.data.sources import halves
from metricjax.data.sources import inshop
from metricjax.data.sources import mnist_idx
from metricjax.data.sources import packed
from metricjax.data.sources import sop
from metricjax.data.sources import tfds

REGISTRY = {
    # Named datasets.
    "mnist": mnist_idx.MNIST,
    "fashion_mnist": mnist_idx.FASHION_MNIST,
    "cifar10": folder.CIFAR10,
    "cub": cub.SOURCE,
    "cars196": cars196.SOURCE,
    "sop": sop.SOURCE,
    "inshop": inshop.SOURCE,
    # Specs, PREFIX:ARG.
    "idx": mnist_idx.SPEC,
    "folder": folder.SPEC,
    "tfds": tfds.SOURCE,
    "packed": packed.SOURCE,
    "halves": halves.SOURCE,
    # --8<-- [start:csv]
    "csv": csv.SOURCE,
    # --8<-- [end:csv]
}

"""`tfds:NAME`: a TFDS image classification dataset (data/tfds_source.py),
held in memory; downloaded and prepared when it is not there yet and the
machine is online. NAME may carry a config and version ("mnist:3.0.1");
the split is any TFDS split string ("train[:1000]")."""

from metricjax.data.sources import base
from metricjax.data.tfds_source import load_tfds


def read(arg, split, options=None):
  del options
  return load_tfds(arg, split, download=True)


SOURCE = base.Source(read=read, form="tfds:NAME")

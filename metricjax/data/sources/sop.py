"""Stanford Online Products (Oh Song et al. 2016), in its official layout.

    Stanford_Online_Products/{Ebay_train.txt, Ebay_test.txt, <category>/}
    (each line: image_id class_id super_class_id path)

The files' own split (11,318 training products, 11,316 test products).
"""

import dataclasses
import os

import numpy as np

from metricjax.data.dataset import relabel
from metricjax.data.photos import check_files_exist
from metricjax.data.photos import PhotoDataset
from metricjax.data.sources import base
from metricjax.data.sources.tables import read_table
from metricjax.data.sources.tables import to_int
from metricjax.errors import UserError


def read(path, split, options) -> PhotoDataset:
  del options  # SOP has no boxes.
  root = os.path.dirname(path)
  path = os.path.join(root, f"Ebay_{split}.txt")
  rows = read_table(path, ("image_id", "class_id", "super_class_id", "path"),
                    skip=1, last_takes_rest=True)
  class_ids = to_int(path, rows, 1, "class id")
  if (class_ids < 1).any():
    raise UserError(f"{path}: class ids start at 1; row "
                    f"{np.flatnonzero(class_ids < 1)[0] + 1} has "
                    f"{class_ids.min()}.")
  ids = np.array([r[3] for r in rows])
  check_files_exist(root, ids, path)
  labels, classes = relabel(class_ids)
  folder = {c: r[3].split("/")[0] for c, r in zip(class_ids, rows)}
  return PhotoDataset(
      labels=labels, num_classes=len(classes),
      class_names=tuple(f"{folder[c]}/{c}" for c in classes), name="sop",
      split=split, source=f"Stanford Online Products {path}", ids=ids,
      root=root)


SOURCE = base.Source(
    read=read, entries=("Stanford_Online_Products/Ebay_train.txt",),
    splits=("train", "test"), benchmark=True,
    download="download Stanford_Online_Products.zip from https://"
    "cvgl.stanford.edu/projects/lifted_struct/, extract it, and set "
    "METRICJAX_DATA_DIR to the directory that holds "
    "Stanford_Online_Products/",
    convention=dataclasses.replace(base.BENCHMARK,
                                   recall_ks=(1, 10, 100, 1000)))

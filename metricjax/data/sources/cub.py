"""CUB-200-2011 (Wah et al. 2011), in its official layout.

    CUB_200_2011/{images.txt, image_class_labels.txt, classes.txt, images/,
                  bounding_boxes.txt (boxes=True only)}

The field's split: classes 1-100 train, 101-200 test.
"""

import os

import numpy as np

from metricjax.data.photos import check_files_exist
from metricjax.data.photos import PhotoDataset
from metricjax.data.sources import base
from metricjax.data.sources.tables import check_range
from metricjax.data.sources.tables import class_half
from metricjax.data.sources.tables import read_table
from metricjax.data.sources.tables import to_int
from metricjax.errors import UserError


def read(path, split, options) -> PhotoDataset:
  root = os.path.dirname(path)
  j = lambda f: os.path.join(root, f)
  classes = read_table(j("classes.txt"), ("class_id", "name"),
                       last_takes_rest=True)
  class_ids = to_int(j("classes.txt"), classes, 0, "class id")
  images = read_table(j("images.txt"), ("image_id", "path"),
                      last_takes_rest=True)
  labels = read_table(j("image_class_labels.txt"), ("image_id", "class_id"))
  image_ids = to_int(j("images.txt"), images, 0, "image id")
  label_of = dict(zip(to_int(j("image_class_labels.txt"), labels, 0, "image id"),
                      to_int(j("image_class_labels.txt"), labels, 1, "class id")))
  missing = [i for i in image_ids if i not in label_of]
  if missing:
    raise UserError(f"{j('image_class_labels.txt')} has no label for image "
                    f"id {missing[0]} of images.txt ({len(missing)} missing).")
  image_class = np.array([label_of[i] for i in image_ids])
  check_range(j("image_class_labels.txt"), image_class, class_ids, "class id")
  order = np.argsort(class_ids)
  position = {c: k for k, c in enumerate(class_ids[order])}
  ids = np.array([os.path.join("images", p) for _, p in images])
  check_files_exist(root, ids, j("images.txt"))
  box_array = None
  if options.boxes:
    rows = read_table(j("bounding_boxes.txt"), ("image_id", "x", "y", "w", "h"))
    by_id = {int(r[0]): [float(v) for v in r[1:]] for r in rows}
    try:
      xywh = np.array([by_id[i] for i in image_ids], np.float32)
    except KeyError as e:
      raise UserError(f"{j('bounding_boxes.txt')} has no box for image id "
                      f"{e.args[0]}.") from None
    box_array = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
  ds = PhotoDataset(
      labels=np.array([position[c] for c in image_class], np.int32),
      num_classes=len(classes),
      class_names=tuple(classes[k][1] for k in order), name="cub",
      split="all", source=f"CUB-200-2011 {root}", ids=ids, root=root,
      boxes=box_array)
  return class_half(ds, split, 100, j("classes.txt"))


SOURCE = base.Source(
    read=read, entries=("CUB_200_2011/images.txt",
                        "CUB_200_2011/CUB_200_2011/images.txt"),
    splits=("train", "test"), benchmark=True,
    download="download CUB_200_2011.tgz from https://data.caltech.edu/"
    "records/65de6-vp158, extract it, and set METRICJAX_DATA_DIR to the "
    "directory that holds CUB_200_2011/",
    convention=base.BENCHMARK)

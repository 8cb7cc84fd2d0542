"""DeepFashion In-Shop Clothes Retrieval (Liu et al. 2016), official layout.

    inshop/{list_eval_partition.txt, img/}
    (after two header lines, each line: image_name item_id evaluation_status)

Split train is the training items; test is the query and gallery images of
the other items, evaluated query -> gallery (the rows' is_query /
is_gallery): each query ranks the gallery only.
"""

import dataclasses
import os

import numpy as np

from metricjax.data.dataset import relabel
from metricjax.data.photos import check_files_exist
from metricjax.data.photos import PhotoDataset
from metricjax.data.sources import base
from metricjax.data.sources.tables import read_table
from metricjax.errors import UserError


def read(path, split, options) -> PhotoDataset:
  del options  # In-Shop's boxes are not used.
  root = os.path.dirname(path)
  rows = read_table(path, ("image_name", "item_id", "evaluation_status"),
                    skip=2)
  status = np.array([r[2] for r in rows])
  bad = np.flatnonzero(~np.isin(status, ("train", "query", "gallery")))
  if len(bad):
    raise UserError(f"{path} line {bad[0] + 3}: evaluation_status "
                    f"{str(status[bad[0]])!r} is not train, query or gallery.")
  keep = status == "train" if split == "train" else status != "train"
  ids = np.array([r[0] for r in rows])[keep]
  check_files_exist(root, ids, path)
  labels, items = relabel(np.array([r[1] for r in rows])[keep])
  roles = {}
  if split == "test":
    roles = dict(is_query=status[keep] == "query",
                 is_gallery=status[keep] == "gallery")
  return PhotoDataset(
      labels=labels, num_classes=len(items),
      class_names=tuple(str(i) for i in items),
      name="inshop", split=split, source=f"In-Shop {path}", ids=ids,
      root=root, **roles)


SOURCE = base.Source(
    read=read, entries=("inshop/list_eval_partition.txt",
                        "In-shop Clothes Retrieval Benchmark/"
                        "list_eval_partition.txt"),
    splits=("train", "test"), benchmark=True,
    download="download img.zip and Eval/list_eval_partition.txt of "
    "DeepFashion In-Shop, https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/"
    "InShopRetrieval.html, put both in inshop/ (img.zip extracted), and set "
    "METRICJAX_DATA_DIR to the directory that holds inshop/",
    convention=dataclasses.replace(base.BENCHMARK,
                                   recall_ks=(1, 10, 20, 30, 40, 50)))

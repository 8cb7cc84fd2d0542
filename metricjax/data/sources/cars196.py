"""Cars196 (Stanford Cars, Krause et al. 2013), in its official layout.

    cars196/{cars_annos.mat, car_ims/}

The field's split: classes 1-98 train, 99-196 test (the .mat's own
train/test flags split images of the same classes and are not used).
"""

import os

import numpy as np

from metricjax.data.photos import check_files_exist
from metricjax.data.photos import PhotoDataset
from metricjax.data.sources import base
from metricjax.data.sources.tables import check_range
from metricjax.data.sources.tables import class_half
from metricjax.errors import one_line
from metricjax.errors import UserError


def read(path, split, options) -> PhotoDataset:
  import scipy.io  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(path)
  try:
    mat = scipy.io.loadmat(path, squeeze_me=True)
    annotations = mat["annotations"]
    class_names = tuple(str(c) for c in np.atleast_1d(mat["class_names"]))
    ids = np.array([str(p) for p in np.atleast_1d(
        annotations["relative_im_path"])])
    class_ids = np.atleast_1d(annotations["class"]).astype(np.int64)
    xyxy = np.stack([np.atleast_1d(annotations[f"bbox_{c}"]).astype(np.float32)
                     for c in ("x1", "y1", "x2", "y2")], 1)
  except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
    raise UserError(f"Cannot read {path} as Cars196's annotations "
                    f"(annotations with relative_im_path, bbox_x1..y2, class, "
                    f"test; class_names): {one_line(e)}. Download it "
                    "again.") from None
  check_range(path, class_ids, np.arange(1, len(class_names) + 1), "class")
  check_files_exist(root, ids, path)
  ds = PhotoDataset(
      labels=(class_ids - 1).astype(np.int32), num_classes=len(class_names),
      class_names=class_names, name="cars196", split="all",
      source=f"Cars196 {root}", ids=ids, root=root,
      boxes=xyxy if options.boxes else None)
  return class_half(ds, split, 98, path)


SOURCE = base.Source(
    read=read, entries=("cars196/cars_annos.mat",
                        "stanford_cars/cars_annos.mat"),
    splits=("train", "test"), benchmark=True,
    download="download cars_annos.mat and car_ims.tgz from the Stanford Cars "
    "page, https://ai.stanford.edu/~jkrause/cars/car_dataset.html (or a "
    "mirror of those two files), and set METRICJAX_DATA_DIR to the "
    "directory that holds cars196/",
    convention=base.BENCHMARK)

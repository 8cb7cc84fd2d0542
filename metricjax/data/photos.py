"""A lazy split of photographs of any size: paths and labels, never pixels.

The benchmarks of the field (CUB-200-2011, Cars196, SOP, In-Shop) hold
tens of thousands of photos of every size; decoded at 224 px, SOP's test
split alone would take 9 GB of host memory. A PhotoDataset keeps only what
the samplers and the metrics need (labels, the relative path of each
image, an optional bounding box, the query/gallery roles); the host
pipeline (data/photo_pipeline.py) reads and decodes the bytes of the rows
of each batch when it is built.
"""

import dataclasses
import os
from typing import ClassVar

import numpy as np

from metricjax.data.dataset import relabel
from metricjax.data.image_folder import is_image_file
from metricjax.errors import UserError


# eq=False: generated __eq__ would compare arrays elementwise and then fail.
@dataclasses.dataclass(frozen=True, eq=False)
class PhotoDataset:
  """One split of a labelled photo collection, read lazily from `root`.

  Attributes (those of ArrayDataset, less `images`, plus):
    labels: int32 (N,), each in [0, num_classes).
    num_classes, class_names, name, split, source: as ArrayDataset.
    ids: str (N,), each image's path relative to `root` (search indexes
      and reports name an example by it).
    root: the directory the ids are relative to.
    boxes: float32 (N, 4) x1, y1, x2, y2 in pixels of the full image, the
      region each view is taken from; None: whole images.
    is_query, is_gallery: bool (N,), the roles of a query -> gallery
      evaluation (In-Shop); None: every image queries all the others.
  """
  labels: np.ndarray
  num_classes: int
  class_names: tuple[str, ...]
  name: str
  split: str
  source: str
  ids: np.ndarray
  root: str
  boxes: np.ndarray | None = None
  is_query: np.ndarray | None = None
  is_gallery: np.ndarray | None = None
  # Decoded by the host pipeline into views (data/photo_pipeline.py).
  pipeline: ClassVar[str] = "photos"

  def __post_init__(self):
    where = f"dataset {self.name!r} split {self.split!r} (from {self.source})"
    n = len(self.labels)
    if self.labels.dtype != np.int32 or self.labels.ndim != 1:
      raise UserError(f"The labels of {where} must be int32 (N,), got "
                      f"{self.labels.dtype} {self.labels.shape}.")
    if n == 0:
      raise UserError(f"{where} has no images.")
    if len(self.ids) != n:
      raise UserError(f"{where} has {n} labels but {len(self.ids)} ids.")
    if self.num_classes < 1 or len(self.class_names) != self.num_classes:
      raise UserError(f"{where} declares num_classes={self.num_classes} but "
                      f"{len(self.class_names)} class names.")
    low, high = int(self.labels.min()), int(self.labels.max())
    if low < 0 or high >= self.num_classes:
      raise UserError(f"{where} has labels in [{low}, {high}], outside "
                      f"[0, {self.num_classes}).")
    if self.boxes is not None and self.boxes.shape != (n, 4):
      raise UserError(f"{where} has boxes of shape {self.boxes.shape}; "
                      f"expected ({n}, 4).")
    for field in ("is_query", "is_gallery"):
      mask = getattr(self, field)
      if mask is not None and (mask.dtype != bool or mask.shape != (n,)):
        raise UserError(f"{where}: {field} must be a bool array of {n}.")

  def __len__(self) -> int:
    return len(self.labels)

  def path(self, i: int) -> str:
    return os.path.join(self.root, self.ids[i])

  def read(self, i: int) -> bytes:
    """The encoded bytes of image i."""
    path = self.path(i)
    try:
      with open(path, "rb") as f:
        return f.read()
    except OSError as e:
      raise UserError(f"Cannot read image {path} ({self.name} {self.split}, "
                      f"row {i}): {e.strerror or e}. Restore the file, or "
                      "remove its line from the split file.") from None

  def box(self, i: int):
    return None if self.boxes is None else tuple(self.boxes[i])


def check_files_exist(root: str, ids, what: str) -> None:
  """One error listing the missing images, before any training starts."""
  missing = [i for i in ids if not os.path.isfile(os.path.join(root, i))]
  if missing:
    shown = ", ".join(os.path.join(root, m) for m in missing[:3])
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    raise UserError(
        f"{len(missing)} image(s) listed by {what} are missing: {shown}{more}. "
        "Extract the dataset's image archive again (the split files and the "
        "images come from one download), or remove those lines.")


def photo_folder(root: str, *, split: str = "all") -> PhotoDataset:
  """Every image of root/CLASS/ (any depth below CLASS), lazily: the
  folders of tools/bench_images.py, or a user's own photo tree."""
  root = os.path.abspath(root)
  ids, classes = [], []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    rel = os.path.relpath(dirpath, root)
    for f in sorted(filenames):
      member = os.path.join(rel, f)
      if rel != "." and is_image_file(member):
        ids.append(member)
        classes.append(member.split(os.sep)[0])
  if not ids:
    raise UserError(f"{root} has no images under CLASS/ subfolders.")
  labels, names = relabel(np.array(classes))
  return PhotoDataset(labels=labels, num_classes=len(names),
                      class_names=tuple(str(n) for n in names),
                      name=os.path.basename(root), split=split,
                      source=f"photo folder {root}", ids=np.array(ids),
                      root=root)

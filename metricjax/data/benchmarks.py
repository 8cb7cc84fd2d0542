"""The field's photo benchmarks in their official layouts, and any CSV.

Each reader returns a lazy PhotoDataset with the field's class-disjoint
split (the one of "A Metric Learning Reality Check" and of the papers it
surveys): the first half of the classes trains, the second half tests.

    cub      CUB_200_2011/{images.txt, image_class_labels.txt, classes.txt,
             images/, bounding_boxes.txt}; classes 1-100 train, 101-200 test
    cars196  cars196/{cars_annos.mat, car_ims/}; classes 1-98 / 99-196
    sop      Stanford_Online_Products/{Ebay_train.txt, Ebay_test.txt}
             (image_id class_id super_class_id path); the files' own split
    inshop   inshop/{list_eval_partition.txt, img/} (image_name item_id
             evaluation_status); train, and test = query + gallery
    csv:FILE path,label,split [,is_query,is_gallery] [,x1,y1,x2,y2]; paths
             relative to the CSV's directory

Labels count from 0 within each split, in class id order.
"""

import csv
import os

import numpy as np

from metricjax.data.image_folder import is_image_file
from metricjax.data.photos import check_files_exist
from metricjax.data.photos import PhotoDataset
from metricjax.data.photos import relabel
from metricjax.data.photos import subset
from metricjax.errors import one_line
from metricjax.errors import UserError

# name -> (folders tried in each data directory, the file that marks the
# layout, where to get it).
LAYOUTS = {
    "cub": (("CUB_200_2011", "CUB_200_2011/CUB_200_2011"), "images.txt",
            "CUB_200_2011.tgz from https://data.caltech.edu/records/"
            "65de6-vp158 (extract it there)"),
    "cars196": (("cars196", "stanford_cars"), "cars_annos.mat",
                "cars_annos.mat and car_ims.tgz from the Stanford Cars page, "
                "https://ai.stanford.edu/~jkrause/cars/car_dataset.html (or "
                "a mirror of those two files)"),
    "sop": (("Stanford_Online_Products",), "Ebay_train.txt",
            "Stanford_Online_Products.zip from https://cvgl.stanford.edu/"
            "projects/lifted_struct/"),
    "inshop": (("inshop", "In-shop Clothes Retrieval Benchmark"),
               "list_eval_partition.txt",
               "img.zip and Eval/list_eval_partition.txt of DeepFashion "
               "In-shop, https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/"
               "InShopRetrieval.html (put both in inshop/)"),
}
SPLITS = ("train", "test")


def load_benchmark(name: str, split: str, roots, *,
                   boxes: bool = False) -> PhotoDataset:
  """Split `split` of benchmark `name`, from the first of `roots` (a list of
  (directory, why it is searched)) that holds its layout."""
  if split not in SPLITS:
    raise UserError(f"Benchmark {name!r} has splits train and test (the "
                    f"field's class-disjoint halves), not {split!r}.")
  entries, marker, download = LAYOUTS[name]
  looked = []
  for directory, origin in roots:
    for entry in entries:
      root = os.path.join(directory, entry)
      if os.path.isfile(os.path.join(root, marker)):
        return _READERS[name](root, split, boxes)
      looked.append(f"{os.path.join(root, marker)} ({origin})")
  if all(origin == "system datasets" for _, origin in roots):
    looked.insert(0, "$METRICJAX_DATA_DIR (not set)")
  raise UserError(
      f"Benchmark {name!r} was not found: looked for {'; '.join(looked)}. "
      f"Get {download}, and set METRICJAX_DATA_DIR to the directory that "
      f"holds {entries[0]}/.")


def read_table(path: str, columns: tuple[str, ...], *, skip: int = 0,
               last_takes_rest: bool = False) -> list[list[str]]:
  """Whitespace-separated rows of `columns`; a bad line is an error naming
  the file and its line number."""
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"Cannot read {path}: {one_line(e)}.") from None
  rows = []
  n = len(columns)
  for number, line in enumerate(lines[skip:], skip + 1):
    if not line.strip():
      continue
    fields = line.split(None, n - 1) if last_takes_rest else line.split()
    if len(fields) != n:
      raise UserError(
          f"{path} line {number}: {line.strip()[:80]!r} does not parse as "
          f"{n} fields ({' '.join(columns)}). The file is truncated or not "
          "the dataset's original; extract it again.")
    rows.append(fields)
  return rows


def to_int(path, rows, column, what) -> np.ndarray:
  out = np.empty(len(rows), np.int64)
  for i, row in enumerate(rows):
    try:
      out[i] = int(row[column])
    except ValueError:
      raise UserError(f"{path}: {what} {row[column]!r} in row {i + 1} is not "
                      "an integer; the file is corrupt.") from None
  return out


def _class_half(ds: PhotoDataset, split: str, first_test: int,
                declared: str) -> PhotoDataset:
  """Classes [0, first_test) train, the rest test."""
  train = ds.labels < first_test
  empty = np.flatnonzero(np.bincount(ds.labels, minlength=ds.num_classes) == 0)
  if len(empty):
    raise UserError(
        f"{declared} declares class(es) "
        f"{', '.join(ds.class_names[c] for c in empty[:5])} but no image has "
        "them; the label file is truncated or belongs to another copy.")
  return subset(ds, train if split == "train" else ~train, split=split,
                note=f"{split}: classes "
                + (f"1-{first_test}" if split == "train"
                   else f"{first_test + 1}-{ds.num_classes}"))


def _check_range(path, ids, valid, what):
  bad = np.flatnonzero(~np.isin(ids, valid))
  if len(bad):
    raise UserError(
        f"{path}: {what} {ids[bad[0]]} (row {bad[0] + 1}) is outside the "
        f"declared classes ({valid.min()}..{valid.max()}); "
        f"{len(bad)} row(s) are. The label file belongs to another copy.")


def read_cub(root, split, boxes=False) -> PhotoDataset:
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
  _check_range(j("image_class_labels.txt"), image_class, class_ids, "class id")
  order = np.argsort(class_ids)
  position = {c: k for k, c in enumerate(class_ids[order])}
  ids = np.array([os.path.join("images", p) for _, p in images])
  check_files_exist(root, ids, j("images.txt"))
  box_array = None
  if boxes:
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
  return _class_half(ds, split, 100, j("classes.txt"))


def read_cars196(root, split, boxes=False) -> PhotoDataset:
  import scipy.io  # pylint: disable=g-import-not-at-top
  path = os.path.join(root, "cars_annos.mat")
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
  _check_range(path, class_ids, np.arange(1, len(class_names) + 1), "class")
  check_files_exist(root, ids, path)
  ds = PhotoDataset(
      labels=(class_ids - 1).astype(np.int32), num_classes=len(class_names),
      class_names=class_names, name="cars196", split="all",
      source=f"Cars196 {root}", ids=ids, root=root,
      boxes=xyxy if boxes else None)
  return _class_half(ds, split, 98, path)


def read_sop(root, split, boxes=False) -> PhotoDataset:
  del boxes  # SOP has none.
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


def read_inshop(root, split, boxes=False) -> PhotoDataset:
  del boxes
  path = os.path.join(root, "list_eval_partition.txt")
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


_READERS = {"cub": read_cub, "cars196": read_cars196, "sop": read_sop,
            "inshop": read_inshop}
CSV_REQUIRED = ("path", "label", "split")
CSV_BOX = ("x1", "y1", "x2", "y2")


def load_csv(path: str, split: str) -> PhotoDataset:
  """`csv:FILE`: one row per image; the header names the columns."""
  path = os.path.abspath(os.path.expanduser(path))
  try:
    with open(path, newline="", encoding="utf-8") as f:
      reader = csv.DictReader(f)
      columns = tuple(reader.fieldnames or ())
      rows = list(reader)
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise UserError(f"Cannot read the CSV catalogue {path}: {one_line(e)}.") \
        from None
  missing = [c for c in CSV_REQUIRED if c not in columns]
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
  if all(c in columns for c in CSV_BOX):
    extra["boxes"] = _csv_numbers(path, rows, CSV_BOX, float, np.float32)
  if "is_query" in columns and "is_gallery" in columns:
    for c in ("is_query", "is_gallery"):
      extra[c] = _csv_numbers(path, rows, (c,), _flag, bool)[:, 0]
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


def _csv_numbers(path, rows, columns, kind, dtype):
  out = np.empty((len(rows), len(columns)), dtype)
  for i, row in enumerate(rows):
    for k, c in enumerate(columns):
      try:
        out[i, k] = kind(row[c])
      except (TypeError, ValueError):
        raise UserError(f"{path}: column {c} of the row of {row['path']!r} is "
                        f"{row[c]!r}, not a number (0/1 for is_query, is_gallery).") from None
  return out


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

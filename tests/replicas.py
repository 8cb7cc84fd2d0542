"""Replicas of the photo benchmarks' exact files, at a few hundred tiny JPEGs.

The real sets cannot be downloaded here, so each test writes a folder laid
out file for file as the official download (same file names, columns,
header lines, .mat struct fields), with small JPEGs of varied sizes and
modes (RGB, grayscale, CMYK) coloured by class, so that a net can learn
them a little. Importable from any test (`import replicas`: tests/ is on
the path) and used by tests/data/test_benchmarks.py and the CLI runs.

  make_cub(dir)      -> dir/CUB_200_2011/       (200 classes)
  make_cars196(dir)  -> dir/cars196/            (196 classes)
  make_sop(dir)      -> dir/Stanford_Online_Products/
  make_inshop(dir)   -> dir/inshop/
  make_csv(dir)      -> dir/catalogue.csv (+ dir/photos/)
"""

import os

import numpy as np
from PIL import Image


def write_photo(path: str, rng: np.random.Generator, label: int, *,
                size_range=(24, 72), mode: str = "RGB") -> tuple[int, int]:
  """A JPEG of random size whose colour says its class; returns (w, h)."""
  w, h = (int(v) for v in rng.integers(*size_range, size=2))
  base = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256])
  pixels = base + rng.normal(0, 25, (h, w, 3))
  image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
  if mode != "RGB":
    image = image.convert(mode)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.save(path, "JPEG", quality=90)
  return w, h


def _modes(i: int) -> str:
  # Every 13th image grayscale, every 17th CMYK, as in real photo sets.
  return "L" if i % 13 == 5 else "CMYK" if i % 17 == 7 else "RGB"


def _write(path: str, lines) -> None:
  with open(path, "w") as f:
    f.write("".join(f"{line}\n" for line in lines))


def make_cub(directory: str, *, per_class: int = 2, seed: int = 0) -> str:
  """CUB-200-2011: images.txt, image_class_labels.txt, classes.txt,
  bounding_boxes.txt, train_test_split.txt and images/CLASS/*.jpg."""
  rng = np.random.default_rng(seed)
  root = os.path.join(directory, "CUB_200_2011")
  classes = [f"{c:03d}.Bird_{c}" for c in range(1, 201)]
  images, labels, boxes, split = [], [], [], []
  image_id = 0
  for c, name in enumerate(classes, 1):
    for k in range(per_class + (c % 3 == 0)):
      image_id += 1
      rel = f"{name}/Bird_{c}_{k:04d}_{image_id}.jpg"
      w, h = write_photo(os.path.join(root, "images", rel), rng, c,
                         mode=_modes(image_id))
      images.append(f"{image_id} {rel}")
      labels.append(f"{image_id} {c}")
      boxes.append(f"{image_id} {w * 0.1:.1f} {h * 0.2:.1f} {w * 0.7:.1f} "
                   f"{h * 0.6:.1f}")
      split.append(f"{image_id} {k % 2}")
  _write(os.path.join(root, "classes.txt"),
         [f"{c} {n}" for c, n in enumerate(classes, 1)])
  _write(os.path.join(root, "images.txt"), images)
  _write(os.path.join(root, "image_class_labels.txt"), labels)
  _write(os.path.join(root, "bounding_boxes.txt"), boxes)
  _write(os.path.join(root, "train_test_split.txt"), split)
  return root


def make_cars196(directory: str, *, per_class: int = 2, seed: int = 1) -> str:
  """Cars196: cars_annos.mat (struct array `annotations` with
  relative_im_path, bbox_x1, bbox_y1, bbox_x2, bbox_y2, class, test; cell
  `class_names`) and car_ims/NNNNNN.jpg, as scipy.io.savemat writes it."""
  import scipy.io  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  root = os.path.join(directory, "cars196")
  fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2",
            "class", "test"]
  rows = []
  for c in range(1, 197):
    for k in range(per_class):
      rel = f"car_ims/{len(rows) + 1:06d}.jpg"
      w, h = write_photo(os.path.join(root, rel), rng, c,
                         mode=_modes(len(rows)))
      rows.append((rel, np.uint16(w // 8), np.uint16(h // 8),
                   np.uint16(w - 2), np.uint16(h - 2), np.uint8(c),
                   np.uint8(k % 2)))
  annotations = np.empty((1, len(rows)), dtype=[(f, "O") for f in fields])
  for i, row in enumerate(rows):
    annotations[0, i] = row
  class_names = np.empty((1, 196), dtype="O")
  class_names[0, :] = [f"Maker Model {c} 2012" for c in range(1, 197)]
  scipy.io.savemat(os.path.join(root, "cars_annos.mat"),
                   {"annotations": annotations, "class_names": class_names})
  return root


SOP_SUPER = ("bicycle", "chair", "kettle")


def make_sop(directory: str, *, classes: int = 12, seed: int = 2) -> str:
  """Stanford Online Products: Ebay_train.txt / Ebay_test.txt (header,
  then image_id class_id super_class_id path) and SUPER_final/*.JPG."""
  rng = np.random.default_rng(seed)
  root = os.path.join(directory, "Stanford_Online_Products")
  image_id = 0
  for split, ids in (("train", range(1, classes // 2 + 1)),
                     ("test", range(classes // 2 + 1, classes + 1))):
    lines = ["image_id class_id super_class_id path"]
    for c in ids:
      s = (c - 1) % len(SOP_SUPER)
      for k in range(2 + c % 3):
        image_id += 1
        rel = f"{SOP_SUPER[s]}_final/{100000 + c}_{k}.JPG"
        write_photo(os.path.join(root, rel), rng, c, mode=_modes(image_id))
        lines.append(f"{image_id} {c} {s + 1} {rel}")
    _write(os.path.join(root, f"Ebay_{split}.txt"), lines)
  return root


def make_inshop(directory: str, *, items: int = 10, seed: int = 3) -> str:
  """In-Shop: list_eval_partition.txt (a count line, a header, then
  image_name item_id evaluation_status) and img/WOMEN/.../*.jpg."""
  rng = np.random.default_rng(seed)
  root = os.path.join(directory, "inshop")
  lines = []
  for item in range(1, items + 1):
    status = ["train"] * 3 if item <= items // 2 else ["query", "gallery",
                                                       "gallery"]
    for k, s in enumerate(status):
      rel = f"img/WOMEN/Dresses/id_{item:08d}/{k + 1:02d}_{k + 1}_front.jpg"
      write_photo(os.path.join(root, rel), rng, item, mode=_modes(len(lines)))
      lines.append(f"{rel} id_{item:08d} {s}")
  _write(os.path.join(root, "list_eval_partition.txt"),
         [str(len(lines)), "image_name item_id evaluation_status", *lines])
  return root


def make_csv(directory: str, *, classes: int = 6, seed: int = 4,
             roles: bool = True, boxes: bool = True) -> str:
  """A user's catalogue: path,label,split[,is_query,is_gallery][,x1..y2]."""
  rng = np.random.default_rng(seed)
  header = ["path", "label", "split"]
  header += ["is_query", "is_gallery"] if roles else []
  header += ["x1", "y1", "x2", "y2"] if boxes else []
  lines = [",".join(header)]
  for c in range(classes):
    split = "train" if c < classes // 2 else "test"
    for k in range(3):
      rel = f"photos/class_{c}/{k}.jpg"
      w, h = write_photo(os.path.join(directory, rel), rng, c)
      row = [rel, f"class_{c}", split]
      row += [str(int(k == 0)), str(int(k > 0))] if roles else []
      row += ["1", "1", str(w - 1), str(h - 1)] if boxes else []
      lines.append(",".join(row))
  path = os.path.join(directory, "catalogue.csv")
  _write(path, lines)
  return path

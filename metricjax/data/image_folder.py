"""`split/class/image` trees, as a directory or a zip, decoded once and cached.

Labels follow the sorted class folder names of the split (the order TFDS
uses for CIFAR-10), as torchvision's ImageFolder does per root. Decoding tens
of thousands of JPEGs takes seconds, so the decoded arrays are cached as .npz
under $METRICJAX_CACHE_DIR (default ~/.cache/metricjax).
"""

import hashlib
import os
import re
import sys
import zipfile
import zlib

from absl import logging
import numpy as np
from tqdm import tqdm

from metricjax.data.dataset import ArrayDataset
from metricjax.data.decode import decode_image
from metricjax.errors import UserError
from metricjax.files import atomic_write

CACHE_DIR_ENV = "METRICJAX_CACHE_DIR"
# Bump when the decoding or the cache layout changes: old entries then miss.
_CACHE_VERSION = 2  # 2: the cache holds the examples' ids.
IMAGE_EXTENSIONS = frozenset(
    (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
     ".ppm", ".pgm", ".pbm"))


class SplitNotFoundError(UserError):
  """The folder or zip exists but has no images for the requested split."""


def cache_dir() -> str:
  return os.environ.get(CACHE_DIR_ENV) or os.path.join(
      os.path.expanduser("~"), ".cache", "metricjax")


def load_image_folder(path: str | os.PathLike, split: str, *,
                      name: str | None = None) -> ArrayDataset:
  """Loads `split` of a directory or zip laid out as `split/class/image`.

  Args:
    path: a directory, or a zip (one extra top-level folder is allowed).
    split: the top-level folder to read, e.g. "train".
    name: canonical dataset name; defaults to the file or folder name.

  Returns:
    An ArrayDataset; images keep one channel when every image is grayscale.
  """
  path = os.path.abspath(os.fspath(path))
  if not os.path.exists(path):
    raise UserError(f"Image folder {path} does not exist. Pass a directory or "
                    "zip of split/class/image files.")
  is_zip = os.path.isfile(path)
  if is_zip and not zipfile.is_zipfile(path):
    raise UserError(f"{path} is a file but not a zip archive, or a truncated "
                    "one (its end record is missing). Copy or download it "
                    "again, or pass a directory of split/class/image files.")
  name = name or re.sub(r"\.zip$", "", os.path.basename(path.rstrip(os.sep)))
  kind = "zip" if is_zip else "image folder"
  source = f"{kind} {path}"

  if is_zip:
    st = os.stat(path)
    # Opening the zip is skipped on a hit: its stat identifies the content.
    key = _cache_key(path, split, [("", st.st_size, st.st_mtime_ns)])
    cached = _load_cache(key, name, split)
    if cached is None:
      with zipfile.ZipFile(path) as zf:
        members, class_names = list_zip(zf, path, split)
        arrays = _decode_all(members, class_names,
                             lambda m: _read_member(zf, m), f"{name}/{split}",
                             path)
  else:
    members, class_names = list_dir(path, split)
    stats = [(m, *_stat(os.path.join(path, m))) for _, m in members]
    key = _cache_key(path, split, stats)
    cached = _load_cache(key, name, split)
    if cached is None:
      arrays = _decode_all(members, class_names,
                           lambda m: _read_file(os.path.join(path, m)),
                           f"{name}/{split}", path)
  if cached is None:
    # An example's id is its path inside the folder or zip.
    cached = (*arrays, np.asarray([m for _, m in members]))
    _save_cache(key, name, split, *cached)
  images, labels, num_classes, class_names, ids = cached
  return ArrayDataset(images, labels, num_classes, class_names, name=name,
                      split=split, source=source, ids=ids)


def _stat(path):
  st = os.stat(path)
  return st.st_size, st.st_mtime_ns


def _read_file(path):
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise UserError(f"Cannot read image {path}: {e.strerror or e}.") from None


def _read_member(zf, member):
  try:
    return zf.read(member)
  except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
    # A flipped byte shows as a CRC mismatch, a cut archive as EOF.
    raise UserError(f"Cannot read {member} from {zf.filename}: {e}. The zip "
                    "is corrupt or truncated; copy or download it "
                    "again.") from None


def is_image_file(member: str) -> bool:
  parts = member.split("/")
  # Hidden files and macOS zip metadata (__MACOSX/, ._x.jpg) are not images.
  if any(p.startswith(".") or p == "__MACOSX" for p in parts):
    return False
  return os.path.splitext(member)[1].lower() in IMAGE_EXTENSIONS


def _group(images_by_member, path, split, found_splits, class_dirs=()):
  """[(class, member)] -> sorted [(label, member)] and the class names.

  `class_dirs` are the class folders of the split, so that one with no
  images (a failed copy, a filter gone wrong) is an error, not a class
  silently missing from the labels.
  """
  empty = sorted(set(class_dirs) - {c for c, _ in images_by_member})
  if images_by_member and empty:
    folders = ", ".join(f"{split}/{c}/" for c in empty)
    what = (f"class folders {folders} hold" if len(empty) > 1
            else f"class folder {folders} holds")
    raise UserError(
        f"{path}: {what} no images (extensions read: "
        f"{', '.join(sorted(IMAGE_EXTENSIONS))}). Add the images or delete "
        "the folder.")
  if not images_by_member:
    found = ", ".join(sorted(found_splits)) or "none"
    raise SplitNotFoundError(
        f"{path} has no images under {split}/<class>/ (splits found: "
        f"{found}). The layout must be split/class/image, e.g. "
        f"{split}/cat/0001.jpg.")
  class_names = tuple(sorted({c for c, _ in images_by_member}))
  label_of = {c: i for i, c in enumerate(class_names)}
  members = sorted((label_of[c], m) for c, m in images_by_member)
  return members, class_names


def list_dir(root, split):
  found_splits = {d for d in os.listdir(root) if not d.startswith(".")
                  and os.path.isdir(os.path.join(root, d))}
  items = []
  split_dir = os.path.join(root, split)
  class_dirs = []
  if os.path.isdir(split_dir):
    class_dirs = [d for d in os.listdir(split_dir) if not d.startswith(".")
                  and os.path.isdir(os.path.join(split_dir, d))]
    for dirpath, dirnames, filenames in os.walk(split_dir):
      dirnames[:] = [d for d in dirnames if not d.startswith(".")]
      rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
      for f in filenames:
        member = f"{rel}/{f}"
        parts = member.split("/")
        if len(parts) >= 3 and is_image_file(member):
          items.append((parts[1], member))
  return _group(items, root, split, found_splits, class_dirs)


def list_zip(zf, path, split):
  names = [n for n in zf.namelist() if not n.endswith("/") and is_image_file(n)]
  prefix = ""
  tops = {n.split("/", 1)[0] for n in names}
  # Zipping a folder usually adds the folder itself: cifar10/train/cat/x.jpg.
  if (split not in tops and len(tops) == 1
      and all(n.count("/") >= 3 for n in names)):
    prefix = tops.pop() + "/"
  # Folder entries (zip -r writes them): the classes of the split.
  class_dirs = {n[len(prefix):].split("/")[1] for n in zf.namelist()
                if n.startswith(prefix + split + "/") and n.endswith("/")
                and n[len(prefix):].count("/") == 2}
  found_splits = set()
  items = []
  for n in names:
    if not n.startswith(prefix):
      continue
    parts = n[len(prefix):].split("/")
    if len(parts) < 3:
      continue
    found_splits.add(parts[0])
    if parts[0] == split:
      items.append((parts[1], n))
  return _group(items, path, split, found_splits, class_dirs)


def _decode_all(members, class_names, read, desc, path):
  """Decodes [(label, member)] with `read(member) -> bytes` into arrays."""
  images = None
  labels = np.empty(len(members), np.int32)
  first = None
  for i, (label, member) in enumerate(
      tqdm(members, desc=f"decoding {desc}", unit="img", file=sys.stderr,
           mininterval=0.5, dynamic_ncols=True)):
    image = decode_image(read(member), f"{path}:{member}", keep_gray=True)
    if images is None:
      first = member
      images = np.empty((len(members),) + image.shape, np.uint8)
    if image.shape[:2] != images.shape[1:3]:
      raise UserError(
          f"{path}: {member} is {image.shape[1]}x{image.shape[0]} pixels but "
          f"{first} is {images.shape[2]}x{images.shape[1]}; every image of a "
          "split must have the same size. Resize the images first.")
    if image.shape[2] != images.shape[3]:
      # Mixed grayscale and colour: promote all to RGB rather than refuse.
      if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
      else:
        images = np.repeat(images, 3, axis=3)
    images[i] = image
    labels[i] = label
  return images, labels, len(class_names), class_names


def _cache_key(path, split, stats) -> str:
  text = repr((_CACHE_VERSION, path, split, stats))
  return hashlib.sha256(text.encode()).hexdigest()[:24]


def _cache_path(key, name, split):
  safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{name}-{split}")
  return os.path.join(cache_dir(), f"{safe}-{key}.npz")


def _load_cache(key, name, split):
  path = _cache_path(key, name, split)
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as z:
      images, labels, ids = z["images"], z["labels"], z["ids"]
      class_names = tuple(str(c) for c in z["class_names"])
      ok = (images.dtype == np.uint8 and images.ndim == 4
            and labels.dtype == np.int32 and labels.shape == images.shape[:1]
            and ids.shape == labels.shape
            and labels.size > 0 and 0 <= labels.min()
            and labels.max() < len(class_names))
  except Exception as e:  # A killed writer cannot cause this; a bad disk can.
    logging.warning("Ignoring unreadable cache %s (%s); decoding again.",
                    path, e)
    return None
  if not ok:
    logging.warning("Ignoring malformed cache %s; decoding again.", path)
    return None
  logging.info("Loaded %s/%s from cache %s", name, split, path)
  return images, labels, len(class_names), class_names, ids


def _save_cache(key, name, split, images, labels, num_classes, class_names,
                ids):
  del num_classes  # Implied by class_names.
  path = _cache_path(key, name, split)
  try:
    with atomic_write(path, "wb") as f:
      np.savez(f, images=images, labels=labels, ids=ids,
               class_names=np.asarray(class_names, dtype=str))
  except (OSError, UserError) as e:
    # A read-only home must not stop training; it only costs a re-decode.
    logging.warning("Could not write cache %s (%s); set %s to a writable "
                    "directory to avoid decoding again.", path, e,
                    CACHE_DIR_ENV)

"""The one image decoder: encoded bytes -> uint8 array, for every reader
(image folders and zips, caption images, search queries, the photo
pipeline's views).

Every Pillow mode comes back as RGB (palette images with transparency go
through RGBA, as Pillow advises; CMYK, alpha, ...), or grey images as one
channel where the reader keeps them (`keep_gray`). 16-bit and float images
are refused: the library reads 8-bit images only. Whatever Pillow raises
for a corrupt file becomes one CorruptImage naming the file.
"""

import io
import math
from typing import Callable

import numpy as np
from PIL import Image

from metricjax.errors import one_line
from metricjax.errors import UserError

GRAY_MODES = frozenset(("1", "L", "LA"))
HIGH_DEPTH_MODES = frozenset(("I", "I;16", "I;16B", "I;16L", "I;16N", "F"))
REPLACE = "Replace or delete the file."

# (width, height) of the image -> ((x0, y0, x1, y1) box of it, (w, h)): the
# part of the image wanted, and the size it is resized to.
Region = Callable[[int, int], tuple[tuple[float, float, float, float],
                                    tuple[int, int]]]


class CorruptImage(UserError):
  """An image that cannot be decoded (or is not 8-bit); `where` names it."""

  def __init__(self, where: str, message: str):
    super().__init__(message)
    self.where = where


def decode_image(data: bytes, where: str, *, keep_gray: bool = False,
                 region: Region | None = None, draft: bool = False,
                 advice: str = REPLACE) -> np.ndarray:
  """Encoded image (JPEG, PNG, ...) -> uint8 (H, W, 3) RGB.

  Args:
    data: the file's bytes.
    where: the file, for errors.
    keep_gray: grey images (modes 1, L, LA, or a palette of greys) come
      back as (H, W, 1) instead.
    region: only `box` of the image, resized to `size` (one bilinear,
      antialiased Pillow resize), where (box, size) = region(width, height).
    draft: with `region`, JPEGs are decoded at the largest reduced DCT
      scale (1/2, 1/4, 1/8) that keeps the box at least `size` pixels each
      way: the resize would throw the other pixels away anyway.
    advice: what the error tells the user to do about a corrupt file.

  Raises:
    CorruptImage: the bytes do not decode, or the image is 16-bit / float.
  """
  try:
    with Image.open(io.BytesIO(data)) as im:
      if im.mode in HIGH_DEPTH_MODES:
        raise CorruptImage(where, (
            f"{where} has pixel mode {im.mode!r} (16-bit or float); only "
            "8-bit grayscale and colour images are supported. Convert it to "
            "8-bit."))
      gray = keep_gray and (im.mode in GRAY_MODES or (
          im.mode == "P" and _palette_is_gray(im)))
      target = "L" if gray else "RGB"
      crop = None
      if region is not None:
        width, height = im.size
        crop, size = region(width, height)
        if draft and im.format == "JPEG":
          need = (max(1, math.ceil(width * size[0] / (crop[2] - crop[0]))),
                  max(1, math.ceil(height * size[1] / (crop[3] - crop[1]))))
          drafted = im.draft(target, need)
          if drafted is not None and drafted[1][2] != width:
            crop = tuple(c * drafted[1][2] / width for c in crop)
      out = im
      if out.mode != target:
        if out.mode == "P" and "transparency" in out.info and not gray:
          out = out.convert("RGBA")
        out = out.convert(target)
      if crop is not None:
        out = out.resize(size, Image.BILINEAR, box=crop)
      array = np.asarray(out)
  except UserError:
    raise
  except Exception as e:  # Pillow raises many types for corrupt data.
    raise CorruptImage(where, f"Cannot decode image {where}: "
                       f"{one_line(e, 200)}. {advice}") from None
  return array[..., None] if gray else array


def _palette_is_gray(im) -> bool:
  rgb = np.asarray(im.getpalette("RGB") or [], np.uint8).reshape(-1, 3)
  return bool(rgb.size) and bool(np.all(rgb == rgb[:, :1]))

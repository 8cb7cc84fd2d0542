"""Loose image files (search queries): list a directory's, decode them."""

import os

import numpy as np

from metricjax.data.decode import decode_image
from metricjax.data.image_folder import IMAGE_EXTENSIONS
from metricjax.data.image_folder import is_image_file
from metricjax.errors import UserError


def read_images(paths) -> list[np.ndarray]:
  """Decoded uint8 (H, W, C) images, C = 1 for grayscale files, else 3."""
  images = []
  for path in paths:
    try:
      with open(path, "rb") as f:
        data = f.read()
    except OSError as e:
      raise UserError(f"Cannot read the query image {path}: "
                      f"{e.strerror or e}.") from None
    images.append(decode_image(data, path, keep_gray=True))
  return images


def list_images(directory: str) -> list[str]:
  """The image files directly in `directory`, sorted."""
  if not os.path.isdir(directory):
    raise UserError(f"--images={directory} is not a directory.")
  paths = sorted(os.path.join(directory, f) for f in os.listdir(directory)
                 if is_image_file(f))
  if not paths:
    raise UserError(f"{directory} holds no image files (looked for "
                    f"{', '.join(sorted(IMAGE_EXTENSIONS))}).")
  return paths

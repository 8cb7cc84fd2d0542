"""metricjax.data.packed: a split packed in ArrayRecord chunks reads back
as it was written, and a truncated file or a missing split is a clear
error."""

import os

import numpy as np
import pytest

from metricjax.data import load_dataset
from metricjax.errors import UserError
from helpers import pack_idx_split


def test_packed_round_trip_and_truncation(tiny_idx_dir, tmp_path):
  ds, path = pack_idx_split(tiny_idx_dir, tmp_path, "train")
  loaded = load_dataset(f"packed:{tmp_path}", "train")
  assert len(loaded) == len(ds) and loaded.image_shape == ds.image_shape
  np.testing.assert_array_equal(loaded.images[[5, 0, 63]], ds.images[[5, 0, 63]])
  np.testing.assert_array_equal(loaded.images[10:20], ds.images[10:20])
  np.testing.assert_array_equal(loaded.labels, ds.labels)
  assert not [f for f in os.listdir(tmp_path) if "tmp" in f]

  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(UserError, match="truncated"):
    load_dataset(f"packed:{tmp_path}", "train").images[[60]]
  with pytest.raises(UserError, match="test"):
    load_dataset(f"packed:{tmp_path}", "test")

"""metricjax.data.idx: the IDX reader, its round trip and every corruption."""

import numpy as np
import pytest

from metricjax.data import read_idx
from metricjax.errors import UserError
from helpers import write_idx


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_read_idx_round_trip(tmp_path, gz, dtype):
  array = np.arange(2 * 3 * 4, dtype=dtype).reshape(2, 3, 4) * 7
  # No .gz suffix either way: compression is sniffed from the bytes.
  path = tmp_path / "x-idx3-ubyte"
  write_idx(path, array, gz=gz)
  out = read_idx(path)
  np.testing.assert_array_equal(out, array)
  assert out.dtype == dtype and out.dtype.isnative and out.flags.writeable


@pytest.mark.parametrize("corrupt, expected", [
    (lambda d: d[:3], "fewer than the 4-byte"),
    (lambda d: b"\x08\x03" + d[2:], "magic number"),
    (lambda d: d[:2] + b"\x42" + d[3:], "element type"),
    (lambda d: d[:6], "file ends"),
    (lambda d: d[:-1], "truncated"),
    (lambda d: d + b"\0", "extra bytes"),
])
def test_read_idx_corrupt(tmp_path, corrupt, expected):
  data = write_idx(tmp_path / "ok", np.zeros((3, 2, 2), np.uint8), gz=False)
  bad = tmp_path / "bad-images-idx3-ubyte"
  bad.write_bytes(corrupt(data))
  with pytest.raises(UserError, match=expected) as e:
    read_idx(bad)
  assert str(bad) in str(e.value)


def test_read_idx_truncated_gzip_and_missing(tmp_path):
  path = tmp_path / "t.gz"
  write_idx(path, np.random.default_rng(0).integers(0, 256, (9, 28, 28),
                                                    dtype=np.uint8))
  path.write_bytes(path.read_bytes()[:200])
  with pytest.raises(UserError, match="gzip stream is corrupt") as e:
    read_idx(path)
  assert str(path) in str(e.value)
  with pytest.raises(UserError, match="does not exist"):
    read_idx(tmp_path / "nope.gz")

"""IDX files: the format of MNIST and Fashion-MNIST.

Layout (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type byte, the
number of dimensions, each dimension as a big-endian uint32, then the data.
"""

import gzip
import os
import zlib

import numpy as np

from metricjax.errors import UserError

_GZIP_MAGIC = b"\x1f\x8b"
# Type byte -> element type; IDX payloads are big-endian.
_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file, gzipped or not, into a native-endian numpy array.

  Compression is detected from the content, not the name: Debian and some
  mirrors ship the same files with and without `.gz`.
  """
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      compressed = f.read(2) == _GZIP_MAGIC
    if compressed:
      with gzip.open(path, "rb") as f:
        data = f.read()
    else:
      with open(path, "rb") as f:
        data = f.read()
  except FileNotFoundError:
    raise UserError(f"IDX file {path} does not exist.") from None
  except (OSError, EOFError, zlib.error) as e:
    # gzip raises EOFError on a truncated stream, BadGzipFile (OSError) on junk.
    raise UserError(f"Cannot read IDX file {path}: the gzip stream is corrupt "
                    f"or truncated ({e}). Download or copy the file "
                    "again.") from None
  return _parse(data, path)


def _parse(data: bytes, path: str) -> np.ndarray:
  def fail(what):
    return UserError(f"{path} is not a valid IDX file: {what}. The file is "
                     "corrupt, truncated or of another format; download or "
                     "copy it again.")

  if len(data) < 4:
    raise fail(f"it has {len(data)} bytes, fewer than the 4-byte magic number")
  if data[:2] != b"\0\0":
    raise fail(f"the magic number starts with {data[:2].hex()}, not 0000")
  type_byte, ndim = data[2], data[3]
  if type_byte not in _DTYPES:
    raise fail(f"unknown element type byte 0x{type_byte:02x} (expected one of "
               f"{', '.join(f'0x{t:02x}' for t in _DTYPES)})")
  if ndim == 0:
    raise fail("the header declares 0 dimensions")
  header = 4 + 4 * ndim
  if len(data) < header:
    raise fail(f"the header declares {ndim} dimensions but the file ends after "
               f"{len(data)} bytes")
  dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, offset=4))
  dtype = _DTYPES[type_byte]
  expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
  payload = len(data) - header
  if payload != expected:
    state = "truncated" if payload < expected else "followed by extra bytes"
    raise fail(f"dimensions {dims} need {expected} payload bytes but the file "
               f"has {payload} (it is {state})")
  array = np.frombuffer(data, dtype, offset=header).reshape(dims)
  # A writable native-endian copy: frombuffer views are read-only.
  return array.astype(dtype.newbyteorder("="))

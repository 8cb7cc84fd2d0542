"""Files that appear complete or not at all (atomic writes).

Every result, cache, table and index file of metricjax is written through
`atomic_write`: a reader (or a run killed half-way) never sees a partial
file, only the old one or the new one.
"""

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator

from metricjax.errors import UserError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *,
                 permissions: int | None = 0o644) -> Iterator[Any]:
  """Yields a file object whose contents replace `path` on success.

  The temporary file lives in path's directory, so the final os.replace is
  an atomic rename; it is flushed and fsynced first, so a crash right after
  cannot leave an empty file under the final name. On any exception the
  temporary file is removed and `path` is untouched; an OSError (disk full,
  no permission) becomes a UserError naming the path.

  Args:
    path: the file to (re)write; parent directories are created.
    mode: "w" (text, UTF-8) or "wb".
    permissions: mode bits of the result (mkstemp makes files private; most
      outputs and caches are meant to be readable by others); None keeps 0600.
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-",
                               suffix="-" + os.path.basename(path))
  except OSError as e:
    raise _cannot_write(path, e) from e
  try:
    with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    if permissions is not None:
      os.chmod(tmp, permissions)
    os.replace(tmp, path)
  except BaseException as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    if isinstance(e, OSError):
      raise _cannot_write(path, e) from e
    raise


def _cannot_write(path: str, e: OSError) -> UserError:
  return UserError(f"Could not write {path}: {e.strerror or e}. Free disk "
                   "space or choose a writable directory; nothing was "
                   "written there (the old file, if any, is unchanged).")


def write_json(path: str | os.PathLike, obj: Any, **dump_kwargs) -> None:
  """json.dump(obj) to path, atomically."""
  with atomic_write(path) as f:
    json.dump(obj, f, **dump_kwargs)


def write_text(path: str | os.PathLike, text: str) -> None:
  with atomic_write(path) as f:
    f.write(text)

"""File writing that never leaves a half-written file behind."""

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_write(path, mode: str = "w"):
  """Yields a file object; `path` gets its content only if the block ends
  without an exception.

  The temporary file is in the same directory (os.replace is atomic only
  within one file system), flushed and fsync'd before the rename, so a
  crash leaves either the old file or the new one, and it is removed when
  the block fails.
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                             suffix=".tmp")
  try:
    # mkstemp makes the file private (0600); give it the permissions a plain
    # open() would have.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise

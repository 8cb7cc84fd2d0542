"""Freed host memory kept for reuse, so that XLA:CPU does not fault its
buffers in again on every call (issue 19).

XLA:CPU allocates a compiled program's temporary buffer afresh on every
call and frees it at the end (358 MB for the compact model's training step
at batch 256), and its kernels allocate scratch blocks of 58-116 MB the
same way, from the runtime's worker threads. glibc's malloc serves blocks
that large from the threads' own arenas with mmap and returns them with
munmap, so every call the kernel maps, faults in and zeroes them again:
91,700 minor page faults and about 0.2 s of system time per call of a
0.4-0.5 s step on the 2-core AMD EPYC of tools/results/percall.md. That
is most of the per-call cost of `config.steps_per_call`:
a call of 8 unrolled steps holds a buffer 5x, not 8x, as large, so it
faulted 57,700 pages per step against 91,600 and spent 0.12 s of system
time per step against 0.23-0.47 s.

`keep_freed_memory` has glibc put every thread on the main arena, serve
large blocks from its heap rather than from mmap, and not give freed heap
back to the system, so later calls reuse pages already faulted in. Freed
blocks can be split by smaller allocations, so the heap first grows to
hold a few of them and some calls still fault: 60-step runs of the
quickstart's command went from 5.67 million minor faults and 14-15 s of
system time to 0.41-0.58 million and 1.5-1.9 s, and from 83-209 to
237-294 images/s; with five large programs alive in one process the step
still faulted at the median (tools/results/percall.md). The price is a larger
resident heap (peak RSS 1.8-2.5 GB against 1.13 GB in those runs), kept
until the process exits. Only the command lines call it (`--keep_freed_memory`,
metricjax/cli.py); a program that uses the library can call it itself,
before jax starts its backend.
"""

import ctypes

# glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# mallopt takes an int: never trim a free top below 2 GiB.
_NO_TRIM = 2**31 - 1


def _backends_started() -> bool:
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):
    return False


def keep_freed_memory() -> bool:
  """Makes glibc's malloc reuse freed large blocks (module docstring).

  Must run before jax initialises a backend: the runtime's threads keep the
  arena they first allocated from. Returns whether it took effect: False
  on a C library other than glibc, or once a backend has started (then it
  changes nothing).
  """
  if _backends_started():
    return False
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # Not glibc (musl, macOS, Windows).
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  # Arenas first: a thread that allocates between the calls must not get
  # an arena of its own.
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0),
              (_M_TRIM_THRESHOLD, _NO_TRIM))
  return all([mallopt(option, value) == 1 for option, value in settings])

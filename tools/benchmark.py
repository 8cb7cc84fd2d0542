"""What every benchmark in tools/ shares: the machine it ran on, its load,
interleaved timing with medians, peak memory, one-line JSON.

Imported by the tools when run as scripts from the repository root
(`PYTHONPATH=$PWD python tools/X.py`), so tools/ is on sys.path.
"""

import json
import os
import platform
import resource
import statistics
import time
from typing import Callable


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next(l.split(":", 1)[1].strip() for l in f
                  if l.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def load() -> str:
  """The 1, 5 and 15 minute load averages, as `uptime` shows them."""
  return " ".join(f"{v:.2f}" for v in os.getloadavg())


def machine(threads: int | None = None) -> str:
  """CPU model, CPUs, jax (and torch, when importable) versions, date, load."""
  import jax  # pylint: disable=g-import-not-at-top
  parts = [f"{cpu_model()}, {os.cpu_count()} CPUs",
           f"jax {jax.__version__} ({jax.devices()[0].platform})"]
  try:
    import torch  # pylint: disable=g-import-not-at-top
    parts.append(f"torch {torch.__version__}"
                 + (f" ({threads} threads)" if threads else ""))
  except ImportError:
    pass
  parts += [time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            f"load average {load()}"]
  return ", ".join(parts)


def peak_rss_mb() -> float:
  """This process's peak resident memory so far, MB: Linux's VmHWM, else
  ru_maxrss. (ru_maxrss survives exec: a child started by a larger parent
  reports at least the parent's resident size at the fork.)"""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_times(fns: dict[str, Callable[[], object]], repeats: int, *,
                 warmup: int = 2, pause: float = 0.0) -> dict[str, float]:
  """Median seconds per call of each zero-argument, blocking callable.

  The callables take turns within each repeat, in an order that rotates
  from repeat to repeat, so load from other jobs falls on all alike; a
  pause before each call lets the previous one's idle threads sleep.
  """
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  names = list(fns)
  times = {name: [] for name in names}
  for r in range(repeats):
    for name in names[r % len(names):] + names[:r % len(names)]:
      time.sleep(pause)
      start = time.perf_counter()
      fns[name]()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def print_json(record: dict) -> None:
  """One JSON line (the tools' --json output)."""
  print(json.dumps(record, sort_keys=True), flush=True)

"""host_memory.keep_freed_memory: XLA:CPU's per-call temporary buffer is
reused instead of faulted in again on every call."""

import json
import os
import platform
import subprocess
import sys

import pytest

from helpers import REPO

# A step-like program (its input donated, its output aliased to it) whose
# temporary buffer, 48 MB, is above glibc's largest mmap threshold (32 MB);
# minor page faults of each of 24 calls.
_PROGRAM = """
import json, resource, sys
from metricjax import host_memory
applied = host_memory.keep_freed_memory() if sys.argv[1] == "keep" else None
import jax, jax.numpy as jnp
x = jnp.ones((3072, 4096), jnp.float32)
compiled = jax.jit(
    lambda x: x + 1e-3 * jnp.cumsum(jnp.sin(x), axis=0)[::-1],
    donate_argnums=0).lower(x).compile()
faults = []
for _ in range(24):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  x = jax.block_until_ready(compiled(x))
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(dict(
    applied=applied, again=host_memory.keep_freed_memory(),
    temp_pages=compiled.memory_analysis().temp_size_in_bytes // 4096,
    faults=faults)))
"""


def _run(mode):
  # XLA's default optimisation level: the program runs 24 steps, which
  # unoptimised code makes several times slower; it compares page faults,
  # not numbers, with no other process.
  env = dict(os.environ, XLA_FLAGS="", PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, "-c", _PROGRAM, mode], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=120,
                       check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_buffers_are_reused_not_faulted_in_again():
  default, kept = _run("default"), _run("keep")
  pages = default["temp_pages"]
  assert pages >= 12288
  # By default every call faults the whole temporary buffer in again.
  assert min(default["faults"]) >= 0.9 * pages
  # Kept, the heap first grows to hold the blocks in flight (a few calls
  # fault), then calls reuse it: 0 or 1 of the last 12 faulted in 4 runs.
  assert kept["applied"] is True
  assert sum(kept["faults"][12:]) < 4 * pages
  # Once the backend has started it is too late, and it says so.
  assert kept["again"] is False and default["again"] is False

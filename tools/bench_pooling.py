r"""The compact net's training step with flax's max_pool against
ops.max_pool_2x2 (reshape + max), on this CPU, in one run.

  PYTHONPATH=$PWD python tools/bench_pooling.py [--variant=hybrid1] [--repeats=10]

Both steps are the CLI's own (metricjax.aot.compile_train_step on this
machine: sampler, MS loss, AdamW, donated state) on configs/
compact_involution.py at batch 256, over synthetic data of the dataset's
shapes; calls interleaved, medians. The deviceless GPU / TPU side of the
same change: tools/aot_table.py --render --compare (docs/accelerators.md).
"""

import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax.linen as nn
import jax
import numpy as np
from absl import app
from absl import flags

from metricjax import aot
from metricjax import ops
from metricjax import parallel
from metricjax.config_utils import load_config
from metricjax.models import compact

import benchmark  # tools/benchmark.py
import device_check  # tools/device_check.py: synthetic data of given shapes.

flags.DEFINE_string("variant", "hybrid1", "The compact net's variant.")
flags.DEFINE_integer("repeats", 10, "Timed calls of each (after 2 warm-ups).")
FLAGS = flags.FLAGS


class _FlaxPooling:
  """compact.py's `ops` with max_pool_2x2 swapped for flax's max_pool."""

  def __getattr__(self, name):
    return getattr(ops, name)

  @staticmethod
  def max_pool_2x2(x, padding="SAME"):
    return nn.max_pool(x, (2, 2), (2, 2), padding)


def _step(config, mesh):
  compiled, task, _, _ = aot.compile_train_step(config, mesh)
  state = jax.jit(task.init, out_shardings=parallel.replicated(mesh))(
      jax.random.key(0))
  data = device_check._concrete(  # pylint: disable=protected-access
      task.data, task.meta.num_classes, np.random.default_rng(0))
  key = jax.device_put(jax.random.key(0), parallel.replicated(mesh))
  return [compiled, state, data, key]


def main(argv):
  del argv
  config = load_config(
      f"configs/compact_involution.py:variant={FLAGS.variant}")
  mesh = parallel.create_mesh(jax.devices()[:1])
  print(benchmark.machine())
  runs = {}
  compact.ops = _FlaxPooling()
  runs["flax max_pool"] = _step(config, mesh)
  compact.ops = ops
  runs["max_pool_2x2"] = _step(config, mesh)
  times = {name: [] for name in runs}
  for i in range(2 + FLAGS.repeats):
    for name, run in runs.items():
      compiled, state, data, key = run
      t = time.perf_counter()
      run[1], metrics = compiled(state, data, key)
      jax.block_until_ready(run[1])
      if i >= 2:
        times[name].append(time.perf_counter() - t)
  med = {name: statistics.median(t) for name, t in times.items()}
  for name, t in med.items():
    print(f"{FLAGS.variant} step, batch 256, {name}: {t * 1e3:.1f} ms "
          f"({256 / t:,.0f} images/s)")
  print(f"speed-up: {med['flax max_pool'] / med['max_pool_2x2']:.2f}x; "
        f"load after: {benchmark.load()}")
  del metrics


if __name__ == "__main__":
  app.run(main)

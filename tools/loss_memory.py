r"""Every loss and every miner at a batch of N (default 4096): it runs, and
what its compiled value-and-gradient needs.

  python tools/loss_memory.py [--batch=4096 --dim=64 --classes=100]

Per loss: XLA's temporary bytes of the compiled jit(value_and_grad) (the
memory the loss itself needs beyond its inputs and outputs), that number
over N^2 float32 (O(N^2) losses stay a small constant), and the wall time
of one call after compilation (the first). Labelled losses get N embeddings of
`classes` balanced classes; learnable ones their PML-initialised
parameters; explicit-triplet losses N triplets; `vse` N image-caption pairs;
two-view losses (`vicreg`, `self_supervised`) N pairs of views; `manifold`
N rows spread over its proxies. The losses are REGISTRY's and those only
`losses.build` makes (PML's names); each miner feeds contrastive (a pair
loss) and triplet_margin (a triplet loss); random miners take a key.
"""

import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from metricjax import losses
from metricjax.losses import miners

flags.DEFINE_integer("batch", 4096, "N: rows of the batch.")
flags.DEFINE_integer("dim", 64, "Embedding width.")
flags.DEFINE_integer("classes", 100, "Classes in the batch.")
flags.DEFINE_bool("run", True, "Also run each (one call, timed); false: "
                  "the compiled memory only (the O(N^3)-time miners and "
                  "losses take minutes a call at N = 4096 on a CPU).")
FLAGS = flags.FLAGS


def _inputs(name, loss, n, d, c):
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  if loss.input == "triplets":
    return (normal(n, d), normal(n, d), normal(n, d)), {}
  if loss.input in ("image_text", "views"):
    return (normal(n, d), normal(n, d)), {}
  params = (loss.init(jax.random.key(0), num_classes=c, embedding_dim=d)
            if loss.init else {})
  if loss.input == "unlabelled":  # manifold: meta classes over its proxies
    k = next(iter(params.values())).shape[0]
    return (normal(n, d), jnp.asarray(np.arange(n) % k, jnp.int32)), params
  labels = jnp.asarray(np.arange(n) % c, jnp.int32)
  x = normal(n, c) if loss.input == "logits" else normal(n, d)
  return (x, labels), params


def _measure(label, fn, args, params, extra):
  floats = tuple(a for a in args if a.dtype == jnp.float32)
  ints = tuple(a for a in args if a.dtype != jnp.float32)
  f = jax.jit(jax.value_and_grad(
      lambda fl, i, p: fn(*fl, *i, **p, **extra), argnums=(0, 2)))
  compiled = f.lower(floats, ints, params).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  seconds = "not run"
  if FLAGS.run:
    # One call: compiled already, and the O(N^3)-time miners take minutes.
    start = time.perf_counter()
    value, _ = jax.block_until_ready(compiled(floats, ints, params))
    seconds = f"{time.perf_counter() - start:.2f}"
    assert np.isfinite(float(value)), label
  n = args[0].shape[0]
  print(f"| {label} | {temp / 2**20:,.1f} | {temp / (4 * n * n):.1f} | "
        f"{seconds} |", flush=True)


def main(argv):
  del argv
  n, d, c = FLAGS.batch, FLAGS.dim, FLAGS.classes
  print(f"N = {n}, D = {d}, {c} classes; jax {jax.__version__}, "
        f"{jax.devices()[0].platform}; load average {os.getloadavg()[0]:.2f}")
  print("| loss | compiled temp MiB | temp / (N^2 x 4 B) | one call s |")
  print("|---|--:|--:|--:|")
  names = sorted(set(losses.REGISTRY) | set(losses.COMPOSABLE))
  for name in names:
    loss = losses.get_loss(name)
    args, params = _inputs(name, loss, n, d, c)
    _measure(name, loss.fn, args, params, {})
  print("\n| miner, with loss | compiled temp MiB | temp / (N^2 x 4 B) | "
        "one call s |")
  print("|---|--:|--:|--:|")
  key = {"key": jax.random.key(0)}
  for miner in sorted(miners.REGISTRY):
    for name in ("contrastive", "triplet_margin"):
      fn = losses.build(name, miner=miner)
      args, params = _inputs(name, losses.get_loss(name), n, d, c)
      _measure(f"{miner}, {name}", fn, args, params,
               key if miners.REGISTRY[miner].random else {})


if __name__ == "__main__":
  app.run(main)

r"""Forward + backward of hybrid1's layers alone: XLA vs PyTorch, same run.

  PYTHONPATH=$PWD python tools/bench_layers.py [--repeats=5] \
      [--xla_cpu_routing=both]

Each 3x3 conv of hybrid1 at batch 256 (forward, input and weight gradients),
as nn.Conv under each XLA:CPU routing (metricjax/xla_routing.py) and as 9
shifted slices + one matmul (im2col), and one batch norm (training mode) +
exact GELU (metricjax/ops/activations.py; jax.nn.gelu's erfc form beside it),
against PyTorch with 1 and --threads threads. The implementations take turns
within each repeat (tools/benchmark.py); medians, load average beside them.
"""

import os

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmark import load
from benchmark import machine
from benchmark import median_times

from metricjax import xla_routing
from metricjax.ops import activations

FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 5, "Interleaved repetitions (medians).")
flags.DEFINE_integer("threads", len(os.sched_getaffinity(0)),
                     "torch.set_num_threads (and 1).")
flags.DEFINE_enum("xla_cpu_routing", "both",
                  ["conv_eigen", "jaxlib_default", "both"],
                  "Routings to time the XLA implementations under.")

# hybrid1's 3x3 convs at batch 256: (B, H, W, C_in, C_out).
LAYERS = [(256, 28, 28, 1, 32), (256, 14, 14, 32, 64), (256, 7, 7, 64, 64),
          (256, 4, 4, 64, 96)]
BN_GELU = ("bn+gelu", 256, 28, 28, 32)


def _im2col_conv(variables, x):
  """nn.Conv(3x3, "SAME", no bias) as 9 shifted slices + one matmul."""
  kernel = variables["params"]["kernel"]
  _, h, w, c = x.shape
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  columns = jnp.concatenate([padded[:, i:i + h, j:j + w, :]
                             for i in range(3) for j in range(3)], axis=-1)
  return jnp.dot(columns, kernel.reshape(9 * c, -1))


def bench_layers(repeats, threads, routings):
  import torch  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  rows = []
  for shape in LAYERS + [BN_GELU]:
    bn = shape[0] == "bn+gelu"
    b, h, w, cin = shape[1:5] if bn else shape[:4]
    cout = cin if bn else shape[4]
    x = rng.normal(size=(b, h, w, cin)).astype(np.float32)
    ct = rng.normal(size=(b, h, w, cout)).astype(np.float32)
    if bn:
      module = nn.BatchNorm(use_running_average=False, momentum=0.9,
                            epsilon=1e-5)
      norm = lambda v, x: module.apply(v, x, mutable=["batch_stats"])[0]
      impls = {"XLA": lambda v, x: activations.gelu(norm(v, x)),
               "XLA erfc gelu": lambda v, x: jax.nn.gelu(
                   norm(v, x), approximate=False)}
      variables = module.init(jax.random.key(0), x)
      t_layer = torch.nn.Sequential(torch.nn.BatchNorm2d(cin),
                                    torch.nn.GELU())
    else:
      conv = nn.Conv(cout, (3, 3), use_bias=False)
      variables = conv.init(jax.random.key(0), x)
      impls = {"XLA": conv.apply, "im2col": _im2col_conv}
      t_layer = torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    fns = {}
    for name, apply in impls.items():
      def fb(v, x, ct, apply=apply):
        y, vjp = jax.vjp(apply, v, x)
        return y, vjp(ct)
      for routing in routings:
        compiled = xla_routing.jit(fb, routing=routing).lower(
            variables, x, ct).compile()
        label = name + (f" ({routing})" if len(routings) > 1 else "")
        fns[label] = lambda c=compiled: jax.block_until_ready(
            c(variables, x, ct))
    x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    ct_t = torch.from_numpy(ct.transpose(0, 3, 1, 2).copy())
    for n in sorted({1, threads}):
      def torch_fb(n=n):
        torch.set_num_threads(n)
        y = t_layer(x_t)
        return torch.autograd.grad(y, [x_t, *t_layer.parameters()], ct_t)
      fns[f"PyTorch, {n} thread{'s' if n > 1 else ''}"] = torch_fb
    before = load()
    times = median_times(fns, repeats)
    label = (f"BN (train) + GELU {(b, h, w, cin)}" if bn
             else f"conv 3x3 {(b, h, w, cin)} -> {cout}")
    rows.append((label, times, f"{before} -> {load()}"))
    print(label, {k: round(v * 1e3, 1) for k, v in times.items()},
          rows[-1][2], flush=True)
  names = sorted({n for _, t, _ in rows for n in t},
                 key=lambda n: (n.startswith("PyTorch"), n))
  best_torch = lambda t: min(v for k, v in t.items() if k.startswith("PyT"))
  lines = [f"Forward + gradients (input and weights), ms, median of {repeats}"
           "; last column: best XLA / best PyTorch", "",
           "| layer | " + " | ".join(names) + " | XLA / PyTorch | load |",
           "|---|" + "--:|" * (len(names) + 1) + "---|"]
  for label, times, loads in rows:
    best_xla = min(v for k, v in times.items() if not k.startswith("PyT"))
    lines.append(f"| {label} | " + " | ".join(
        f"{times[n] * 1e3:.1f}" if n in times else "" for n in names)
        + f" | {best_xla / best_torch(times):.2f} | {loads} |")
  return "\n".join(lines)


def main(_):
  routings = (xla_routing.ROUTINGS if FLAGS.xla_cpu_routing == "both"
              else (FLAGS.xla_cpu_routing,))
  print(machine(FLAGS.threads), "\n", flush=True)
  print(bench_layers(FLAGS.repeats, FLAGS.threads, routings), flush=True)


if __name__ == "__main__":
  app.run(main)

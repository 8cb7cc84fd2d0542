r"""Involution on CPU: metricjax vs the official PyTorch code vs a 3x3 conv.

  python tools/bench_involution.py                  # the op table
  python tools/bench_involution.py --shapes=0,2 --repeats=11
  python tools/bench_involution.py --shapes=8x16x16x32x2x5 --quick
  PYTHONPATH=$PWD python tools/bench_involution.py --train_step     # compact net, before/after

Times are medians over --repeats calls in one process, after compiling and
two warm-up calls; the implementations take turns within each repeat so
that load from other processes hits them alike. Compared per shape
(B, H, W, C, G, K), all NHWC-equivalent and float32:

  metricjax  `metricjax.ops.involution` (custom VJP).
  autodiff   `involution_autodiff`: the same forward differentiated by JAX,
             the op before its custom VJP ("before").
  pytorch    d-li14/involution's involution_naive.py: F.unfold, view as
             (B, G, C/G, K*K, H, W), times the kernel, sum over K*K; with
             torch.set_num_threads(--threads), the CPUs XLA uses. On a
             shared machine OpenMP's barriers make that up to 10x slower
             than one thread, so it is also timed with one thread, and the
             metricjax/PyTorch ratio is taken against the faster of the two.
  conv       jax.lax.conv_general_dilated, 3x3, C -> C, same padding/stride.

"fwd+bwd" returns the output and the gradients of both inputs for a given
output cotangent. "in situ" is the op inside a differentiated loss whose
cotangent comes from the op's own output: the gradients of
sum(op(x, kernel)**2) with respect to x and the kernel (JAX: jit of grad;
PyTorch: forward with autograd, then torch.autograd.grad of the sum), so
XLA compiles the op's backward together with the loss that feeds it. Load
averages (os.getloadavg) are printed before and after each shape. Peak memory of fwd+bwd: for JAX, the compiled function's
memory_analysis() temp + output bytes (inputs excluded); for PyTorch, the
high-water mark of the CPU allocator's allocations during one call, summed
from torch.profiler's memory events (profile_memory=True), inputs excluded.
Results for this repository's machine are in tools/results/involution.md.
"""

import contextlib
import functools
import os
from unittest import mock

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from metricjax import losses
from metricjax import ops
from metricjax.models import CompactNet
from metricjax.ops.involution import involution_autodiff
from benchmark import load  # tools/, run as a script
from benchmark import machine  # tools/, run as a script
from benchmark import median_times  # tools/, run as a script
from torch_reference import involution_naive  # tools/, run as a script

# (B, H, W, C, G, K): MNIST-sized single group, a wide 7x7 kernel, and a
# RedNet-like 56x56 stage.
SHAPES = [(256, 28, 28, 16, 1, 3), (64, 32, 32, 64, 4, 7),
          (32, 56, 56, 64, 4, 3)]


def _parse_shapes(text):
  if not text:
    return list(SHAPES)
  shapes = []
  for item in text.split(","):
    if "x" in item:
      shapes.append(tuple(int(v) for v in item.split("x")))
    else:
      shapes.append(SHAPES[int(item)])
  return shapes


def _jax_call(compiled, *args):
  return lambda: jax.block_until_ready(compiled(*args))


def _jax_peak_bytes(compiled):
  stats = compiled.memory_analysis()
  return stats.temp_size_in_bytes + stats.output_size_in_bytes


def _fwd_bwd(fn):
  def run(a, b, cotangent):
    out, vjp = jax.vjp(fn, a, b)
    return (out, *vjp(cotangent))
  return run


def _in_situ(fn):
  # The cotangent of the op's output is 2 * output, computed in the program.
  return jax.grad(lambda a, b: jnp.sum(fn(a, b) ** 2), argnums=(0, 1))


def _load():
  return f"load average {load()}"


def _conv(x, w, *, stride):
  return jax.lax.conv_general_dilated(
      x, w, (stride, stride), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _torch_peak_bytes(fn):
  """High-water mark of the CPU allocator during fn(), from profiler events."""
  from torch import profiler  # pylint: disable=g-import-not-at-top
  with profiler.profile(activities=[profiler.ProfilerActivity.CPU],
                        profile_memory=True) as prof:
    fn()
  events = sorted((e.start_ns(), e.nbytes())
                  for e in prof.profiler.kineto_results.events()
                  if e.name() == "[memory]")
  live = peak = 0
  for _, nbytes in events:
    live += nbytes
    peak = max(peak, live)
  return peak


def bench_op(shape, repeats, threads):
  """{impl: {"fwd": s, "fwd+bwd": s, "mem": bytes}} for one shape."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  b, h, w, c, g, k = shape
  stride = 1
  ho, wo = -(-h // stride), -(-w // stride)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(b, h, w, c)).astype(np.float32)
  kernel = rng.normal(size=(b, ho, wo, k * k, g)).astype(np.float32)
  cotangent = rng.normal(size=(b, ho, wo, c)).astype(np.float32)
  conv_w = (rng.normal(size=(3, 3, c, c)) / np.sqrt(9 * c)).astype(np.float32)

  results = {}
  fwd, fwd_bwd, in_situ = {}, {}, {}
  jax_cases = {
      "metricjax": (functools.partial(ops.involution, kernel_size=k,
                                      stride=stride), kernel),
      "autodiff": (functools.partial(involution_autodiff, kernel_size=k,
                                     stride=stride), kernel),
      "conv": (functools.partial(_conv, stride=stride), conv_w),
  }
  for name, (fn, second) in jax_cases.items():
    args = (jnp.asarray(x), jnp.asarray(second))
    ct = jnp.asarray(cotangent)
    fwd[name] = _jax_call(jax.jit(fn).lower(*args).compile(), *args)
    compiled = jax.jit(_fwd_bwd(fn)).lower(*args, ct).compile()
    fwd_bwd[name] = _jax_call(compiled, *args, ct)
    results[name] = {"mem": _jax_peak_bytes(compiled)}
    in_situ[name] = _jax_call(
        jax.jit(_in_situ(fn)).lower(*args).compile(), *args)

  # Official layouts: x (B, C, H, W), weight (B, G*K*K, Ho, Wo), G-major.
  x_t = torch.tensor(x.transpose(0, 3, 1, 2)).requires_grad_()
  w_t = torch.tensor(kernel.transpose(0, 4, 3, 1, 2).reshape(
      b, g * k * k, ho, wo)).requires_grad_()
  ct_t = torch.tensor(cotangent.transpose(0, 3, 1, 2))
  torch_fn = functools.partial(involution_naive, kernel_size=k,
                               stride=stride, groups=g)

  def torch_fwd(num_threads):
    torch.set_num_threads(num_threads)
    with torch.no_grad():
      return torch_fn(x_t, w_t)

  def torch_fwd_bwd(num_threads):
    torch.set_num_threads(num_threads)
    out = torch_fn(x_t, w_t)
    return (out, *torch.autograd.grad(out, (x_t, w_t), ct_t))

  def torch_in_situ(num_threads):
    torch.set_num_threads(num_threads)
    loss = (torch_fn(x_t, w_t) ** 2).sum()
    return torch.autograd.grad(loss, (x_t, w_t))

  torch_threads = {"pytorch": threads}
  if threads > 1:
    torch_threads["pytorch_1t"] = 1
  for name, num_threads in torch_threads.items():
    fwd[name] = functools.partial(torch_fwd, num_threads)
    fwd_bwd[name] = functools.partial(torch_fwd_bwd, num_threads)
    in_situ[name] = functools.partial(torch_in_situ, num_threads)
    results[name] = {}
  results["pytorch"]["mem"] = _torch_peak_bytes(fwd_bwd["pytorch"])

  for key, fns in (("fwd", fwd), ("fwd+bwd", fwd_bwd), ("in situ", in_situ)):
    for name, seconds in median_times(fns, repeats).items():
      results[name][key] = seconds
  results.setdefault("pytorch_1t", results["pytorch"])
  return results


def _op_tables(all_results, repeats, threads):
  names = ("metricjax", "autodiff", "pytorch", "pytorch_1t", "conv")
  torch_columns = (f"PyTorch unfold, {threads} threads | "
                   "PyTorch unfold, 1 thread")
  if threads == 1:
    names = ("metricjax", "autodiff", "pytorch", "conv")
    torch_columns = "PyTorch unfold, 1 thread"
  lines = [
      f"Time, ms (median of {repeats}); metricjax/PyTorch and PyTorch's "
      "speedup (PyTorch/metricjax) against the faster PyTorch:", "",
      f"| shape (B,H,W,C,G,K) | pass | metricjax | autodiff (before) | "
      f"{torch_columns} | XLA conv 3x3 | metricjax/PyTorch | "
      "x faster than PyTorch | metricjax/conv |",
      "|---|---|" + "--:|" * (len(names) + 3)]
  for shape, res in all_results:
    for key in ("fwd", "fwd+bwd", "in situ"):
      ms = {n: res[n][key] * 1e3 for n in names}
      torch_ms = min(res["pytorch"][key], res["pytorch_1t"][key]) * 1e3
      lines.append(
          f"| {shape} | {key} | "
          + " | ".join(f"{ms[n]:.1f}" for n in names)
          + f" | {ms['metricjax'] / torch_ms:.3f}"
          f" | {torch_ms / ms['metricjax']:.1f}"
          f" | {ms['metricjax'] / ms['conv']:.2f} |")
  lines += [""] + [f"{shape}: {res['load']}" for shape, res in all_results]
  names = ("metricjax", "autodiff", "pytorch", "conv")
  lines += [
      "", "Peak memory of fwd+bwd, MB (JAX: compiled temp + output; "
      "PyTorch: allocator high-water mark, torch.profiler):", "",
      "| shape (B,H,W,C,G,K) | metricjax | autodiff (before) | "
      "PyTorch unfold | XLA conv 3x3 | metricjax/PyTorch | metricjax/conv |",
      "|---|--:|--:|--:|--:|--:|--:|"]
  for shape, res in all_results:
    mb = [res[n]["mem"] / 1e6 for n in names]
    lines.append(f"| {shape} | " + " | ".join(f"{v:.1f}" for v in mb)
                 + f" | {mb[0] / mb[2]:.3f} | {mb[0] / mb[3]:.2f} |")
  return "\n".join(lines)


def bench_train_step(repeats, batch_size, variant):
  """Median seconds of the compact net's jitted MS-loss step, new vs old op."""
  import optax  # pylint: disable=g-import-not-at-top
  model = CompactNet(variant=variant)
  rng = np.random.default_rng(0)
  # Fashion-MNIST-shaped: 8 classes x 32 images, as the balanced sampler.
  images = jnp.asarray(rng.integers(0, 256, (batch_size, 28, 28, 1),
                                    dtype=np.uint8))
  labels = jnp.asarray(np.arange(batch_size) // 32 % 10, jnp.int32)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0), images[:1])
  tx = optax.adamw(1e-3, weight_decay=1e-4)
  params, batch_stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)

  def make_step():
    # A new function per op: jit reuses the trace of a function it has seen.
    def step(params, batch_stats, opt_state, images, labels):
      def loss_fn(params):
        outputs, updates = model.apply(
            {"params": params, "batch_stats": batch_stats}, images,
            train=True, mutable=["batch_stats"])
        return (losses.multi_similarity_loss(outputs["embedding"], labels),
                updates["batch_stats"])
      (loss, batch_stats), grads = jax.value_and_grad(
          loss_fn, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), batch_stats, opt_state,
              loss)
    return step

  args = (params, batch_stats, opt_state, images, labels)
  fns, mem, losses_, programs = {}, {}, {}, set()
  for name, op in (("after (custom VJP)", None),
                   ("before (autodiff)", involution_autodiff)):
    # The model looks the op up when traced: swap it for the compile only.
    patch = (mock.patch.object(ops, "involution", op) if op
             else contextlib.nullcontext())
    with patch:
      compiled = jax.jit(make_step()).lower(*args).compile()
    programs.add(compiled.as_text())
    fns[name] = _jax_call(compiled, *args)
    mem[name] = _jax_peak_bytes(compiled)
    losses_[name] = float(compiled(*args)[-1])
  assert len(programs) == 2, "the op swap did not reach the compiled step"
  times = median_times(fns, repeats)
  after, before = list(fns)
  lines = [
      f"Train step, CompactNet {variant}, MS loss, batch {batch_size} "
      f"uint8 28x28x1, median of {repeats}:", "",
      "| op | step ms | temp + output MB | loss |", "|---|--:|--:|--:|"]
  for name in fns:
    lines.append(f"| {name} | {times[name] * 1e3:.1f} | "
                 f"{mem[name] / 1e6:.1f} | {losses_[name]:.6f} |")
  lines += ["", f"after/before: {times[after] / times[before]:.3f} (time), "
            f"{mem[after] / mem[before]:.3f} (memory)"]
  return "\n".join(lines)


FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 7, "Interleaved repetitions (medians).")
flags.DEFINE_string("shapes", "", "Comma-separated indices into SHAPES (0-2) "
                    "or BxHxWxCxGxK; default: all of SHAPES.")
flags.DEFINE_bool("quick", False, "Smoke run: 3 repeats, batch / 8.")
flags.DEFINE_integer("threads", len(os.sched_getaffinity(0)),
                     "torch.set_num_threads; default: the CPUs this process "
                     "may use, which XLA's thread pool also uses (so "
                     "`taskset -c 0` gives a one-thread match).")
flags.DEFINE_bool("train_step", False, "Time the compact net's training step "
                  "instead.")
flags.DEFINE_string("variant", "hybrid1", "CompactNet variant for "
                    "--train_step.")


def main(_):
  args = FLAGS
  repeats = 3 if args.quick else args.repeats

  print(machine(args.threads), "\n", flush=True)
  if args.train_step:
    batch = 64 if args.quick else 256
    print(bench_train_step(repeats, batch, args.variant))
    return
  all_results = []
  for shape in _parse_shapes(args.shapes):
    if args.quick:
      shape = (max(1, shape[0] // 8),) + tuple(shape[1:])
    before = _load()
    print(f"{shape} ... {before}", flush=True)
    results = bench_op(shape, repeats, args.threads)
    results["load"] = f"{before} before, {_load()} after"
    print(f"  {results['load']}", flush=True)
    all_results.append((shape, results))
  print("\n" + _op_tables(all_results, repeats, args.threads))


if __name__ == "__main__":
  app.run(main)

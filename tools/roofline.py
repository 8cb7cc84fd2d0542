r"""Accelerator projection (roofline) of the bench_train.py training steps.

  python tools/roofline.py                    # every case
  python tools/roofline.py --cases=hybrid1,vse

A PROJECTION, not a measurement: no accelerator was used. For each case of
tools/bench_train.py, XLA's cost analysis of the compiled step (the real
step, sampler included; `jax.jit(f).lower(...).compile().cost_analysis()`)
gives its flops and bytes accessed, at the config's batch and at twice it
(a fixed part, the optimiser's, and a per-example part); the backbones
(resnet50, vit_s16) at BACKBONE_BATCH and twice it, on a ready batch (the
photo benchmarks' streamed step). PUBLISHED holds others' measured
throughput for the same network, printed beside the bound it checks. The lower bound of
a step on a chip is max(flops / peak flop/s, bytes / memory bandwidth), from
the chips' published peaks (PEAKS). Caveats, all making the bound optimistic
or approximate:
  - the program analysed is XLA:CPU's: the flop count is the algorithm's,
    but bytes accessed follow CPU fusion decisions (a GPU/TPU compiler
    fuses differently);
  - float32 steps are set against the chip's non-tensor fp32 peak (no TF32),
    bfloat16 steps (config.compute_dtype="bfloat16", compiled and analysed
    separately) against the dense bf16 tensor peak;
  - XLA counts a while loop's body once: for the VSE step the GRU's
    (padded width - 1) further steps are added from the cost analysis of
    one GRU cell step's forward + backward; a GPU pays a launch per step;
  - peaks are never reached by small convolutions (32-96 channels) or a
    batch-128 GRU's sequential steps.

Dispatch: the latency of a trivial jitted call is measured here (host-side
dispatch, the part that steps_per_call amortises); a GPU step also pays one
kernel launch per fused op of the entry computation, counted from the CPU
program and assumed LAUNCH_US each (XLA's command buffers/CUDA graphs can
remove most of it). The per-chip batch at which this overhead falls under
10% of the bound step time is where it "stops mattering"; a data-parallel
global batch is that times the number of chips.
"""

import os
import re
import statistics
import time

from absl import app
import jax
import jax.numpy as jnp

import bench_train  # tools/, run as a script

# name: (dense bf16 tensor flop/s, fp32 non-tensor flop/s, memory B/s, source)
PEAKS = {
    "H100 SXM": (989e12, 67e12, 3.35e12,
                 "NVIDIA H100 datasheet: 989 TFLOP/s bf16 dense, 67 TFLOP/s "
                 "fp32, 3.35 TB/s HBM3"),
    "H200 SXM": (989e12, 67e12, 4.8e12,
                 "NVIDIA H200 datasheet: 989 TFLOP/s bf16 dense, 67 TFLOP/s "
                 "fp32, 4.8 TB/s HBM3e"),
    "A100 SXM 80GB": (312e12, 19.5e12, 2.039e12,
                      "NVIDIA A100 datasheet: 312 TFLOP/s bf16 dense, 19.5 "
                      "TFLOP/s fp32, 2,039 GB/s HBM2e"),
    "TPU v5e": (197e12, 197e12, 819e9,
                "Google Cloud TPU v5e docs: 197 TFLOP/s bf16, 819 GB/s HBM "
                "(fp32 matmuls run as multi-pass bf16 on the MXU: the bf16 "
                "peak is an upper bound)"),
}
LAUNCH_US = 4.0  # Assumed per-kernel launch cost on a GPU, microseconds.
OVERHEAD_SHARE = 0.10
# The backbones are projected at an accelerator's batch, not bench_train's
# two-core one (cost analysis needs a compile, not a run).
BACKBONE_BATCH = 256

# Published training throughput, measured by others (not by this tool), to
# hold the projections against: (case, chip, dtype) -> (images/s, source).
PUBLISHED = {
    ("resnet50", "A100 SXM 80GB", "bfloat16"): (
        2470, "NVIDIA DeepLearningExamples, PyTorch ResNet50 v1.5 README, "
        "1x A100 80GB, mixed precision (fp16), pytorch-21.03 NGC container"),
    ("resnet50", "A100 SXM 80GB", "float32"): (
        938, "the same table, TF32 (tensor cores; this tool's fp32 row uses "
        "the non-tensor fp32 peak)"),
}


def _analysis(compiled):
  cost = compiled.cost_analysis()
  if isinstance(cost, list):  # Older jax: one dict per program.
    cost = cost[0]
  return float(cost["flops"]), float(cost["bytes accessed"])


def _gru_step(config, batch_size, dtype):
  """(flops, bytes) of one GRU cell step, forward + backward, at the batch."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  cell = nn.GRUCell(config.model.embed_dim, dtype=jnp.dtype(dtype))
  carry = jnp.zeros((batch_size, config.model.embed_dim))
  x = jnp.zeros((batch_size, config.model.word_dim))
  params = cell.init(jax.random.key(0), carry, x)
  loss = lambda p, c, x: jnp.sum(cell.apply(p, c, x)[0].astype(jnp.float32))
  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  return _analysis(grad.lower(params, carry, x).compile())


def _cost(case, dtype, batch_size):
  c = bench_train.build_jax_case(case, batch_size, compute_dtype=dtype)
  # Photo benchmarks stream their batches: the ready-batch step is theirs.
  compiled, _ = bench_train.compile_step(
      c, ready=case in bench_train.BACKBONE_CASES)
  flops, nbytes = _analysis(compiled)
  if case == "vse":
    # XLA's cost analysis counts a while loop's body once: the GRU's scan
    # over the caption's padded width runs it CAPTION_WIDTH times.
    step_flops, step_bytes = _gru_step(c.config, c.config.batch_size, dtype)
    flops += (bench_train.CAPTION_WIDTH - 1) * step_flops
    nbytes += (bench_train.CAPTION_WIDTH - 1) * step_bytes
  return (c.config.batch_size, flops, nbytes, _launches(compiled.as_text()))


def _launches(hlo):
  """Ops of the entry computation that would each be a kernel (fusions,
  convolutions, dots, custom calls, ...), not bookkeeping."""
  entry = hlo[hlo.index("\nENTRY"):]
  entry = entry[:entry.index("\n}")]
  skip = ("parameter", "constant", "tuple", "get-tuple-element", "bitcast",
          "copy-start", "copy-done", "after-all")
  count = 0
  for line in entry.splitlines()[1:]:
    match = re.search(r"= [^ ]+ ([a-z\-]+)\(", line)
    if match and match.group(1) not in skip:
      count += 1
  return count


def dispatch_seconds(repeats=2000):
  f = jax.jit(lambda x: x + 1)
  x = jnp.zeros(())
  jax.block_until_ready(f(x))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(f(x))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def project(case, dispatch):
  lines = []
  for dtype in ("float32", "bfloat16"):
    checks = []
    b1, f1, m1, launches = _cost(
        case, dtype,
        BACKBONE_BATCH if case in bench_train.BACKBONE_CASES else None)
    b2, f2, m2, _ = _cost(case, dtype, 2 * b1)
    # Linear in the batch: fixed (optimiser, parameters) + per example.
    f_ex, m_ex = (f2 - f1) / (b2 - b1), (m2 - m1) / (b2 - b1)
    # Clamped: fusion differences between the two programs can make the
    # fitted fixed part slightly negative.
    f_fix, m_fix = max(0.0, f1 - b1 * f_ex), max(0.0, m1 - b1 * m_ex)
    lines += [
        f"#### {case}, {dtype}: batch {b1}: {f1 / 1e9:.2f} GFLOP, "
        f"{m1 / 1e9:.3f} GB accessed ({f1 / m1:.1f} flop/byte); per example "
        f"{f_ex / 1e6:.1f} MFLOP, {m_ex / 1e6:.2f} MB; fixed "
        f"{f_fix / 1e9:.3f} GFLOP, {m_fix / 1e6:.1f} MB; {launches} kernels",
        "", f"| chip | peak TFLOP/s used | compute ms | memory ms | bound | "
        f"lower-bound step ms | images/s bound | batch where overhead < "
        f"{OVERHEAD_SHARE:.0%} |", "|---|--:|--:|--:|---|--:|--:|--:|"]
    for chip, (bf16, fp32, bw, _) in PEAKS.items():
      peak = fp32 if dtype == "float32" else bf16
      # A TPU runs the step as one program: no per-kernel launches.
      launch = 0 if chip.startswith("TPU") else launches * LAUNCH_US * 1e-6
      overhead = dispatch + launch
      t_c, t_m = f1 / peak, m1 / bw
      t = max(t_c, t_m)
      per_ex = max(f_ex / peak, m_ex / bw)
      fixed = max(f_fix / peak, m_fix / bw)
      need = (overhead / OVERHEAD_SHARE - fixed) / per_ex
      lines.append(
          f"| {chip} | {peak / 1e12:.1f} | {t_c * 1e3:.3f} | {t_m * 1e3:.3f}"
          f" | {'compute' if t_c >= t_m else 'memory'} | {t * 1e3:.3f} | "
          f"{b1 / t:,.0f} | {max(1, need):,.0f} |")
      if (case, chip, dtype) in PUBLISHED:
        rate, source = PUBLISHED[case, chip, dtype]
        checks.append(f"- {chip}, {dtype}: bound {b1 / t:,.0f} images/s, "
                      f"published {rate:,} images/s ({source}): the "
                      f"published figure is {rate * t / b1:.0%} of the bound")
    lines += [""] + checks + [""] * bool(checks)
  return "\n".join(lines)


def main(argv):
  del argv  # --cases is bench_train's flag (the same cases).
  dispatch = dispatch_seconds()
  print(f"PROJECTION (no accelerator used). {bench_train.machine(1)}; "
        f"load {os.getloadavg()[0]:.2f}\n")
  print(f"Dispatch of a trivial jitted call here: {dispatch * 1e6:.0f} us "
        f"(median of 2000); assumed GPU launch cost {LAUNCH_US:.0f} us per "
        "kernel.\n")
  print("Peaks used:")
  for chip, (*_, source) in PEAKS.items():
    print(f"- {chip}: {source}")
  print(flush=True)
  for case in bench_train.FLAGS.cases:
    print(project(case, dispatch), flush=True)


if __name__ == "__main__":
  app.run(main)

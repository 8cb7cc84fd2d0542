r"""The per-call cost of the training step: where steps_per_call's gain comes from.

  PYTHONPATH=$PWD python tools/bench_percall.py [--case=hybrid1] \
      [--modes=default,keep_freed_memory] [--variants=n1,n1_undonated,...]
      [--steps=8] [--repeats=5]   (--repeats: bench_train.py's flag)

The real step of a bench_train.py case (MS loss, batch 256, sampling from
the on-device dataset), compiled as metricjax.train compiles it, in these
variants, which take turns within each repeat (medians):

  n1            one step per call, state donated (steps_per_call = 1)
  n1_undonated  the same, state not donated
  n1_constant   the same, the dataset closed over as a constant instead
                of passed as an argument
  n1_loop       --steps calls of n1 in a Python loop, timed together
  nN            --steps steps per call (an unrolled scan, steps_per_call = N)

Each mode is a fresh process: default (glibc's malloc as it comes),
keep_freed_memory (metricjax/host_memory.py applied before jax starts),
single_thread (XLA_FLAGS=--xla_cpu_multi_thread_eigen=false). Per variant:
ms per step, minor page faults per step and system CPU seconds per step
(getrusage around each call, all threads), and the process's peak RSS.
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

import benchmark  # tools/, run as a script
# Imports jax, which starts no backend until first used; defines --repeats.
import bench_train
from benchmark import load
from benchmark import machine

FLAGS = flags.FLAGS
MODES = ("default", "keep_freed_memory", "single_thread")
VARIANTS = ("n1", "n1_undonated", "n1_constant", "n1_loop", "nN")
flags.DEFINE_string("case", "hybrid1", "A bench_train.py image case.")
flags.DEFINE_list("modes", ["default", "keep_freed_memory"],
                  f"Processes, one per mode: {', '.join(MODES)}.")
flags.DEFINE_list("variants", list(VARIANTS), "Variants timed in each mode.")
flags.DEFINE_integer("steps", 8, "N of nN and of n1_loop.")
flags.DEFINE_string("only", "", "Internal: run one mode here, print JSON.")


def _carried(compiled, state):
  """bench_train.jax_runner of a step that takes the state alone."""
  import jax  # pylint: disable=g-import-not-at-top
  holder = [bench_train._copy(state)]  # pylint: disable=protected-access

  def run():
    holder[0], metrics = compiled(holder[0])
    jax.block_until_ready(metrics)
  return run


def _compile_variants(case, variants, steps):
  """{variant: (call, steps it runs)}; call() blocks, state carried."""
  import jax  # pylint: disable=g-import-not-at-top
  from metricjax import parallel  # pylint: disable=g-import-not-at-top
  from metricjax import step as step_lib  # pylint: disable=g-import-not-at-top
  from metricjax import xla_routing  # pylint: disable=g-import-not-at-top

  train_step = step_lib.make_train_step(case.sample, case.loss, case.tx)
  seed_key = jax.random.key(case.config.seed)
  routing = case.config.xla_cpu_routing
  replicated = parallel.replicated(case.mesh)
  out = {}
  if {"n1", "n1_loop"} & set(variants):
    compiled, data = bench_train.compile_step(case, steps=1)
    one = bench_train.jax_runner(compiled, case.state, data)
    out["n1"] = (one, 1)

    def loop():
      for _ in range(steps):
        one()
    out["n1_loop"] = (loop, steps)
  if "nN" in variants:
    compiled, data = bench_train.compile_step(case, steps=steps)
    out["nN"] = (bench_train.jax_runner(compiled, case.state, data), steps)
  one_step = step_lib.repeat_steps(train_step, 1, streamed=False)
  if "n1_undonated" in variants:
    compiled = xla_routing.jit(
        one_step, routing=routing, out_shardings=(replicated, replicated)
    ).lower(case.state, case.data, seed_key).compile()
    out["n1_undonated"] = (bench_train.jax_runner(
        compiled, case.state, (case.data, seed_key)), 1)
  if "n1_constant" in variants:
    data = case.data
    compiled = xla_routing.jit(
        lambda state: one_step(state, data, seed_key), routing=routing,
        donate_argnums=(0,), out_shardings=(replicated, replicated)
    ).lower(case.state).compile()
    out["n1_constant"] = (_carried(compiled, case.state), 1)
  return {v: out[v] for v in variants}


def run_mode(mode, case_name, variants, steps, repeats):
  """Times every variant in this process -> a JSON-able dict."""
  applied = None
  if mode == "keep_freed_memory":
    from metricjax import host_memory  # pylint: disable=g-import-not-at-top
    applied = host_memory.keep_freed_memory()
  case = bench_train.build_jax_case(case_name)
  t0 = time.perf_counter()
  fns = _compile_variants(case, variants, steps)
  compile_s = time.perf_counter() - t0
  for fn, _ in fns.values():  # Warm: first calls fault in fresh memory.
    fn()
    fn()
  samples = {v: [] for v in fns}
  load_before = load()
  names = list(fns)
  for r in range(repeats):
    for name in names[r % len(names):] + names[:r % len(names)]:
      fn, n = fns[name]
      before = resource.getrusage(resource.RUSAGE_SELF)
      start = time.perf_counter()
      fn()
      seconds = time.perf_counter() - start
      after = resource.getrusage(resource.RUSAGE_SELF)
      samples[name].append((seconds / n, (after.ru_minflt - before.ru_minflt)
                            / n, (after.ru_stime - before.ru_stime) / n,
                            (after.ru_utime - before.ru_utime) / n))
  median = lambda xs: statistics.median(xs)
  return dict(
      mode=mode, applied=applied, compile_s=compile_s,
      load=f"{load_before} -> {load()}", peak_rss_mb=benchmark.peak_rss_mb(),
      batch=case.config.batch_size,
      variants={name: dict(ms=1e3 * median([s[0] for s in rows]),
                           faults=median([s[1] for s in rows]),
                           sys_s=median([s[2] for s in rows]),
                           user_s=median([s[3] for s in rows]))
                for name, rows in samples.items()})


def main(_):
  if FLAGS.only:
    benchmark.print_json(run_mode(FLAGS.only, FLAGS.case, FLAGS.variants,
                                  FLAGS.steps, FLAGS.repeats))
    return
  print(machine(), "\n", flush=True)
  for mode in FLAGS.modes:
    if mode not in MODES:
      raise app.UsageError(f"--modes: {mode!r} is not one of {MODES}")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    if mode == "single_thread":
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                          + " --xla_cpu_multi_thread_eigen=false").strip()
    out = subprocess.run(
        [sys.executable, __file__, f"--only={mode}", f"--case={FLAGS.case}",
         f"--variants={','.join(FLAGS.variants)}", f"--steps={FLAGS.steps}",
         f"--repeats={FLAGS.repeats}"],
        capture_output=True, text=True, env=env)
    if out.returncode:
      raise RuntimeError(f"mode {mode} failed:\n{out.stderr[-3000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    base = r["variants"].get("n1", {}).get("ms")
    print(f"### {FLAGS.case}, mode {mode} (applied: {r['applied']}), batch "
          f"{r['batch']}, median of {FLAGS.repeats}, load {r['load']}, peak "
          f"RSS {r['peak_rss_mb']:.0f} MB, compile {r['compile_s']:.0f} s\n\n"
          "| variant | ms per step | x n1's images/s | minor faults per step "
          "| system s per step | user s per step |\n|---|--:|--:|--:|--:|--:|")
    for name, v in r["variants"].items():
      label = name.replace("N", str(FLAGS.steps))
      speed = f"{base / v['ms']:.2f}" if base else ""
      print(f"| {label} | {v['ms']:.1f} | {speed} | {v['faults']:,.0f} | "
            f"{v['sys_s']:.3f} | {v['user_s']:.3f} |", flush=True)
    print()


if __name__ == "__main__":
  app.run(main)

r"""Compile a config for TPUs and NVIDIA GPUs without them: memory, flops and
a lower bound on the step time, from the target's own compiler.

  python -m metricjax.aot --config=configs/compact_involution.py \
      --target=v5e:1,h100 [--config.batch_size=4096] [--json=FILE] \
      [--max_batch]

The training step compiled is the very program `metricjax.train` runs
(train.lower_steps over the step of metricjax/step.py, config.steps_per_call
steps a call, the state donated, sharded over all of the target's devices),
and the evaluation step the one `metricjax.evaluate` runs, from shapes alone
(tasks/shapes.py). Per target it reports, per device: argument, output,
aliased (donated) and temporary bytes and their peak; whether that fits the
memory a program may use (a GPU's: the 75% jax preallocates); flops and
bytes accessed per training step (the target compiler's cost analysis; on
GPU with cuDNN / cuBLAS calls counted from their shapes,
metricjax/hlo_costs.py); `bound_seconds` = max(flops / peak compute,
bytes / bandwidth), a lower bound on the step time, and the images/s it
allows. A config that does not fit is a result (fits: false, exit 0).
--max_batch finds the largest global batch that fits, from a few compiles
(docs/accelerators.md).
"""

import json
import math
import os
import re
import time

# jax's CUDA plugin registers on a machine without CUDA only when jax's
# platforms exclude cuda (it then skips its version check); this program
# computes on the CPU and compiles for the targets.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# libtpu takes a machine-wide lock meant for a real TPU; compiling needs
# none, and two compiles (or a test run beside one) must not exclude each
# other.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from metricjax import accelerators
from metricjax import checkpoint
from metricjax import cli
from metricjax import config_check
from metricjax import errors
from metricjax import hlo_costs
from metricjax import parallel
from metricjax import state as state_lib
from metricjax import step as step_lib
from metricjax import train as train_lib
from metricjax.errors import UserError
from metricjax.tasks import retrieval
from metricjax.tasks import shapes

FLAGS = flags.FLAGS


def _define_flags():
  config_flags.DEFINE_config_file(
      "config", None,
      "Experiment config file, e.g. configs/compact_involution.py.")
  flags.DEFINE_string(
      "target", "v5e:1,h100",
      f"Comma-separated targets: {', '.join(accelerators.TARGETS)}.")
  flags.DEFINE_string("json", None, "Also write the results to this file.")
  flags.DEFINE_bool("max_batch", False,
                    "Find the largest global batch that fits each target.")
  flags.mark_flags_as_required(["config"])


def memory(compiled) -> dict:
  """Per-device memory of a compiled program (XLA's analysis); peak is what
  must be resident at once: arguments, outputs not aliased to a donated
  argument, and temporaries."""
  m = compiled.memory_analysis()
  out = dict(argument_bytes=int(m.argument_size_in_bytes),
             output_bytes=int(m.output_size_in_bytes),
             alias_bytes=int(m.alias_size_in_bytes),
             temp_bytes=int(m.temp_size_in_bytes))
  out["peak_bytes"] = (out["argument_bytes"] + out["output_bytes"]
                       - out["alias_bytes"] + out["temp_bytes"])
  return out


def compile_train_step(config, mesh):
  """(compiled k-step call, task, k) of config's training on mesh."""
  tx = state_lib.create_optimizer(config)
  task = shapes.build(config, mesh, tx)
  replicated = parallel.replicated(mesh)
  state = checkpoint.abstract_like(
      jax.eval_shape(task.init, jax.random.key(config.seed)), replicated)
  seed_key = shapes.placed(jax.eval_shape(lambda: jax.random.key(0)),
                           replicated)
  train_step = step_lib.make_train_step(
      task.sample, task.loss, tx, skip_nonfinite=config.skip_nonfinite_steps)
  k = config.steps_per_call
  data = (task.data,) * k if task.stream else task.data
  # XLA:CPU routing options mean nothing to a TPU or GPU compiler.
  lowered = train_lib.lower_steps(
      train_step, state, data, seed_key, k, streamed=bool(task.stream),
      mesh=mesh, routing="jaxlib_default")
  return _compile(lowered), task, state, k


# Without a GPU, XLA cannot autotune, and its default Triton GEMM tiling
# fails on some shapes (ViT-S/16's [25216, 384] x [384, 384] projection in
# bfloat16: "Couldn't find output tile sizes"). Such a program is compiled
# again with GEMMs on cuBLAS, which a real GPU may also pick.
_TRITON_GEMM_FAILURE = "Couldn't find output tile sizes"
_NO_TRITON_GEMM = {"xla_gpu_enable_triton_gemm": False}


def _compile(lowered):
  # jax's persistent cache would store these executables but cannot load
  # an executable for devices it has no client of: none is written (the
  # minimum compile time is read at every write; whether the cache is on
  # at all, only once a process).
  key = "jax_persistent_cache_min_compile_time_secs"
  cached = getattr(jax.config, key)
  jax.config.update(key, float("inf"))
  try:
    return lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if _TRITON_GEMM_FAILURE not in str(e):
      raise
    return lowered.compile(compiler_options=_NO_TRITON_GEMM)
  finally:
    jax.config.update(key, cached)


def compile_embed_step(config, mesh, task, state):
  """The evaluation step: config.eval.batch_size images (VSE: image
  features and captions) -> embeddings."""
  batch = config.eval.batch_size
  parallel.check_divisible(batch, mesh, "config.eval.batch_size")
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  rows = lambda shape, dtype: jax.ShapeDtypeStruct(
      (batch, *shape), dtype, sharding=parallel.batch_sharding(mesh))
  if config.task == "vse":
    data = task.data
    inputs = (rows(data.features.shape[1:], data.features.dtype),
              rows(data.ids.shape[2:], np.int32), rows((), np.int32))
    model = task.model
    embed = lambda v, f, i, n: (
        model.apply({"params": v["params"]}, f, method="encode_image"),
        model.apply({"params": v["params"]}, i, n, method="encode_text"))
  else:
    inputs = (rows(task.meta.image_shape, np.uint8),)
    embed = lambda v, x: task.model.apply(v, x, train=False)
  return _compile(jax.jit(embed).lower(variables, *inputs))


def compile_config(config, target: accelerators.Target) -> dict:
  """The report of config's training and evaluation steps on target."""
  mesh = parallel.create_mesh(accelerators.devices(target))
  start = time.perf_counter()
  try:
    compiled, task, state, k = compile_train_step(config, mesh)
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" in str(e):
      return _out_of_memory(config, target, mesh, e,
                            time.perf_counter() - start)
    if "ptxas" in str(e).lower():
      raise UserError(
          f"Compiling for {target.name} failed in ptxas: "
          f"{errors.one_line(e, 600)}. `pip install -e '.[aot]'` installs "
          "a ptxas that matches jax's CUDA plugin.") from e
    raise
  seconds = time.perf_counter() - start
  costs = hlo_costs.program_costs(compiled, target.platform)
  flops, nbytes = costs["flops"] / k, costs["bytes_accessed"] / k
  peak = target.peak_flops[config.compute_dtype]
  bound = max(flops / peak, nbytes / target.bandwidth)
  report = dict(
      target=target.name, devices=mesh.devices.size,
      device_kind=mesh.devices.flat[0].device_kind,
      global_batch=task.examples_per_step, steps_per_call=k,
      compute_dtype=config.compute_dtype, **memory(compiled),
      memory_bytes=target.memory_bytes, usable_bytes=target.usable_bytes)
  report["fits"] = report["peak_bytes"] <= target.usable_bytes
  report.update(
      flops=flops, bytes_accessed=nbytes, flops_source=costs["flops_source"],
      bound_seconds=bound, bound_by="compute" if flops / peak >= nbytes /
      target.bandwidth else "memory bandwidth",
      images_per_second=task.examples_per_step / bound,
      compile_seconds=round(seconds, 2))
  if "library_flops" in costs:
    report["library_flops"] = costs["library_flops"] / k
  embed = compile_embed_step(config, mesh, task, state)
  report["embed"] = dict(batch=config.eval.batch_size, **memory(embed))
  report["embed"]["fits"] = (report["embed"]["peak_bytes"]
                             <= target.usable_bytes)
  return report


# The TPU compiler refuses a program that cannot fit (where the GPU one
# rematerialises and reports its peak), with the memory it needed.
_NEEDED = re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT])\)")


def _out_of_memory(config, target, mesh, error, seconds) -> dict:
  """The report of a step the target's compiler refused for its memory."""
  needed = _NEEDED.search(str(error))
  temp = (int(float(needed.group(1)) * 2**(10 * "KMGT".index(
      needed.group(2)) + 10)) if needed else None)
  return dict(
      target=target.name, devices=mesh.devices.size,
      device_kind=mesh.devices.flat[0].device_kind,
      global_batch=retrieval.images_per_step(config),
      steps_per_call=config.steps_per_call,
      compute_dtype=config.compute_dtype, argument_bytes=None,
      output_bytes=None, alias_bytes=None, temp_bytes=temp, peak_bytes=temp,
      memory_bytes=target.memory_bytes, usable_bytes=target.usable_bytes,
      fits=False, compiler_error=errors.one_line(error, 400), flops=None,
      bytes_accessed=None, bound_seconds=None, images_per_second=None,
      compile_seconds=round(seconds, 2), embed=dict(fits=False))


def with_batch(config, multiple: int):
  """config with `multiple` units of its batch: P classes x (K * multiple)
  for class-balanced batches (P stays a number of classes the data has),
  batch_size * multiple otherwise."""
  config = ml_collections.ConfigDict(config.to_dict())
  if config.sampler == "balanced":
    classes = config.batch_size // config.samples_per_class
    config.samples_per_class = config.samples_per_class * multiple
    config.batch_size = classes * config.samples_per_class
  else:
    config.batch_size = config.batch_size * multiple
  return config


def max_batch(config, target: accelerators.Target, *, limit: int = 1 << 16,
              known: dict | None = None) -> dict:
  """The largest global batch, a multiple m of config's batch unit (below),
  that fits target, at most `limit`. Peak memory grows about linearly with
  the batch: two compiles (m = 1, 2) predict the edge, compiles on either
  side of it confirm it, and bisection (or doubling) settles a miss.
  known: compile_config's report of config itself when it was already
  compiled for target (a batch the devices divide): not compiled again."""
  unit = config.batch_size * target.num_devices // math.gcd(
      config.batch_size, target.num_devices)
  scale = unit // config.batch_size  # Config batches per unit.
  peaks, compiles = {}, 0
  if known is not None and scale == 1:
    peaks[1] = (known["fits"] and known["embed"]["fits"], known["peak_bytes"])

  def fits(m: int) -> bool:
    nonlocal compiles
    if m not in peaks:
      compiles += 1
      report = compile_config(with_batch(config, m * scale), target)
      peaks[m] = (report["fits"] and report["embed"]["fits"],
                  report["peak_bytes"])
      peak = report["peak_bytes"]
      print(f"  {target.name}: global batch {report['global_batch']}: peak "
            f"{peak / 2**30 if peak else float('nan'):.2f} GiB per device, "
            f"{'fits' if peaks[m][0] else 'does not fit'}", flush=True)
    return peaks[m][0]

  top = max(1, limit // unit)
  if not fits(1):
    return dict(target=target.name, max_global_batch=0, compiles=compiles,
                reached_limit=False)
  low, high = 1, None  # fits(low); not fits(high), when known.
  if top >= 2 and fits(2):
    low = 2
    per_unit = peaks[2][1] - peaks[1][1] if peaks[1][1] else 0
    guess = (top if per_unit <= 0 else
             2 + int((target.usable_bytes - peaks[2][1]) // per_unit))
    guess = max(2, min(guess, top))
    if fits(guess):
      low = guess
      if guess < top and not fits(guess + 1):
        high = guess + 1
    else:
      high = guess
  elif top >= 2:
    high = 2
  while high is None and low < top:  # The guess was short: double.
    nxt = min(low * 2, top)
    if fits(nxt):
      low = nxt
    else:
      high = nxt
  while high is not None and high - low > 1:
    mid = (low + high) // 2
    low, high = (mid, high) if fits(mid) else (low, mid)
  best = with_batch(config, low * scale)
  return dict(target=target.name,
              max_global_batch=retrieval.images_per_step(best),
              reached_limit=low == top, compiles=compiles)


def format_report(r: dict) -> str:
  gib = lambda b: f"{b / 2**30:.2f} GiB"
  if r.get("compiler_error"):
    needs = (f"needs {gib(r['temp_bytes'])} of temporaries, "
             if r["temp_bytes"] else "")
    return (f"{r['target']} ({r['devices']} x {r['device_kind']}), global "
            f"batch {r['global_batch']}, {r['compute_dtype']}: DOES NOT FIT: "
            f"{needs}of {gib(r['usable_bytes'])} (the compiler refused it: "
            f"{r['compiler_error']})")
  return (
      f"{r['target']} ({r['devices']} x {r['device_kind']}), global batch "
      f"{r['global_batch']}, {r['compute_dtype']}:\n"
      f"  per device: arguments {gib(r['argument_bytes'])}, temporaries "
      f"{gib(r['temp_bytes'])}, peak {gib(r['peak_bytes'])} of "
      f"{gib(r['usable_bytes'])} usable ({gib(r['memory_bytes'])} on the "
      f"device): {'fits' if r['fits'] else 'DOES NOT FIT'}\n"
      f"  per step and device: {r['flops'] / 1e12:.3f} TFLOP, "
      f"{r['bytes_accessed'] / 1e9:.2f} GB accessed ({r['flops_source']})\n"
      f"  lower bound on the step time: {r['bound_seconds'] * 1e3:.3f} ms "
      f"({r['bound_by']}-bound) = at most {r['images_per_second']:,.0f} "
      f"images/s\n"
      f"  evaluation step (batch {r['embed']['batch']}): peak "
      f"{gib(r['embed']['peak_bytes'])} per device\n"
      f"  compiled in {r['compile_seconds']:.1f} s")


@errors.exit_on_user_error
def main(argv):
  if len(argv) > 1:
    raise UserError(f"Unexpected arguments: {' '.join(argv[1:])}.")
  cli.quiet_logging()
  config = FLAGS.config
  config_check.validate(config)
  results = []
  for target in accelerators.parse(FLAGS.target):
    report = compile_config(config, target)
    print(format_report(report), flush=True)
    if FLAGS.max_batch:
      found = max_batch(config, target)
      print(f"  largest global batch that fits: {found['max_global_batch']} "
            f"({found['compiles']} compiles)", flush=True)
      report.update(max_global_batch=found["max_global_batch"],
                    max_batch_compiles=found["compiles"])
    results.append(report)
  if FLAGS.json:
    from metricjax import files  # pylint: disable=g-import-not-at-top
    files.write_text(FLAGS.json, json.dumps(results, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=errors.parse_flags_or_exit)

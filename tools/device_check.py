r"""Real step times on one GPU beside their projections (tools/device_check.sh).

  python tools/device_check.py [--dry_run] [--out=FILE.json]

On the accelerator at hand (one NVIDIA H100 or H200), with synthetic data of
the right shapes (no dataset travels), times the training step that
`metricjax.train` runs for

  hybrid1 b256     configs/compact_involution.py (float32), batch 256
  hybrid1 b4096    the same, 8 classes x 512 images
  resnet50 b256    configs/dml_benchmark.py:backbone=resnet50, 224 px, bf16
  vit_s16 b256     configs/dml_benchmark.py:backbone=vit_s16, 224 px, bf16

and prints each beside its lower bound: the flops and bytes of the program
compiled there (metricjax/hlo_costs.py) over the device's datasheet peak
(metricjax/accelerators.py), and beside the deviceless projection committed
in tools/results/aot_gpu.json where it has the row. Then the photo
pipeline's training images/s on this host's cores (generated JPEGs, 224 px
views, P x K batches). --dry_run runs the same code on the CPU at toy sizes
(32 px, batches of 16, 2 steps): it checks the script, its figures mean
nothing.
"""

import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import numpy as np
from absl import app
from absl import flags

from metricjax import accelerators
from metricjax import aot
from metricjax import data as data_lib
from metricjax import hlo_costs
from metricjax import parallel
from metricjax.config_utils import load_config
from metricjax.data import photo_pipeline
from metricjax.data.photos import photo_folder

import benchmark  # tools/benchmark.py

flags.DEFINE_bool("dry_run", False, "Toy sizes on the CPU: checks the script.")
flags.DEFINE_integer("steps", 20, "Timed steps per workload.")
flags.DEFINE_string("out", None, "Also write the results (JSON) here.")
flags.DEFINE_string("only", "", "Comma-separated workload names (default all).")
FLAGS = flags.FLAGS

TABLE = os.path.join(os.path.dirname(__file__), "results", "aot_gpu.json")
# name -> (config spec, overrides, batch multiple, aot_table.json row).
WORKLOADS = {
    "hybrid1 b256": ("configs/compact_involution.py", {}, 1,
                     "hybrid1|float32|h100"),
    "hybrid1 b4096": ("configs/compact_involution.py", {}, 16, None),
    "resnet50 b256": ("configs/dml_benchmark.py:backbone=resnet50",
                      dict(compute_dtype="bfloat16", batch_size=256), 1,
                      "resnet50|bfloat16|h100"),
    "vit_s16 b256": ("configs/dml_benchmark.py:backbone=vit_s16",
                     dict(compute_dtype="bfloat16", batch_size=256), 1,
                     "vit_s16|bfloat16|h100"),
}


def _target():
  kind = jax.devices()[0].device_kind
  if "H200" in kind:
    return accelerators.get("h200")
  return accelerators.get("h100")  # The dry run's figures too.


def _config(spec, overrides, multiple):
  config = load_config(spec)
  config.update(overrides)
  if FLAGS.dry_run:
    config.update(batch_size=16, samples_per_class=4, image_size=32)
  return aot.with_batch(config, multiple if not FLAGS.dry_run else 1)


def _concrete(abstract, num_classes: int, rng: np.random.Generator):
  """Arrays of the abstract data's shapes: random images, labels cycling
  through the classes, the class index that goes with them."""
  def fill(x):
    if x.dtype == np.uint8:
      return rng.integers(0, 256, x.shape, np.uint8)
    return np.zeros(x.shape, x.dtype)

  host = jax.tree.map(fill, abstract)
  if isinstance(host, dict):  # A streamed batch.
    host["labels"] = np.arange(len(host["labels"]), dtype=np.int32) % num_classes
  else:
    labels = np.arange(len(host.labels), dtype=np.int32) % num_classes
    host = host.replace(labels=labels, class_index=data_lib.ClassIndex.from_labels(
        labels, num_classes))
  shardings = jax.tree.map(lambda x: x.sharding, abstract)
  return jax.device_put(host, shardings)


def time_workload(name: str) -> dict:
  spec, overrides, multiple, row = WORKLOADS[name]
  config = _config(spec, overrides, multiple)
  mesh = parallel.create_mesh(jax.devices()[:1])
  start = time.perf_counter()
  compiled, task, abstract_state, k = aot.compile_train_step(config, mesh)
  compile_s = time.perf_counter() - start
  state = jax.jit(task.init, out_shardings=parallel.replicated(mesh))(
      jax.random.key(0))
  data = _concrete(task.data, task.meta.num_classes, np.random.default_rng(0))
  data = (data,) * k if task.stream else data
  seed_key = jax.device_put(jax.random.key(0), parallel.replicated(mesh))
  times = []
  for i in range(2 + (2 if FLAGS.dry_run else FLAGS.steps)):
    t = time.perf_counter()
    state, metrics = compiled(state, data, seed_key)
    jax.block_until_ready((state, metrics))
    if i >= 2:  # Two warm-up calls.
      times.append((time.perf_counter() - t) / k)
  del abstract_state
  step = statistics.median(times)
  target = _target()
  costs = hlo_costs.program_costs(compiled, jax.devices()[0].platform)
  flops, nbytes = costs["flops"] / k, costs["bytes_accessed"] / k
  bound = max(flops / target.peak_flops[config.compute_dtype],
              nbytes / target.bandwidth)
  out = dict(workload=name, global_batch=task.examples_per_step,
             compute_dtype=config.compute_dtype, step_ms=step * 1e3,
             images_per_second=task.examples_per_step / step,
             flops=flops, bytes_accessed=nbytes, bound_ms=bound * 1e3,
             measured_over_bound=step / bound, compile_seconds=compile_s,
             loss=float(np.ravel(metrics["loss"])[-1]))
  table = {}
  if os.path.exists(TABLE):
    with open(TABLE) as f:
      table = json.load(f)
  if row in table and table[row]["global_batch"] == out["global_batch"]:
    out["aot_bound_ms"] = table[row]["bound_seconds"] * 1e3
    out["measured_over_aot_bound"] = out["step_ms"] / out["aot_bound_ms"]
  return out


def photo_pipeline_rate() -> dict:
  """Training views per second of the host pipeline on this machine."""
  import bench_images  # pylint: disable=g-import-not-at-top
  n, size, batch = (64, 32, 16) if FLAGS.dry_run else (1024, 224, 256)
  folder = os.path.join(tempfile.mkdtemp(prefix="device_check-"), "photos")
  bench_images.generate_folder(folder, n, 16)
  ds = photo_folder(folder)
  sampler = data_lib.HostSampler.from_labels(
      "balanced", ds.labels, ds.num_classes, batch_size=batch,
      samples_per_class=4)
  steps = 3 if FLAGS.dry_run else 12
  threads = len(os.sched_getaffinity(0))
  batches = iter(photo_pipeline.train_batches(
      ds, sampler, photo_pipeline.View(size=size, train=True), seed=0,
      start_step=0, total_steps=steps + 2, batch_size=batch,
      num_threads=threads, prefetch=2 * batch))
  for _ in range(2):  # Start-up is not the rate.
    next(batches)
  t = time.perf_counter()
  count = sum(len(b["labels"]) for b in batches)
  return dict(workload="photo pipeline", threads=threads, view_px=size,
              images_per_second=count / (time.perf_counter() - t))


def main(argv):
  del argv
  device = jax.devices()[0]
  if device.platform == "cpu" and not FLAGS.dry_run:
    sys.exit("No accelerator here: run with --dry_run to check the script "
             "on the CPU.")
  print(f"device: {device.device_kind} ({device.platform}); host: "
        f"{benchmark.machine()}", flush=True)
  names = [n for n in FLAGS.only.split(",") if n] or list(WORKLOADS)
  results = []
  for name in names:
    r = time_workload(name)
    results.append(r)
    aot_part = (f", deviceless bound {r['aot_bound_ms']:.3f} ms (x"
                f"{r['measured_over_aot_bound']:.2f})"
                if "aot_bound_ms" in r else "")
    print(f"{name} ({r['compute_dtype']}, batch {r['global_batch']}): "
          f"{r['step_ms']:.3f} ms/step = {r['images_per_second']:,.0f} "
          f"images/s; bound {r['bound_ms']:.3f} ms, measured/bound "
          f"{r['measured_over_bound']:.2f}{aot_part}; compiled in "
          f"{r['compile_seconds']:.1f} s", flush=True)
  photos = photo_pipeline_rate()
  results.append(photos)
  print(f"photo pipeline ({photos['threads']} threads, {photos['view_px']} px "
        f"views): {photos['images_per_second']:,.0f} images/s", flush=True)
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(dict(device=device.device_kind, host=benchmark.machine(),
                     dry_run=FLAGS.dry_run, results=results), f, indent=1)


if __name__ == "__main__":
  app.run(main)

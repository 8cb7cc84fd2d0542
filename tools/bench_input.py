r"""Input pipeline benchmark: the on-device path against the streaming path.

  python tools/bench_input.py [--packed=DIR] [--rounds=7 --steps=10]
  python tools/bench_input.py --big=400000 --big_steps=200

For CIFAR-10 and paper 1's compact model (configs/compact_involution.py,
batch 256 = 8 classes x 32, augmentation on), in one process:
  - input only: batches/s of drawing a batch (device: the jitted sampler,
    gather and augmentation; stream: grain reading this process's rows from
    a packed ArrayRecord file and putting them on the devices, plus the same
    augmentation);
  - training: images/s of the whole training step fed by each path.
Rounds alternate the two paths (K steps each) so load hits both alike; the
table gives medians and the stream/device ratio.

--big=N,M,... packs N generated 32x32x3 images (N x 3 KB), trains
--big_steps on them with device_budget_mb a quarter of their size (so
placement "auto" streams), each size in its own process, and reports peak
RSS and the compiled step's device memory: flat in N when memory is bounded.
"""

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import jax

from metricjax import data as data_lib
from metricjax import parallel
from metricjax import state as state_lib
from metricjax import step as step_lib
from metricjax import train as train_lib
from metricjax.config_utils import load_config
from metricjax.data import load_dataset
from metricjax.data import packed
from metricjax.tasks import retrieval

flags.DEFINE_string("packed", None, "Directory with cifar10-train.array_record "
                    "(default: packed into a temporary directory).")
flags.DEFINE_integer("rounds", 7, "Alternating rounds per measurement.")
flags.DEFINE_integer("steps", 10, "Steps per path per round.")
flags.DEFINE_list("big", [], "Sizes of generated large sets to train on.")
flags.DEFINE_integer("big_steps", 200, "Training steps on the large set.")
FLAGS = flags.FLAGS
CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "configs", "compact_involution.py")


def _config(dataset, placement):
  config = load_config(f"{CONFIG}:dataset=cifar10")
  config.dataset = dataset
  config.data.placement = placement
  config.total_steps = 10**6
  return config


def _pipeline(dataset, placement, mesh):
  """(step_fn, state, batches, task) ready to run."""
  config = _config(dataset, placement)
  tx = state_lib.create_optimizer(config)
  task = retrieval.build(config, mesh, tx)
  replicated = parallel.replicated(mesh)
  state = jax.jit(task.init, out_shardings=replicated)(jax.random.key(0))
  step = step_lib.make_train_step(task.sample, task.loss, tx)
  seed_key = jax.random.key(0)
  compiled = jax.jit(step, donate_argnums=(0,),
                     out_shardings=(replicated, replicated)
                     ).lower(state, task.data, seed_key).compile()
  step_fn = lambda state, data: compiled(state, data, seed_key)
  batches = (task.stream(0) if task.stream else None)
  return config, step_fn, state, batches, task


def _interleaved(runs: dict, rounds: int, steps: int) -> dict:
  """{name: [per-round rate]}: runs[name]() runs `steps` steps, in turn."""
  rates = {name: [] for name in runs}
  for _ in range(rounds):
    for name, run in runs.items():
      start = time.perf_counter()
      run(steps)
      rates[name].append(steps / (time.perf_counter() - start))
  return rates


def bench_cifar():
  mesh = parallel.create_mesh()
  packed_dir = FLAGS.packed
  if packed_dir is None:
    packed_dir = tempfile.mkdtemp()
    ds = load_dataset("cifar10", "train")
    packed.write_packed(packed.packed_path(packed_dir, "cifar10", "train"),
                        [(ds.images, ds.labels)], name="cifar10",
                        split="train", class_names=ds.class_names,
                        source=ds.source)
  pipes = {"device": _pipeline("cifar10", "device", mesh),
           "stream": _pipeline(f"packed:{packed_dir}", "stream", mesh)}
  batch = pipes["device"][0].batch_size

  # Input only: the device path's sample alone, jitted as in the step.
  seed_key = jax.random.key(0)
  task = pipes["device"][4]
  sample = jax.jit(lambda step: task.sample(data_lib.step_key(seed_key, step),
                                            task.data))
  stream_task, stream_batches = pipes["stream"][4], pipes["stream"][3]
  augment = jax.jit(lambda step, b: stream_task.sample(
      data_lib.step_key(seed_key, step), b))
  counter = iter(range(10**9))

  def input_device(k):
    for _ in range(k):
      jax.block_until_ready(sample(next(counter)))

  def input_stream(k):
    for _ in range(k):
      jax.block_until_ready(augment(next(counter), next(stream_batches)))

  input_device(2), input_stream(2)
  inputs = _interleaved({"device": input_device, "stream": input_stream},
                        FLAGS.rounds, FLAGS.steps)

  states = {name: p[2] for name, p in pipes.items()}

  def trainer(name):
    _, step_fn, _, batches, task = pipes[name]
    def run(k):
      for _ in range(k):
        data = next(batches) if batches is not None else task.data
        states[name], metrics = step_fn(states[name], data)
      jax.block_until_ready(metrics)
    return run

  runs = {name: trainer(name) for name in pipes}
  for run in runs.values():
    run(2)
  training = _interleaved(runs, FLAGS.rounds, FLAGS.steps)

  load = os.getloadavg()
  print(f"\nCIFAR-10, compact hybrid1, batch {batch}, {jax.device_count()} "
        f"device(s), load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
  print("| measure | device path images/s | stream path images/s | stream / device |")
  print("|---|---|---|---|")
  for label, rates in (("input only", inputs), ("training step", training)):
    d, s = (statistics.median(rates[k]) * batch for k in ("device", "stream"))
    print(f"| {label} | {d:,.0f} | {s:,.0f} | {s / d:.2f}x |")


def bench_big(n: int):
  workdir = tempfile.mkdtemp()
  data_dir = os.path.join(workdir, "data")
  subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__),
                                               "pack_arrayrecord.py"),
                  f"--synthetic={n}", f"--out={data_dir}"], check=True,
                 stdout=subprocess.DEVNULL)
  ds = load_dataset(f"packed:{data_dir}", "train")
  config = _config(f"packed:{data_dir}", "auto")
  config.data.device_budget_mb = ds.nbytes / 4 / 2**20
  config.total_steps = FLAGS.big_steps
  config.log_every = config.checkpoint_every = FLAGS.big_steps
  config.augment = False
  start = time.perf_counter()
  train_lib.train(config, os.path.join(workdir, "run"))
  seconds = time.perf_counter() - start
  with open(os.path.join(workdir, "run", "metrics.jsonl")) as f:
    step_bytes = json.loads(f.readlines()[-1])["step_total_bytes"]
  peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  shutil.rmtree(workdir)
  print(f"| {n:,} | {ds.nbytes / 2**20:,.0f} | "
        f"{config.data.device_budget_mb:,.0f} | "
        f"{retrieval.placement(config, ds)} | {FLAGS.big_steps} | "
        f"{FLAGS.big_steps * config.batch_size / seconds:,.0f} | "
        f"{peak_rss / 2**20:,.0f} | {step_bytes / 2**20:,.1f} | "
        f"{os.getloadavg()[0]:.2f} |", flush=True)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if FLAGS.big and len(FLAGS.big) > 1:
    print("| images | packed MiB | device budget MiB | placement | steps | "
          "images/s (incl. compile) | peak RSS MiB | step device MiB | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in FLAGS.big:  # A process each: peak RSS is per process.
      subprocess.run([sys.executable, __file__, f"--big={n}",
                      f"--big_steps={FLAGS.big_steps}"], check=True)
  elif FLAGS.big:
    bench_big(int(FLAGS.big[0]))
  else:
    bench_cifar()


if __name__ == "__main__":
  app.run(main)

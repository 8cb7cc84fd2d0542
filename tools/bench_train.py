r"""Training-step throughput: metricjax against PyTorch, same machine, same run.

  PYTHONPATH=$PWD python tools/bench_train.py        # every case
  PYTHONPATH=$PWD python tools/bench_train.py --cases=hybrid1 --repeats=9
  PYTHONPATH=$PWD python tools/bench_train.py --cases=hybrid1 \
      --steps_per_call=1,8 [--xla_cpu_routing=both]
  PYTHONPATH=$PWD python tools/bench_train.py --quick  # smoke run
  (per-layer forward + backward: tools/bench_layers.py)

Cases (the batch is in memory on both sides):
  hybrid1, conv_only, involution_only
      configs/compact_involution.py (MS loss, batch 256 = 8 classes x 32,
      28x28x1 uint8), built with the library's own pieces: retrieval.make_loss,
      retrieval.make_sample, state.create_optimizer, step.make_train_step,
      compiled by metricjax.train.compile_steps (the CLI's own path: donated
      state, config.xla_cpu_routing).
      PyTorch: tools/torch_reference.CompactNet, PML's MultiSimilarityLoss
      (alpha 2, beta 50, base 0.5) on MultiSimilarityMiner (epsilon 0.1)
      pairs, torch.optim.AdamW (lr 3e-3, weight decay 1e-4) with the same
      warm-up + cosine schedule.
  vse
      configs/fne_vse.py (FNE features of VGG16, 12,416 int8 values; batch
      128; joint dim 2048; GRU caption encoder; VSE sum loss; AdamW without
      decay after global-norm clipping at 2). PyTorch: VSE++'s encoders and
      ContrastiveLoss (torch_reference.VSEModel), packed sequences, the same
      clipping and optimiser.
  resnet50, vit_s16
      configs/dml_benchmark.py:backbone=NAME (models.EmbeddingNet: the
      trunk, random weights, batch norm frozen; avg + max pooling for the
      ResNet, the CLS token for the ViT; 512-d head; MS loss, AdamW at 1e-3)
      on 224x224x3 uint8 images, batch BACKBONE_BATCH (= 8 classes x 4).
      PyTorch: torch_reference.EmbeddingNet (torchvision's resnet50 /
      timm's vit_small_patch16_224, batch norm in eval mode with its affine
      parameters untrained), the same loss, miner and optimiser as above.
      Photo benchmarks stream their batches: the ready batch is their real
      path.

metricjax is timed on the real step (sampling its batch from the on-device
dataset) and on a ready batch (the streamed path); PyTorch eager with
--threads threads and with one, and under torch.compile (inductor). They take
turns within each repeat (tools/benchmark.py); tables give medians and the
load average before and after. The split (input, forward, backward,
optimiser) times separately compiled parts; backward = fwd+bwd - forward.
"""

import functools
import os
import time
import types

from absl import app
from absl import flags
import jax
import numpy as np
import optax

import benchmark  # tools/, run as a script
from benchmark import load
from benchmark import machine
from benchmark import median_times

from metricjax import host_memory
from metricjax import losses
from metricjax import models
from metricjax import parallel
from metricjax import state as state_lib
from metricjax import step as step_lib
from metricjax import train as train_lib
from metricjax import xla_routing
from metricjax.config_utils import load_config
from metricjax.data import ClassIndex
from metricjax.tasks import retrieval
from metricjax.tasks import vse
from metricjax.text import Vocabulary

IMAGE_CASES = ("hybrid1", "conv_only", "involution_only")
# configs/dml_benchmark.py's pretrained trunks at 224 px (random weights).
BACKBONE_CASES = ("resnet50", "vit_s16")
# Small enough for two cores (the Reality Check's batch: 8 classes x 4).
BACKBONE_BATCH = 32
CASES = IMAGE_CASES + ("vse",) + BACKBONE_CASES
# VGG16's Full-Network Embedding: 13 conv layers (4,224 channels) + fc6 + fc7.
FNE_DIM = 4224 + 4096 + 4096
# Flickr8k-like captions: about 12 words on average; the training split's
# ids are padded to its longest caption (Flickr8k's is near 40 words).
VOCAB_SIZE = 2600
CAPTION_WIDTH = 40
CAPTION_LENGTHS = (6, 18)


def build_jax_case(case, batch_size=None, seed=0, compute_dtype=None):
  """The case's metricjax pieces, as metricjax.train assembles them.

  -> namespace(config, tx, state, loss, sample, data, batch): data is the
  device-resident dataset the real step samples from, batch one sampled
  batch (the ready batch of the streamed path).
  """
  rng = np.random.default_rng(seed)
  mesh = parallel.create_mesh()
  if case in IMAGE_CASES + BACKBONE_CASES:
    compact = case in IMAGE_CASES
    config = load_config(f"configs/compact_involution.py:variant={case}"
                         if compact else
                         f"configs/dml_benchmark.py:backbone={case}")
    config.compute_dtype = compute_dtype or config.compute_dtype
    config.batch_size = batch_size or (
        config.batch_size if compact else BACKBONE_BATCH)
    # Compact: 32 classes, enough for batches of up to 1024 at 32 per
    # class. Backbones: twice the batch's classes, 8 images each (224 px
    # images are 150 KB).
    k = config.samples_per_class
    num_classes = 32 if compact else 2 * config.batch_size // k
    shape = (28, 28, 1) if compact else (config.image_size,) * 2 + (3,)
    labels = np.repeat(np.arange(num_classes, dtype=np.int32),
                       300 if compact else 2 * k)
    images = rng.integers(0, 256, (labels.size, *shape), dtype=np.uint8)
    meta = retrieval.Meta(name="synthetic", source="memory", split="train",
                          size=labels.size, num_classes=num_classes,
                          class_names=tuple(map(str, range(num_classes))),
                          image_shape=shape)
    tx = state_lib.create_optimizer(config)
    model, init = retrieval.make_model_and_init(config, meta, tx)
    loss_def = losses.get_loss(config.loss.name)
    loss = retrieval.make_loss(config, model, loss_def)
    sample = retrieval.make_sample(config, loss_def, mesh, num_classes)
    data = parallel.replicate(retrieval.DeviceData(
        images=images, labels=labels,
        class_index=ClassIndex.from_labels(labels, num_classes)), mesh)
  elif case == "vse":
    config = load_config("configs/fne_vse.py")
    config.compute_dtype = compute_dtype or config.compute_dtype
    if batch_size:
      config.batch_size = batch_size
    n, per_image = 1000, 5
    features = rng.integers(-1, 2, (n, FNE_DIM), dtype=np.int8)
    lengths = rng.integers(CAPTION_LENGTHS[0], CAPTION_LENGTHS[1] + 1,
                           (n, per_image), dtype=np.int32)
    ids = rng.integers(1, VOCAB_SIZE, (n, per_image, CAPTION_WIDTH),
                       dtype=np.int32)
    ids = np.where(np.arange(CAPTION_WIDTH) < lengths[..., None], ids, 0)
    meta = vse.Meta(
        dataset=dict(name="synthetic", source="memory", split="train",
                     size=n, captions_per_image=per_image),
        backbone={}, features_kind="fne", features_dim=FNE_DIM,
        vocabulary=Vocabulary(("<pad>", "<unk>") + tuple(
            f"w{i}" for i in range(VOCAB_SIZE - 2))), fne_stats=None)
    tx = state_lib.create_optimizer(config)
    model, init = vse.make_model_and_init(config, meta, tx)
    loss = vse.make_loss(config, model)
    sample = vse.make_sample(config, mesh)
    data = parallel.replicate(vse.DeviceData(
        features=features, ids=ids.astype(np.int32), lengths=lengths), mesh)
  else:
    raise ValueError(f"unknown case {case!r}; use {', '.join(CASES)}")
  state = jax.jit(init)(jax.random.key(config.seed))
  batch = jax.jit(sample)(jax.random.key(1), data)
  return types.SimpleNamespace(config=config, tx=tx, state=state, loss=loss,
                               sample=sample, data=data, batch=batch,
                               model=model, mesh=mesh)


def compile_step(case, steps=1, ready=False):
  """(compiled, its arguments after the state: data and seed key) of
  `steps` training steps per call, compiled by metricjax.train's own
  compile_steps; ready: on a given batch (the streamed path)."""
  sample = (lambda rng, batch: batch) if ready else case.sample
  train_step = step_lib.make_train_step(sample, case.loss, case.tx)
  data = (case.batch,) * steps if ready else case.data
  seed_key = jax.random.key(case.config.seed)
  compiled = train_lib.compile_steps(
      train_step, case.state, data, seed_key, steps, streamed=ready,
      mesh=case.mesh, routing=case.config.xla_cpu_routing)
  return compiled, (data, seed_key)


def _copy(tree):
  return jax.tree.map(lambda x: x.copy() if hasattr(x, "copy") else x, tree)


def jax_runner(compiled, state, args):
  """A blocking zero-argument call of a donated-state step, state carried;
  args: the step's arguments after the state."""
  holder = [_copy(state)]

  def run():
    holder[0], metrics = compiled(holder[0], *args)
    jax.block_until_ready(metrics)
  return run


def jax_split(case):
  """{part: zero-argument blocking callable} of the step's parts."""
  state, batch = case.state, case.batch
  params = state_lib.trainable(state)
  jit = functools.partial(xla_routing.jit,
                          routing=case.config.xla_cpu_routing)
  sample = jit(case.sample)
  objective = lambda p, b: case.loss(p["model"], p["loss"], state.batch_stats,
                                     b, state.loss_state,
                                     jax.random.key(0))[0]
  forward = jit(objective)
  fwd_bwd = jit(jax.value_and_grad(objective))
  grads = fwd_bwd(params, batch)[1]

  @jit
  def optimiser(grads, opt_state, params):
    updates, opt_state = case.tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  key = jax.random.key(3)
  block = jax.block_until_ready
  return {
      "input": lambda: block(sample(key, case.data)),
      "forward": lambda: block(forward(params, batch)),
      "fwd+bwd": lambda: block(fwd_bwd(params, batch)),
      "optimiser": lambda: block(optimiser(grads, state.opt_state, params)),
  }


def build_torch_case(name, jax_case, threads, compiled=False):
  """-> (step, describe): step() is one blocking training step."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch_reference as tr  # tools/, run as a script
  torch.manual_seed(0)
  config = jax_case.config
  batch = jax.tree.map(np.asarray, jax_case.batch)
  if name in IMAGE_CASES + BACKBONE_CASES:
    model = (tr.CompactNet(name) if name in IMAGE_CASES else
             tr.EmbeddingNet(name, config.model.embedding_dim,
                             config.image_size))
    objective = tr.ms_objective(torch.compile(model) if compiled else model,
                                batch, config.loss.kwargs)
  else:
    model = tr.VSEModel(FNE_DIM, VOCAB_SIZE, config.model.embed_dim,
                        config.model.word_dim)
    objective = tr.vse_objective(torch.compile(model) if compiled else model,
                                 batch, config.loss.kwargs)
  return tr.train_step(model, objective, config, threads), tr.count_params(
      model)


def _rate(images_per_s):
  # Two significant digits where whole numbers would say 1 (a backbone on
  # two cores).
  return (f"{images_per_s:.0f}" if images_per_s >= 100
          else f"{images_per_s:.2g}")


def bench_case(name, args):
  batch_size = args.batch_size or None
  case = build_jax_case(name, batch_size)
  b = case.config.batch_size
  fns = {}
  t0 = time.perf_counter()
  for routing in args.routings:
    case.config.xla_cpu_routing = routing
    tag = f", {routing}" if len(args.routings) > 1 else ""
    compiled, data = compile_step(case)
    fns[f"metricjax (sampler{tag})"] = jax_runner(compiled, case.state, data)
    compiled, data = compile_step(case, ready=True)
    fns[f"metricjax (ready batch{tag})"] = jax_runner(compiled, case.state,
                                                      data)
  case.config.xla_cpu_routing = args.routings[0]
  jax_compile_s = time.perf_counter() - t0
  jax_params = models.count_params(case.state.params)
  threads = args.threads
  torch_counts = {}
  names = [(f"PyTorch eager, {threads} threads", threads, False)]
  if threads > 1:
    names.append(("PyTorch eager, 1 thread", 1, False))
  notes = []
  if args.compile:
    names.append((f"torch.compile, {threads} threads", threads, True))
    if threads > 1:
      names.append(("torch.compile, 1 thread", 1, True))
  for label, n, comp in names:
    step, count = build_torch_case(name, case, n, compiled=comp)
    torch_counts[label] = count
    if comp:
      t0 = time.perf_counter()
      try:
        step()
      except Exception as e:  # pylint: disable=broad-except
        notes.append(f"torch.compile failed: {type(e).__name__}: "
                     f"{str(e).splitlines()[0][:200]}")
        continue
      notes.append(f"torch.compile: first step (compile) "
                   f"{time.perf_counter() - t0:.0f} s")
    fns[label] = step
  load_before = load()
  times = median_times(fns, args.repeats)
  load_after = load()
  eager = [v for k, v in times.items() if k.startswith("PyTorch eager")]
  best_eager = min(eager)
  lines = [
      f"### {name}: batch {b}, median of {args.repeats}, load {load_before}"
      f" -> {load_after}", "",
      f"parameters: metricjax {jax_params:,}, PyTorch "
      + ", ".join(sorted({f'{c:,}' for c in torch_counts.values()}))
      + f"; metricjax compile {jax_compile_s:.0f} s", "",
      "| implementation | step ms | images/s | x best PyTorch eager |",
      "|---|--:|--:|--:|"]
  for label, t in times.items():
    lines.append(f"| {label} | {t * 1e3:.1f} | {_rate(b / t)} | "
                 f"{best_eager / t:.2f} |")
  lines += [""] + [f"- {n}" for n in notes]
  if args.split:
    # The parts and the whole step take turns, like the table above.
    parts = jax_split(case)
    parts["whole step"] = fns["metricjax (sampler)"]
    parts = median_times(parts, args.repeats)
    parts["backward"] = parts["fwd+bwd"] - parts["forward"]
    total = sum(parts[p] for p in ("input", "fwd+bwd", "optimiser"))
    lines += ["", f"metricjax step split (separately compiled parts, "
              f"median of {args.repeats}, load {load()}):", "",
              "| part | ms | share of the parts' sum |", "|---|--:|--:|"]
    for part in ("input", "forward", "backward", "optimiser"):
      lines.append(f"| {part} | {parts[part] * 1e3:.1f} | "
                   f"{parts[part] / total:.0%} |")
    lines.append(f"| (sum of the parts) | {total * 1e3:.1f} | |")
    lines.append(f"| (whole step, sampler, same repeats) | "
                 f"{parts['whole step'] * 1e3:.1f} | |")
  return "\n".join(lines)


def bench_steps_per_call(name, counts, args):
  """images/s of the real step for N steps per jitted call."""
  case = build_jax_case(name, args.batch_size or None)
  case.config.xla_cpu_routing = args.routings[0]
  b = case.config.batch_size
  fns, compile_s = {}, {}
  for n in counts:
    t0 = time.perf_counter()
    compiled, data = compile_step(case, steps=n)
    compile_s[n] = time.perf_counter() - t0
    fns[n] = jax_runner(compiled, case.state, data)
  load_before = load()
  times = median_times(fns, args.repeats)
  lines = [f"### steps_per_call, {name}, batch {b}, median of {args.repeats} "
           f"calls, load {load_before} -> {load()}", "",
           "| steps per call | ms per call | ms per step | images/s | "
           "x N=1 | compile s |", "|--:|--:|--:|--:|--:|--:|"]
  base = times[counts[0]] / counts[0]
  for n in counts:
    per_step = times[n] / n
    lines.append(f"| {n} | {times[n] * 1e3:.1f} | {per_step * 1e3:.1f} | "
                 f"{_rate(b / per_step)} | {base / per_step:.2f} | "
                 f"{compile_s[n]:.0f} |")
  return "\n".join(lines)


FLAGS = flags.FLAGS
flags.DEFINE_list("cases", list(CASES), "Cases to time.")
flags.DEFINE_integer("repeats", 5, "Interleaved repetitions (medians).")
flags.DEFINE_integer("batch_size", 0, "0: the config's.")
flags.DEFINE_bool("quick", False, "Smoke run: 2 repeats, batch 64, no "
                  "torch.compile.")
flags.DEFINE_integer("threads", len(os.sched_getaffinity(0)),
                     "torch.set_num_threads.")
flags.DEFINE_bool("compile", True, "Also time torch.compile.")
flags.DEFINE_bool("split", True, "Time the parts of the metricjax step.")
flags.DEFINE_list("steps_per_call", [], "e.g. 1,4,16: time the first case's "
                  "real step at these steps per jitted call instead.")
flags.DEFINE_enum("xla_cpu_routing", "conv_eigen",
                  ["conv_eigen", "jaxlib_default", "both"],
                  "config.xla_cpu_routing of the metricjax step; both: "
                  "time each (--steps_per_call and the cases' tables).")
flags.DEFINE_bool("keep_freed_memory", True, "As the train command does "
                  "(metricjax/host_memory.py; the whole process, PyTorch "
                  "included).")


def main(_):
  args = types.SimpleNamespace(**{k: FLAGS[k].value for k in (
      "repeats", "batch_size", "threads", "compile", "split")}, routings=(
          xla_routing.ROUTINGS if FLAGS.xla_cpu_routing == "both"
          else (FLAGS.xla_cpu_routing,)))
  if FLAGS.quick:
    args.repeats, args.batch_size, args.compile = 2, 64, False
  kept = FLAGS.keep_freed_memory and host_memory.keep_freed_memory()
  print(machine(args.threads), f"keep_freed_memory: {kept}\n", flush=True)
  if FLAGS.steps_per_call:
    counts = [int(v) for v in FLAGS.steps_per_call]
    print(bench_steps_per_call(FLAGS.cases[0], counts, args), flush=True)
    return
  for name in FLAGS.cases:
    print(bench_case(name, args), "\n", flush=True)
  print(f"peak RSS {benchmark.peak_rss_mb():.0f} MB", flush=True)


if __name__ == "__main__":
  app.run(main)

r"""Training loop and CLI.

  python -m metricjax.train --config=configs/compact_involution.py \
      --workdir=/tmp/run [--config.total_steps=500 ...]

Started again on the same workdir, it resumes from the latest checkpoint and
gives the same result as an uninterrupted run: every step's randomness is
derived from (seed, step), and the small training set lives on the devices,
where batches are sampled and augmented inside the jitted step.
"""

import json
import os
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import app
from absl import flags
from ml_collections import config_flags
from tqdm import tqdm

from metricjax import checkpoint
from metricjax import data as data_lib
from metricjax import evaluate as evaluate_lib
from metricjax import losses
from metricjax import metrics as metrics_lib
from metricjax import parallel
from metricjax import state as state_lib
from metricjax.errors import UserError, exit_on_user_error, parse_flags_or_exit

FLAGS = flags.FLAGS


def _define_flags():
  # Only when run as a program, so that importing this module defines none.
  config_flags.DEFINE_config_file(
      "config", None, "Experiment config file, e.g. configs/compact_involution.py:loss=ce.")
  flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go.")
  flags.DEFINE_bool("distributed", False,
                    "Call jax.distributed.initialize() (multi-host runs).")
  flags.mark_flags_as_required(["config", "workdir"])


@flax.struct.dataclass
class DeviceData:
  """A training split kept on the devices (replicated)."""
  images: jax.Array  # uint8 (N, H, W, C)
  labels: jax.Array  # int32 (N,)
  class_index: data_lib.ClassIndex


def dataset_meta(ds: data_lib.ArrayDataset) -> dict:
  return dict(name=ds.name, source=ds.source, split=ds.split, size=len(ds),
              num_classes=ds.num_classes, class_names=list(ds.class_names),
              image_shape=list(ds.images.shape[1:]))


def make_sampler(config, loss: losses.Loss, num_classes: int):
  """-> sample(rng, data): the step's example indices, drawn on device."""
  if (loss.input == "triplets") != (config.sampler == "triplets"):
    raise UserError(
        f"config.sampler={config.sampler!r} does not fit loss "
        f"{config.loss.name!r}: explicit-triplet losses (*_explicit) need "
        "sampler 'triplets', the others 'balanced' or 'uniform'.")
  if config.sampler == "triplets":
    # batch_size counts triplets: a step embeds 3 * batch_size images.
    return lambda rng, data: jnp.concatenate(
        data_lib.random_triplets(rng, data.class_index, config.batch_size))
  if config.sampler == "balanced":
    p, k = data_lib.check_batch_shape(config.batch_size, config.samples_per_class,
                                      num_classes)
    return lambda rng, data: data_lib.class_balanced_batch(
        rng, data.class_index, classes_per_batch=p, samples_per_class=k)
  if config.sampler == "uniform":
    return lambda rng, data: data_lib.uniform_batch(
        rng, data.labels.shape[0], config.batch_size)
  raise UserError(f"config.sampler={config.sampler!r}: use 'balanced' (P classes "
                  "x K images), 'uniform', or 'triplets' (explicit triplets).")


def make_train_step(config, model, loss: losses.Loss, tx, mesh, num_classes):
  """The jitted-to-be step: sample, augment, forward, backward, update."""
  loss_kwargs = config.loss.kwargs.to_dict()
  if loss.input == "logits" and not config.classification_head:
    raise UserError(f"Loss {config.loss.name!r} needs logits: set "
                    "config.classification_head=True.")
  sample = make_sampler(config, loss, num_classes)
  batch_sharding = parallel.batch_sharding(mesh)
  seed_key = jax.random.key(config.seed)

  def train_step(state: state_lib.TrainState, data: DeviceData):
    rng_sample, rng_augment = jax.random.split(jax.random.fold_in(seed_key, state.step))
    idx = sample(rng_sample, data)
    # Sharding the indices makes each device gather only its own rows.
    idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
    images, labels = data.images[idx], data.labels[idx]
    if config.augment:
      images = data_lib.random_crop_flip(rng_augment, images)

    def loss_fn(params):
      outputs, updates = model.apply(
          {"params": params, "batch_stats": state.batch_stats}, images,
          train=True, mutable=["batch_stats"])
      if loss.input == "triplets":
        value = loss.fn(*jnp.split(outputs["embedding"], 3), **loss_kwargs)
      else:
        value = loss.fn(outputs[loss.input], labels, **loss_kwargs)
      return value, updates.get("batch_stats", {})

    (value, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1, params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats, opt_state=opt_state)
    return new_state, {"loss": value, "grad_norm": optax.tree.norm(grads)}

  return train_step


def step_memory(compiled) -> dict:
  """Memory of one training step: XLA's compile-time analysis (any backend)
  and, where the runtime reports it (GPU, TPU), the device's peak so far."""
  out = {}
  analysis = compiled.memory_analysis()
  if analysis is not None:
    out["step_temp_bytes"] = int(analysis.temp_size_in_bytes)
    out["step_total_bytes"] = int(
        analysis.temp_size_in_bytes + analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes - analysis.alias_size_in_bytes)
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    out["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
  return out


def make_validation(config, model, mesh):
  """Retrieval metrics of the first config.val_size eval-split images, every
  config.eval_every steps (0: never). For learning curves and steps-to-target,
  not for the reported test figures."""
  if not config.get("eval_every"):
    return None
  ds = data_lib.load_dataset(config.dataset, config.eval_split)
  images, labels = ds.images[:config.val_size], ds.labels[:config.val_size]

  def validate(state):
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    outputs = evaluate_lib.embed(model, variables, images, mesh=mesh,
                                 batch_size=config.eval.batch_size, desc="validate")
    return metrics_lib.retrieval_metrics(outputs["embedding"], labels,
                                         ks=tuple(config.eval.ks))
  return validate


class MetricsLog:
  """DIR/metrics.jsonl; on resume, rows past the restored step are dropped so
  a run killed between a log and a checkpoint does not log steps twice."""

  def __init__(self, workdir: str, resume_step: int):
    self.path = os.path.join(workdir, "metrics.jsonl")
    rows = []
    if resume_step and os.path.exists(self.path):
      with open(self.path) as f:
        rows = [line for line in f if json.loads(line)["step"] <= resume_step]
    with open(self.path, "w") as f:
      f.writelines(rows)

  def write(self, row: dict) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")


def _check_same_run(meta: dict, config: ml_collections.ConfigDict, workdir: str):
  saved, current = meta["config"], json.loads(json.dumps(config.to_dict()))
  for key in ("dataset", "model", "classification_head"):
    now = current.get(key)
    if saved.get(key) != now:
      raise UserError(
          f"{workdir} holds a run with config.{key}={saved.get(key)!r}, but this "
          f"config has {now!r}. Use a new --workdir, or the original config "
          "to resume.")


def train(config: ml_collections.ConfigDict, workdir: str) -> state_lib.TrainState:
  """Trains (or resumes) and returns the final state."""
  if config.total_steps < 1:
    raise UserError(f"config.total_steps={config.total_steps} must be >= 1.")
  mesh = parallel.create_mesh()
  parallel.check_divisible(config.batch_size, mesh, "config.batch_size")
  ds = data_lib.load_dataset(config.dataset, config.train_split)
  if config.get("imbalance") and config.imbalance.classes:
    ds = data_lib.imbalanced(ds, **config.imbalance.to_dict())
  model = state_lib.model_from_config(config, ds.num_classes)
  loss = losses.get_loss(config.loss.name)
  tx = state_lib.create_optimizer(config)
  train_step = make_train_step(config, model, loss, tx, mesh, ds.num_classes)

  os.makedirs(workdir, exist_ok=True)
  meta = dict(config=config.to_dict(), dataset=dataset_meta(ds))
  mngr = checkpoint.manager(workdir, max_to_keep=config.keep_checkpoints)
  replicated = parallel.replicated(mesh)
  init = jax.jit(lambda rng: state_lib.init_state(model, tx, ds.images.shape[1:], rng),
                 out_shardings=replicated)
  start_step = mngr.latest_step() or 0
  if start_step:
    _check_same_run(checkpoint.restore_meta(mngr, start_step), config, workdir)
    abstract = checkpoint.abstract_like(
        jax.eval_shape(init, jax.random.key(config.seed)), replicated)
    state = checkpoint.restore_state(mngr, start_step, abstract)
  else:
    state = init(jax.random.key(config.seed))
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))

  data = parallel.replicate(DeviceData(
      images=ds.images, labels=ds.labels,
      class_index=data_lib.ClassIndex.from_labels(ds.labels, ds.num_classes)), mesh)
  # Compiled ahead of time so its memory analysis can be logged.
  step_fn = jax.jit(train_step, donate_argnums=(0,), out_shardings=(replicated, replicated)
                    ).lower(state, data).compile()
  memory = step_memory(step_fn)
  validate = make_validation(config, model, mesh)
  schedule = state_lib.learning_rate_schedule(config)
  log = MetricsLog(workdir, start_step)
  images_per_step = config.batch_size * (3 if config.sampler == "triplets" else 1)

  bar = tqdm(total=config.total_steps, initial=start_step, desc="train",
             unit="step", dynamic_ncols=True, mininterval=1.0)
  last_time, last_step = time.perf_counter(), start_step
  for step in range(start_step + 1, config.total_steps + 1):
    state, metrics = step_fn(state, data)
    bar.update(1)
    if step % config.log_every == 0 or step == config.total_steps:
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      now = time.perf_counter()
      rate = (step - last_step) / (now - last_time)
      last_time, last_step = now, step
      row = dict(step=step, **metrics, learning_rate=float(schedule(step - 1)),
                 steps_per_sec=rate, examples_per_sec=rate * images_per_step,
                 epoch=step * images_per_step / len(ds), **memory)
      if validate and (step % config.eval_every == 0 or step == config.total_steps):
        row.update({f"val_{k}": v for k, v in validate(state).items()})
        last_time = time.perf_counter()  # Validation is not training time.
      log.write(row)
      bar.set_postfix(loss=f"{metrics['loss']:.4f}")
      if not jnp.isfinite(metrics["loss"]):
        raise UserError(f"The loss became {metrics['loss']} at step {step}. Lower "
                        "config.learning_rate or set config.grad_clip_norm.")
    if step % config.checkpoint_every == 0 or step == config.total_steps:
      checkpoint.save(mngr, step, state, meta)
  bar.close()
  mngr.wait_until_finished()
  mngr.close()
  return state


@exit_on_user_error
def main(argv):
  if len(argv) > 1:
    raise UserError(f"Unexpected arguments: {' '.join(argv[1:])}.")
  if FLAGS.distributed:
    parallel.initialize_distributed()
  train(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=parse_flags_or_exit)

r"""Training loop and CLI.

  python -m metricjax.train --config=configs/compact_involution.py \
      --workdir=/tmp/run [--config.total_steps=500 ...]

Started again on the same workdir, it resumes from the latest checkpoint and
gives the same result as an uninterrupted run: every step's randomness is
derived from (seed, step). The loop is task-agnostic: what is trained on what
comes from metricjax/tasks/ (config.task).

Failures (docs/training.md, "Resuming and failures"): SIGTERM, what schedulers send
before preempting a machine, makes the run checkpoint the step it is at and
exit with PREEMPTED_EXIT_CODE; the same command then resumes. A NaN or
infinite loss or gradient stops the run before any checkpoint of the bad
state is written, or, with config.skip_nonfinite_steps, skips the step and
counts it (`nonfinite_steps` in metrics.jsonl).
"""

import contextlib
import itertools
import json
import os
import sys
import time

import jax
import ml_collections
from absl import app
from absl import flags
from ml_collections import config_flags
from tqdm import tqdm

from metricjax import checkpoint
from metricjax import cli
from metricjax import files
from metricjax import metric_writers
from metricjax import parallel
from metricjax import state as state_lib
from metricjax import step as step_lib
from metricjax import tasks
from metricjax import xla_routing
from metricjax import errors
from metricjax import failures
from metricjax.errors import UserError, exit_on_user_error

FLAGS = flags.FLAGS


def _define_flags():
  # Only when run as a program, so that importing this module defines none.
  config_flags.DEFINE_config_file(
      "config", None, "Experiment config file, e.g. configs/compact_involution.py:loss=ce.")
  flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go.")
  cli.define_common_flags()
  flags.mark_flags_as_required(["config", "workdir"])


def compile_steps(train_step, state, data, seed_key, num_steps: int, *,
                  streamed: bool, mesh, routing: str = xla_routing.DEFAULT):
  """num_steps training steps as one compiled call, ahead of time (so its
  memory can be logged): state donated, outputs replicated, XLA:CPU
  routed by `routing` (metricjax/xla_routing.py). data: the on-device
  dataset, or, when streamed, a tuple of num_steps batches; seed_key:
  jax.random.key(seed), an argument so that seeds share the program."""
  return lower_steps(train_step, state, data, seed_key, num_steps,
                     streamed=streamed, mesh=mesh, routing=routing).compile()


def lower_steps(train_step, state, data, seed_key, num_steps: int, *,
                streamed: bool, mesh, routing: str = xla_routing.DEFAULT):
  """compile_steps' program, lowered: metricjax.aot compiles it for other
  machines (the arguments may be abstract, carrying their shardings)."""
  replicated = parallel.replicated(mesh)
  return xla_routing.jit(
      step_lib.repeat_steps(train_step, num_steps, streamed=streamed),
      routing=routing, donate_argnums=(0,),
      out_shardings=(replicated, replicated)).lower(state, data, seed_key)


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


class MetricsLog:
  """DIR/metrics.jsonl and TensorBoard event files in DIR, one row a log
  step (metricjax/metric_writers.py); on resume, metrics.jsonl's rows past
  the restored step are dropped and TensorBoard is told to drop them, so a
  run killed between a log and a checkpoint does not log steps twice. Only
  process 0 writes."""

  def __init__(self, workdir: str, resume_step: int):
    self.enabled = jax.process_index() == 0
    self.writer = metric_writers.create_run_writer(workdir, resume_step,
                                                   enabled=self.enabled)

  def write(self, row: dict) -> None:
    self.writer.write_scalars(
        row["step"], {k: v for k, v in row.items() if k != "step"})

  def close(self) -> None:
    self.writer.close()


def _check_same_run(saved_config: dict, config: ml_collections.ConfigDict,
                    task_module, workdir: str) -> None:
  """Refuses to resume a checkpoint with another task identity."""
  normalise = lambda x: json.loads(json.dumps(x))
  saved = ml_collections.ConfigDict(saved_config)
  if saved.get("task", "retrieval") != config.task:
    then, now = saved.get("task", "retrieval"), config.task
    raise UserError(f"{workdir} holds a run of task {then!r}, but this config "
                    f"is for task {now!r}. Use a new --workdir.")
  then = normalise(task_module.identity(saved))
  now = normalise(task_module.identity(config))
  for key in now:
    if then.get(key) != now[key]:
      raise UserError(
          f"{workdir} holds a run with {key}={then.get(key)!r}, but this "
          f"config has {now[key]!r}. Use a new --workdir, or the original "
          "config to resume.")


def train(config: ml_collections.ConfigDict, workdir: str) -> state_lib.TrainState:
  """Trains (or resumes) and returns the final state.

  Raises Preempted when SIGTERM stopped it early (after a checkpoint), and
  UserError on bad input or a non-finite step.
  """
  if config.total_steps < 1:
    raise UserError(f"config.total_steps={config.total_steps} must be >= 1.")
  parallel.check_same_everywhere(config.to_json_best_effort(sort_keys=True),
                                 "configs")
  mesh = parallel.create_mesh()
  tx = state_lib.create_optimizer(config)
  task_module = tasks.of(config)
  task = task_module.build(config, mesh, tx)

  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UserError(f"Cannot create the workdir {workdir}: {errors.one_line(e)}. "
                    "Pass a --workdir in a writable directory.") from e
  meta = dict(config=config.to_dict(), **task.meta.to_dict())
  mngr = checkpoint.manager(workdir, max_to_keep=config.keep_checkpoints)
  replicated = parallel.replicated(mesh)
  init = jax.jit(task.init, out_shardings=replicated)
  start_step = mngr.latest_step() or 0
  skipped = 0
  if start_step:
    saved = checkpoint.restore_meta(mngr, start_step)
    _check_same_run(saved["config"], config, task_module, workdir)
    skipped = saved.get("nonfinite_steps", 0)
    abstract = checkpoint.abstract_like(
        jax.eval_shape(init, jax.random.key(config.seed)), replicated)
    state = checkpoint.restore_state(mngr, start_step, abstract)
  else:
    state = init(jax.random.key(config.seed))
  if jax.process_index() == 0:
    files.write_text(os.path.join(workdir, "config.json"),
                  config.to_json_best_effort(indent=2))

  guard = failures.FiniteGuard(config, skipped, start_step or None)
  train_step = step_lib.make_train_step(task.sample, task.loss, tx,
                                        skip_nonfinite=guard.skip)
  # Made by a program, not device_put: every process holds its replica.
  seed_key = jax.jit(lambda: jax.random.key(config.seed),
                     out_shardings=replicated)()
  steps_per_call = config.steps_per_call
  if steps_per_call < 1:
    raise UserError(f"config.steps_per_call={steps_per_call} must be >= 1.")
  routing = xla_routing.check(config.xla_cpu_routing)
  compiled = {}

  def steps_fn(k):
    if k not in compiled:
      example = (task.data,) * k if task.stream else task.data
      compiled[k] = compile_steps(train_step, state, example, seed_key, k,
                                  streamed=bool(task.stream), mesh=mesh,
                                  routing=routing)
    return compiled[k]

  schedule = state_lib.learning_rate_schedule(config)
  eval_every = config.get("eval_every") if task.validate else 0
  # Calls end where something happens (a log, a validation, a checkpoint),
  # so the cadence stays in steps whatever steps_per_call is.
  every = [config.log_every, config.checkpoint_every] + (
      [eval_every] if eval_every else [])

  def call_size(step: int) -> int:
    event = min([(step // e + 1) * e for e in every] + [config.total_steps])
    return min(steps_per_call, event - step)

  memory = step_memory(steps_fn(call_size(start_step)))

  def check(first: int, stacked: dict) -> None:
    """The finiteness of steps first, first + 1, ..., in order."""
    stacked = jax.device_get(stacked)
    for i in range(len(stacked["finite"])):
      guard.check(first + i, {k: v[i] for k, v in stacked.items()})

  # Checkpoints are written in the background; however the loop ends
  # (finished, preempted, an error), the last one started is waited for.
  with (failures.stop_on_sigterm() as stop_requested,
        checkpoint.finishing(mngr),
        contextlib.closing(MetricsLog(workdir, start_step)) as log):
    bar = tqdm(total=config.total_steps, initial=start_step, desc="train",
               unit="step", dynamic_ncols=True, mininterval=1.0,
               disable=jax.process_index() != 0)
    last_time, last_step = time.perf_counter(), start_step
    unchecked = None  # (first step, metrics) whose finiteness is unread.
    batches = task.stream(start_step) if task.stream else None
    step = start_step
    while step < config.total_steps:
      k = call_size(step)
      data = (tuple(itertools.islice(batches, k)) if task.stream
              else task.data)
      state, metrics = steps_fn(k)(state, data, seed_key)
      # One call queued ahead is enough to hide dispatch; waiting for the
      # one before keeps the bar at the real training rate instead of
      # racing ahead of the devices. Its finiteness is read then, for free.
      if unchecked is not None:
        check(*unchecked)
      unchecked = (step + 1, metrics)
      step += k
      bar.update(k)
      last = step == config.total_steps
      validate_now = eval_every and (step % eval_every == 0 or last)
      if step % config.log_every == 0 or last or validate_now:
        check(*unchecked)
        unchecked = None
        metrics = {name: float(values[-1])  # The call's last step.
                   for name, values in jax.device_get(metrics).items()
                   if name != "finite"}
        if guard.skip:
          metrics["nonfinite_steps"] = guard.skipped
        # clu.periodic_actions.ReportProgress would time this, but clu
        # cannot be imported without TensorFlow (metric_writers.py).
        now = time.perf_counter()
        rate = (step - last_step) / (now - last_time)
        last_time, last_step = now, step
        row = dict(step=step, **metrics, learning_rate=float(schedule(step - 1)),
                   steps_per_sec=rate, examples_per_sec=rate * task.examples_per_step,
                   epoch=step * task.examples_per_step / task.epoch_size, **memory)
        if validate_now:
          row.update({f"val_{k}": v for k, v in task.validate(state).items()})
          last_time = time.perf_counter()  # Validation is not training time.
        log.write(row)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}")
      stop = stop_requested.is_set() and not last
      if jax.process_count() > 1:
        # The processes must stop at one step; agreeing takes a collective,
        # so they do it at log steps only, not on every step's hot path.
        stop = (step % config.log_every == 0 and not last
                and parallel.any_process(stop))
      if step % config.checkpoint_every == 0 or last or stop:
        # Never a checkpoint of a state not known to be finite.
        if unchecked is not None:
          check(*unchecked)
          unchecked = None
        checkpoint.save(mngr, step, state,
                        dict(meta, nonfinite_steps=guard.skipped))
        guard.last_checkpoint = step
      if stop:
        bar.close()
        checkpoint.wait(mngr)
        raise failures.Preempted(step, workdir)
    bar.close()
    return state


@exit_on_user_error
def main(argv):
  cli.set_up(argv)
  try:
    train(FLAGS.config, FLAGS.workdir)
  except failures.Preempted as e:
    print(f"\n{e}\n", file=sys.stderr)
    sys.exit(failures.PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=errors.parse_flags_or_exit)

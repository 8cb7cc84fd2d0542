"""Reliability: preemption (SIGTERM), a kill or a full disk during a
checkpoint save, non-finite steps, determinism.

Every run here is the same tiny config, so one uninterrupted run (the
`straight` fixture) is the reference the interrupted ones must match
exactly.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint._src.handlers import json_checkpoint_handler
import pytest

from metricjax import checkpoint
from metricjax import data as data_lib
from metricjax import evaluate as evaluate_lib
from metricjax import failures
from metricjax import parallel
from metricjax import state as state_lib
from metricjax import train as train_lib
from metricjax.errors import UserError
from metricjax.tasks import retrieval
from helpers import REPO
from helpers import tiny_config

TESTS = os.path.join(REPO, "tests")


def config_for(data_dir, **overrides):
  # augment: the runs draw random crops too, so resuming must restore them.
  return tiny_config(data_dir, augment=True, log_every=1, **overrides)


def rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def losses_of(workdir):
  return [(r["step"], r["loss"], r["grad_norm"]) for r in rows(workdir)]


def checkpoint_steps(workdir):
  mngr = checkpoint.manager(workdir, create=False)
  steps = sorted(mngr.all_steps())
  mngr.close()
  return steps


def final_params(workdir):
  mngr = checkpoint.manager(workdir, create=False)
  state = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))["state"]
  mngr.close()
  return state["params"]


@pytest.fixture
def straight(tiny_run):
  """The uninterrupted run of config_for(): its workdir and evaluation."""
  workdir, result, config = tiny_run
  assert config.to_dict() == config_for(config.dataset[len("idx:"):]).to_dict()
  return workdir, result


def assert_same_run(workdir, straight):
  """Same losses at every step, same final parameters, same eval metrics."""
  reference, reference_eval = straight
  assert losses_of(workdir) == losses_of(reference)
  jax.tree.map(np.testing.assert_array_equal, final_params(workdir),
               final_params(reference))
  result = evaluate_lib.evaluate(workdir)
  assert result["metrics"] == reference_eval["metrics"]
  return result


def test_same_config_and_seed_give_identical_results(tiny_idx_dir, tmp_path,
                                                     straight):
  workdir = str(tmp_path)
  train_lib.train(config_for(tiny_idx_dir), workdir)
  result = assert_same_run(workdir, straight)
  # The whole eval JSON, not only its metrics, bar the workdir's name.
  reference = json.load(open(os.path.join(straight[0], "eval", "step_6.json")))
  again = json.load(open(os.path.join(workdir, "eval", "step_6.json")))
  assert dict(again, workdir=None) == dict(reference, workdir=None)
  assert result["step"] == 6


# --- Preemption ----------------------------------------------------------------

# The child's config: the tiny config, plus a pause of the host loop after it
# logs step PAUSE_AT until the test has sent SIGTERM, so that the signal
# lands at a known step instead of racing a run that takes a second. Only
# the host waits; the devices compute what an unpaused run computes.
CHILD_CONFIG = """
import os, sys, time
sys.path.insert(0, {tests!r})
from helpers import tiny_config

def _pause_after_logging(step, until):
  main = sys.modules["__main__"]  # metricjax.train, run with -m.
  write = main.MetricsLog.write
  def paused(self, row):
    write(self, row)
    deadline = time.time() + 120
    while (row["step"] == step and not os.path.exists(until)
           and time.time() < deadline):
      time.sleep(0.01)
  main.MetricsLog.write = paused

def get_config():
  _pause_after_logging({pause_at}, {signalled!r})
  config = tiny_config({data!r}, augment=True, log_every=1)
  config.data.placement = {placement!r}
  return config
"""


def _start_training(config_path, workdir):
  # XLA's default optimisation level (the suite compiles at level 0,
  # tests/conftest.py): preemption and rerun match bit for bit in the build
  # users run. The simulated devices of the other tests.
  env = dict(os.environ,
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  return subprocess.Popen(
      [sys.executable, "-m", "metricjax.train", f"--config={config_path}",
       f"--workdir={workdir}"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)


def _wait_for_row(proc, workdir, step, timeout=300):
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      pytest.fail(f"training exited with {proc.returncode} before step "
                  f"{step}:\n{proc.communicate()[1][-3000:]}")
    if os.path.exists(path) and any(
        json.loads(l)["step"] == step for l in open(path) if l.endswith("\n")):
      return
    time.sleep(0.05)
  proc.kill()
  pytest.fail(f"no metrics row for step {step} after {timeout} s")


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_rerun_matches(tiny_idx_dir,
                                                          tmp_path):
  _preempt_and_rerun(tiny_idx_dir, tmp_path, placement="auto")


@pytest.mark.slow
def test_sigterm_on_the_streaming_path(tiny_idx_dir, tmp_path):
  _preempt_and_rerun(tiny_idx_dir, tmp_path, placement="stream")


def _preempt_and_rerun(tiny_idx_dir, tmp_path, *, placement):
  """SIGTERM at step 2 of a real training process, then the same command
  again: the result is the uninterrupted run's (the same command, never
  paused)."""
  signalled = tmp_path / "signalled"
  config_path = tmp_path / "child_config.py"
  # Step 2 is off the checkpoint schedule (every 3): the save is SIGTERM's.
  config_path.write_text(CHILD_CONFIG.format(
      tests=TESTS, pause_at=2, signalled=str(signalled),
      data=str(tiny_idx_dir), placement=placement))
  reference_config = tmp_path / "reference_config.py"
  reference_config.write_text(CHILD_CONFIG.format(
      tests=TESTS, pause_at=-1, signalled=str(signalled),
      data=str(tiny_idx_dir), placement=placement))
  reference = str(tmp_path / "straight")
  proc = _start_training(reference_config, reference)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-3000:]
  straight = reference, evaluate_lib.evaluate(reference)
  workdir = str(tmp_path / "run")

  proc = _start_training(config_path, workdir)
  _wait_for_row(proc, workdir, 2)
  proc.send_signal(signal.SIGTERM)
  signalled.touch()
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == failures.PREEMPTED_EXIT_CODE, stderr[-3000:]
  assert "Stopped by SIGTERM at step 2" in stderr
  assert "Traceback" not in stderr
  # The checkpoint is complete (restorable), not merely started.
  assert checkpoint_steps(workdir) == [2]
  assert [r["step"] for r in rows(workdir)] == [1, 2]
  assert final_params(workdir) is not None

  proc = _start_training(config_path, workdir)  # The same command again.
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-3000:]
  assert_same_run(workdir, straight)


# --- A kill or a full disk while a checkpoint is written ---------------------


def test_failed_checkpoint_write_keeps_the_previous_one(tiny_idx_dir, tmp_path,
                                                        straight, monkeypatch):
  """The disk fills up while step 6's checkpoint is written.

  Orbax writes a step into `6.orbax-checkpoint-tmp` and renames it to `6`
  only once complete; the failure here leaves that directory half-written,
  exactly as a SIGKILL during the save does (Orbax cleans nothing up on
  either). So this test also stands for a kill during a save, which a test
  cannot time reliably: the next start resumes from step 3.
  """
  real_write = json_checkpoint_handler.JsonCheckpointHandler._save_fn

  async def write_or_fail(self, x, directory):
    if x.get("nonfinite_steps") is not None and "6.orbax" in str(directory):
      raise OSError(errno.ENOSPC, "No space left on device")
    return await real_write(self, x, directory)

  monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler,
                      "_save_fn", write_or_fail)
  workdir = str(tmp_path)
  with pytest.raises(UserError, match="No space left on device") as e:
    train_lib.train(config_for(tiny_idx_dir), workdir)
  assert "checkpoint of step 3 is intact" in str(e.value)
  assert "\n" not in str(e.value)
  assert checkpoint_steps(workdir) == [3]
  assert any(n.startswith("6.orbax-checkpoint-tmp")
             for n in os.listdir(os.path.join(workdir, "checkpoints")))

  monkeypatch.undo()
  train_lib.train(config_for(tiny_idx_dir), workdir)
  assert checkpoint_steps(workdir) == [3, 6]
  assert_same_run(workdir, straight)


def test_resume_drops_a_torn_metrics_line(tmp_path):
  # A run killed while appending leaves half a row; resuming drops it with
  # the rows past the checkpoint.
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n'
                  '{"step": 3, "loss": 0.2}\n{"step": 4, "lo')
  train_lib.MetricsLog(str(tmp_path), resume_step=2)
  assert path.read_text() == ('{"step": 1, "loss": 1.0}\n'
                              '{"step": 2, "loss": 0.5}\n')


# --- Non-finite steps ------------------------------------------------------------


@pytest.fixture
def poisoned(tiny_idx_dir, monkeypatch):
  """(config, bad steps): one training image makes the loss and gradients
  NaN whenever a batch holds it, as a corrupt example would."""
  config = tiny_config(tiny_idx_dir, checkpoint_every=1, log_every=1)
  task = retrieval.build(config, parallel.create_mesh(),
                         state_lib.create_optimizer(config))
  sample = jax.jit(task.sample)
  seed_key = jax.random.key(config.seed)
  images = [np.asarray(sample(data_lib.step_key(seed_key, s), task.data)
                       ["images"]) for s in range(config.total_steps)]

  def steps_holding(image):
    return [s + 1 for s, batch in enumerate(images)
            if (batch == image).all(axis=(1, 2, 3)).any()]

  # An image first drawn at step 3 or later, then at least once more.
  candidates = (np.asarray(x) for x in task.data.images)
  bad_image, bad_steps = next(
      (x, steps_holding(x)) for x in candidates
      if len(steps_holding(x)) >= 2 and steps_holding(x)[0] >= 3)

  make_loss = retrieval.make_loss

  def make_poisoned_loss(*args):
    loss_fn = make_loss(*args)

    def poisoned_loss(params, loss_params, batch_stats, batch, *state_key):
      value, carried = loss_fn(params, loss_params, batch_stats, batch,
                               *state_key)
      holds = (batch["images"] == bad_image).all(axis=(1, 2, 3)).any()
      return value * jnp.where(holds, jnp.nan, 1.0), carried
    return poisoned_loss

  monkeypatch.setattr(retrieval, "make_loss", make_poisoned_loss)
  return config, bad_steps


def test_nonfinite_step_stops_before_its_checkpoint(poisoned, tmp_path):
  config, bad_steps = poisoned
  first = bad_steps[0]
  with pytest.raises(UserError) as e:
    train_lib.train(config, str(tmp_path))
  message = str(e.value)
  assert f"stopped at step {first}: the loss became non-finite" in message
  assert f"last good checkpoint (step {first - 1}) is kept" in message
  assert "learning_rate" in message and "skip_nonfinite_steps" in message
  assert "\n" not in message
  # Every step's checkpoint up to the last good one, none after.
  assert checkpoint_steps(str(tmp_path))[-1] == first - 1
  assert all(np.isfinite(x).all()
             for x in jax.tree.leaves(final_params(str(tmp_path))))


def test_skip_nonfinite_steps_counts_them(poisoned, tmp_path):
  config, bad_steps = poisoned
  config.skip_nonfinite_steps = True
  train_lib.train(config, str(tmp_path))
  logged = rows(str(tmp_path))
  assert [r["step"] for r in logged] == list(range(1, config.total_steps + 1))
  assert [r["step"] for r in logged if not np.isfinite(r["loss"])] == bad_steps
  assert [r["nonfinite_steps"] for r in logged] == [
      sum(b <= r["step"] for b in bad_steps) for r in logged]
  assert all(np.isfinite(x).all()
             for x in jax.tree.leaves(final_params(str(tmp_path))))

"""End to end: train -> checkpoint -> resume -> evaluate, on 8 CPU devices."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from metricjax import evaluate as evaluate_lib
from metricjax import restore as restore_lib
from metricjax import train as train_lib
from metricjax.errors import UserError
from helpers import tiny_config
from helpers import REPO
from helpers import xla_flags


def tensorboard_scalars(workdir) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value)]} of the run's TensorBoard event files, read by
  TensorBoard's own loader (with no purging of its own: what is on disk)."""
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(
      str(workdir), size_guidance={event_accumulator.SCALARS: 0},
      purge_orphaned_data=False)
  events.Reload()
  return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
          for tag in events.Tags()["scalars"]}


def assert_events_match_jsonl(workdir, rows):
  """Every number of every metrics.jsonl row is in the events, at its step
  (TensorBoard keeps float32)."""
  scalars = tensorboard_scalars(workdir)
  keys = {k for r in rows for k in r if k != "step"}
  assert set(scalars) == keys
  for key in keys:
    assert scalars[key] == [(r["step"], float(np.float32(r[key])))
                            for r in rows if key in r], key


def test_devices_are_simulated():
  assert jax.device_count() == 8


def test_train_then_evaluate(tiny_idx_dir, tmp_path):
  workdir = str(tmp_path / "run")
  train_lib.train(tiny_config(tiny_idx_dir), workdir)
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [2, 4, 6]
  assert all(np.isfinite(r["loss"]) and r["examples_per_sec"] > 0 for r in rows)
  assert rows[0]["learning_rate"] > 0
  # `tensorboard --logdir` shows the same curves.
  assert_events_match_jsonl(workdir, rows)
  assert tensorboard_scalars(workdir)["loss"] == [
      (r["step"], r["loss"]) for r in rows]  # float32 already.

  result = evaluate_lib.evaluate(workdir)
  saved = json.load(open(os.path.join(workdir, "eval", "step_6.json")))
  assert saved == json.loads(json.dumps(result))
  assert set(saved["metrics"]) >= {"precision_at_1", "r_precision", "map_at_r",
                                   "recall_at_1", "recall_at_5", "recall_at_10"}
  assert saved["num_params"] > 0 and saved["param_bytes"] == 4 * saved["num_params"]
  assert saved["dataset"]["split_sizes"] == {"train": 64, "test": 32}
  assert saved["step"] == 6 and saved["config"]["total_steps"] == 6
  assert "precision_at_1" in evaluate_lib.format_table(result)
  # An earlier step can be evaluated too.
  assert evaluate_lib.evaluate(workdir, step=3)["step"] == 3


def test_cross_entropy_reports_accuracy(tiny_idx_dir, tmp_path):
  config = tiny_config(tiny_idx_dir, arg="loss=ce", total_steps=3)
  train_lib.train(config, str(tmp_path))
  metrics = evaluate_lib.evaluate(str(tmp_path))["metrics"]
  assert 0.0 <= metrics["accuracy"] <= 1.0


def _params(workdir):
  import orbax.checkpoint as ocp
  from metricjax import checkpoint
  mngr = checkpoint.manager(workdir, create=False)
  step = mngr.latest_step()
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))["state"]
  mngr.close()
  return step, restored["params"]


def test_resume_after_kill_matches_uninterrupted_run(tiny_idx_dir, tmp_path):
  config = tiny_config(tiny_idx_dir, augment=True)
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train_lib.train(config, straight)
  train_lib.train(config, resumed)
  # Simulate a kill after step 3's checkpoint: later checkpoint and logs gone.
  shutil.rmtree(os.path.join(resumed, "checkpoints", "6"))
  train_lib.train(config, resumed)

  step_a, params_a = _params(straight)
  step_b, params_b = _params(resumed)
  assert step_a == step_b == 6
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               params_a, params_b)
  rows = [json.loads(l) for l in open(os.path.join(resumed, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [2, 4, 6]
  # The events of steps 4 and 6 from before the kill are dropped too.
  assert_events_match_jsonl(resumed, rows)


def test_resume_refuses_a_different_model(tiny_idx_dir, tmp_path):
  train_lib.train(tiny_config(tiny_idx_dir, total_steps=3), str(tmp_path))
  config = tiny_config(tiny_idx_dir, total_steps=4)
  config.model.variant = "conv_only"
  with pytest.raises(UserError, match="model"):
    train_lib.train(config, str(tmp_path))


# Config errors (found before any data is read): tests/test_config.py.


def test_evaluate_on_empty_or_foreign_dir(tmp_path):
  with pytest.raises(UserError, match="No checkpoint"):
    evaluate_lib.evaluate(str(tmp_path))
  (tmp_path / "checkpoints" / "7").mkdir(parents=True)
  (tmp_path / "checkpoints" / "7" / "junk.txt").write_text("not a checkpoint")
  with pytest.raises(UserError):
    evaluate_lib.evaluate(str(tmp_path))
  assert not (tmp_path / "eval").exists()


def _cli(*args):
  env = dict(os.environ, XLA_FLAGS=xla_flags())
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)


def test_cli_errors_are_one_paragraph(tmp_path):
  proc = _cli("metricjax.evaluate", f"--workdir={tmp_path}")
  assert proc.returncode != 0
  assert "Error:" in proc.stderr and "Traceback" not in proc.stderr
  # A bad dataset and other errors of train's: tests/e2e/test_bad_input.py.
  proc = _cli("metricjax.train", "--config=configs/compact_involution.py",
              "--config.no_such_key=1", f"--workdir={tmp_path}")
  assert proc.returncode != 0 and "no_such_key" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_validation_is_held_out_of_training_on_its_own_schedule(tiny_idx_dir,
                                                                tmp_path):
  from metricjax import parallel, state as state_lib
  from metricjax.tasks import retrieval
  config = tiny_config(tiny_idx_dir, log_every=3, eval_every=2, val_size=16)
  task = retrieval.build(config, parallel.create_mesh(),
                         state_lib.create_optimizer(config))
  # The sampler draws from the 48 remaining training images only.
  assert task.data.labels.shape == (48,) and task.epoch_size == 48
  assert task.meta.val_size == 16 and task.meta.size == 48

  train_lib.train(config, str(tmp_path))
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [2, 3, 4, 6]
  assert ["val_precision_at_1" in r for r in rows] == [True, False, True, True]
  sizes = evaluate_lib.evaluate(str(tmp_path))["dataset"]["split_sizes"]
  assert sizes == {"train": 48, "test": 32,
                   "train (held out for validation)": 16}


def test_loss_parameters_train_and_checkpoint(grating_idx_dir, tmp_path):
  config = tiny_config(grating_idx_dir, arg="loss=proxy_anchor",
                       total_steps=30, log_every=30, checkpoint_every=30)
  config.loss.param_lr_multiplier = 100.0
  config.eval.batch_size = 64
  train_lib.train(config, str(tmp_path))
  restored = restore_lib.restore(str(tmp_path))
  proxies = np.asarray(restored.state.loss_params["proxies"])
  assert proxies.shape == (4, 16)  # PML's layout: (num_classes, dim).
  # An untrained net ranks the gratings at P@1 ~0.45.
  assert evaluate_lib.evaluate(str(tmp_path))["metrics"]["precision_at_1"] > 0.7


def test_loss_classes_must_be_the_datasets(tiny_idx_dir, tmp_path):
  # Known once the data is read (the other loss settings: test_config.py).
  config = tiny_config(tiny_idx_dir, arg="loss=proxy_anchor")
  config.loss.kwargs.num_classes = 7
  with pytest.raises(UserError, match="has 4 classes"):
    train_lib.train(config, str(tmp_path))


@pytest.mark.parametrize("placement", ["device", "stream"])
def test_steps_per_call_gives_the_same_run(tiny_idx_dir, tmp_path, placement):
  def run(steps_per_call):
    config = tiny_config(tiny_idx_dir, total_steps=7, log_every=2,
                         checkpoint_every=4, augment=True,
                         steps_per_call=steps_per_call)
    config.data.placement = placement
    workdir = str(tmp_path / f"n{steps_per_call}")
    train_lib.train(config, workdir)
    rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    return rows, _params(workdir)
  (rows1, (step1, params1)), (rows3, (step3, params3)) = run(1), run(3)
  assert [r["step"] for r in rows3] == [r["step"] for r in rows1] == [2, 4, 6, 7]
  # The same run up to float32 rounding: XLA may fuse across the unrolled
  # steps, and the MS miner's thresholds amplify last-bit differences
  # (measured: bit for bit in some runs, 1e-4 relative on parameters after
  # 7 steps in others).
  np.testing.assert_allclose([r["loss"] for r in rows3],
                             [r["loss"] for r in rows1], rtol=1e-4)
  assert step1 == step3 == 7
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3,
                                                       atol=1e-5),
               params1, params3)


def test_composed_loss_with_memory_random_miner_and_extra(tiny_idx_dir,
                                                          tmp_path):
  # On 8 devices: the memory holds the global batch, the random miner takes
  # the step's loss key, the extra loss's parameters train and checkpoint.
  config = tiny_config(tiny_idx_dir, arg="loss=contrastive", total_steps=5,
                       checkpoint_every=5)
  config.loss.miner = {"name": "distance_weighted", "cutoff": 0.5}
  config.loss.memory_size = 24
  config.loss.extra = [{"name": "arcface", "weight": 0.1}]
  workdir = str(tmp_path / "run")
  train_lib.train(config, workdir)
  state = restore_lib.restore(workdir).state
  memory = state.loss_state
  assert int(memory.ptr) == 5 * 16 % 24 and bool(np.all(memory.valid))
  # The last batch's 16 embeddings sit in the 16 slots before ptr.
  assert np.isfinite(np.asarray(memory.embeddings)).all()
  W = np.asarray(state.loss_params["extra"]["0"]["W"])
  assert W.shape == (16, 4)  # PML's ArcFace layout: (dim, num_classes).
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert all(np.isfinite(r["loss"]) for r in rows)



@pytest.mark.parametrize("name, kwargs, placement", [
    ("vicreg", {}, "device"),
    # SimCLR's NT-Xent, with a random miner (the step's loss key reaches
    # it), on streamed batches (augmented on the devices all the same).
    ("self_supervised", {"loss": {"name": "ntxent", "miner": {
        "name": "distance_weighted", "cutoff": 0.5}}}, "stream")])
def test_views_loss_trains_on_two_augmentations(tiny_idx_dir, tmp_path, name,
                                                kwargs, placement):
  # PML's VICRegLoss / SelfSupervisedLoss through `metricjax.train`: each
  # step embeds two augmentations of its batch (8 devices), no labels.
  from metricjax import data as data_lib
  from metricjax import losses
  from metricjax import parallel
  from metricjax import state as state_lib
  from metricjax.tasks import retrieval
  config = tiny_config(tiny_idx_dir, augment=True, total_steps=2,
                       checkpoint_every=2, log_every=1, sampler="uniform")
  config.loss.name = name
  config.loss.kwargs = kwargs
  config.loss.miner = None
  config.data.placement = placement
  workdir = str(tmp_path / "run")
  train_lib.train(config, workdir)
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [1, 2]
  assert all(np.isfinite(r["loss"]) for r in rows)
  assert np.isfinite(evaluate_lib.evaluate(workdir)["metrics"]
                     ["precision_at_1"])
  if placement == "stream":  # Streamed batches get their second view too.
    images = np.arange(16 * 28 * 28, dtype=np.uint8).reshape(16, 28, 28, 1)
    sampled = retrieval.make_stream_sample(config)(
        jax.random.key(0), {"images": images, "labels": np.zeros(16)})
    assert not np.array_equal(sampled["images"], sampled["views"])
    return
  # Step 1 again, by hand: its first view is the batch any other loss
  # draws, the second another augmentation, and its loss vicreg of the
  # two views' embeddings (one model call: batch norm sees both).
  mesh = parallel.create_mesh()
  task = retrieval.build(config, mesh, state_lib.create_optimizer(config))
  seed_key = jax.random.key(config.seed)
  state = jax.jit(task.init)(seed_key)
  key = data_lib.step_key(seed_key, 0)
  batch = jax.jit(task.sample)(key, task.data)
  other = retrieval.make_sample(config, losses.get_loss("ms"), mesh, 4)
  np.testing.assert_array_equal(batch["images"],
                                jax.jit(other)(key, task.data)["images"])
  assert set(batch) == {"images", "labels", "views"}
  assert not np.array_equal(batch["images"], batch["views"])
  value, _ = jax.jit(task.loss)(state.params, state.loss_params,
                                state.batch_stats, batch, state.loss_state,
                                data_lib.loss_key(key))
  outputs, _ = task.model.apply(
      {"params": state.params, "batch_stats": state.batch_stats},
      jax.numpy.concatenate([batch["images"], batch["views"]]), train=True,
      mutable=["batch_stats"])
  view1, view2 = np.split(np.asarray(outputs["embedding"], np.float32), 2)
  np.testing.assert_allclose(value, losses.vicreg_loss(view1, view2),
                             rtol=1e-4)
  np.testing.assert_allclose(value, rows[0]["loss"], rtol=1e-4)


def test_checkpoints_from_before_loss_state_restore_and_resume(tiny_run,
                                                              tmp_path):
  # Checkpoints written before TrainState had loss_state (2026-12-08) hold
  # the other fields only; they restore with an empty one and resume.
  from metricjax import checkpoint  # pylint: disable=g-import-not-at-top
  from metricjax import state as state_lib  # pylint: disable=g-import-not-at-top
  workdir, _, config = tiny_run
  old = str(tmp_path / "old")
  restored = restore_lib.restore(workdir)
  legacy = state_lib.TrainStateWithoutLossState(
      **{k: getattr(restored.state, k)
         for k in state_lib.TrainStateWithoutLossState.__dataclass_fields__})
  src = checkpoint.manager(workdir, create=False)
  meta = checkpoint.restore_meta(src, restored.step)
  src.close()
  with checkpoint.finishing(checkpoint.manager(old)) as mngr:
    checkpoint.save(mngr, restored.step, legacy, meta)
  again = restore_lib.restore(old)
  assert again.state.loss_state == {}
  jax.tree.map(np.testing.assert_array_equal, again.state.params,
               restored.state.params)
  config = config.copy_and_resolve_references()
  config.total_steps = restored.step + 1
  train_lib.train(config, old)
  assert restore_lib.restore(old).step == restored.step + 1

"""The streaming input path: the device sampler on the host, training from
packed ArrayRecord splits that resumes exactly and equals the on-device
run, and the placement that chooses it."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from metricjax import data as data_lib
from metricjax import evaluate as evaluate_lib
from metricjax import parallel
from metricjax import train as train_lib
from metricjax.data import load_dataset
from helpers import pack_idx_split
from helpers import tiny_config


def test_host_sampler_draws_the_device_batches():
  labels = np.repeat(np.arange(5), [9, 3, 7, 1, 0]).astype(np.int32)
  index = data_lib.ClassIndex.from_labels(labels, 5)
  mesh = parallel.create_mesh()
  seed_key = jax.jit(lambda: jax.random.key(4),
                     out_shardings=parallel.replicated(mesh))()
  on_devices = parallel.replicate(index, mesh)
  for name, batch, k in (("balanced", 12, 4), ("uniform", 16, None),
                         ("triplets", 16, None)):
    sample_indices = data_lib.make_index_sampler(
        name, batch_size=batch, num_classes=5, samples_per_class=k)

    @jax.jit
    def device(step, index, sample_indices=sample_indices):
      # As tasks/retrieval.make_sample draws them inside the training step.
      key = data_lib.batch_keys(data_lib.step_key(seed_key, step))[0]
      return jax.lax.with_sharding_constraint(
          sample_indices(key, index), parallel.batch_sharding(mesh))

    host = data_lib.HostSampler(sample_indices, index)
    for step in range(5):
      rows = host(4, step)
      np.testing.assert_array_equal(rows, np.asarray(device(step, on_devices)))
      np.testing.assert_array_equal(rows, host(4, step))  # Deterministic.
    assert not np.array_equal(rows, host(5, step))  # Another seed.
    assert not np.array_equal(rows, host(4, step + 1))  # Another step.
    if name == "balanced":
      groups = labels[rows].reshape(3, 4)
      assert (groups == groups[:, :1]).all()  # P classes x K, grouped.
      assert len(set(groups[:, 0])) == 3 and 4 not in groups  # Non-empty.
    elif name == "uniform":
      assert len(set(rows)) == 16
    else:
      a, p, n = rows.reshape(3, 16)
      assert (labels[a] == labels[p]).all() and (a != p).all()
      assert (labels[a] != labels[n]).all() and not (labels[a] == 3).any()


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f]


def test_streaming_training_resumes_exactly(tiny_idx_dir, tmp_path):
  for split in ("train", "test"):
    pack_idx_split(tiny_idx_dir, tmp_path / "data", split)
  config = tiny_config(tiny_idx_dir, augment=True, log_every=1,
                       eval_every=3, val_size=8)
  config.dataset = f"packed:{tmp_path / 'data'}"
  config.data.placement = "stream"
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train_lib.train(config, straight)
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "6"))
  train_lib.train(config, resumed)
  assert _losses(straight) == _losses(resumed) and len(_losses(straight)) == 6
  a, b = evaluate_lib.evaluate(straight), evaluate_lib.evaluate(resumed)
  assert a["metrics"] == b["metrics"]
  assert a["dataset"]["split_sizes"]["train"] == 56


def test_auto_placement_streams_what_exceeds_the_budget(tiny_idx_dir,
                                                         tmp_path):
  from metricjax.tasks import retrieval
  config = tiny_config(tiny_idx_dir)
  ds = load_dataset(f"idx:{tiny_idx_dir}", "train")  # 64 x 784 bytes.
  config.data.device_budget_mb = 0.05
  assert retrieval.placement(config, ds) == "device"
  config.data.device_budget_mb = 0.04
  assert retrieval.placement(config, ds) == "stream"
  # The stream path trains too, from an in-memory split.
  config.data.placement = "stream"
  train_lib.train(config, str(tmp_path))
  assert len(_losses(str(tmp_path))) == 3


@pytest.fixture(scope="module")
def packed_tiny(tiny_idx_dir, tmp_path_factory):
  """tiny_idx_dir packed (train and test) as a `packed:DIR` dataset."""
  root = tmp_path_factory.mktemp("packed_tiny")
  for split in ("train", "test"):
    pack_idx_split(tiny_idx_dir, root, split)
  return f"packed:{root}"


@pytest.mark.parametrize("sampler", ["balanced", "uniform", "triplets"])
def test_placement_is_a_speed_choice(tiny_idx_dir, packed_tiny, tmp_path,
                                     sampler):
  """The same config trains on the same batches whether its split lives on
  the devices or is streamed from the host: the same per-step losses (the
  model is the smallest there is: the batches are the point)."""
  losses = {}
  for placement in ("device", "stream"):
    config = tiny_config(tiny_idx_dir, total_steps=20, log_every=1,
                         checkpoint_every=20, augment=True,
                         arg="loss=ce" if sampler == "uniform" else None)
    config.model.update(variant="conv_only", widths=(8,))
    config.dataset = packed_tiny
    config.data.placement = placement
    if sampler == "triplets":
      config.sampler, config.batch_size = "triplets", 8
      config.loss.name = "shadow_explicit"
      config.loss.kwargs = dict(margin=0.2, normalize=True)
    assert config.sampler == sampler
    workdir = str(tmp_path / placement)
    train_lib.train(config, workdir)
    losses[placement] = _losses(workdir)
  assert len(losses["device"]) == 20
  np.testing.assert_allclose(losses["stream"], losses["device"], rtol=1e-5)

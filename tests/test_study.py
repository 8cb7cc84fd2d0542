"""metricjax.study: the one comparison rule, the plateau flag and the
--scale=long budget (whole epochs, validation every half epoch)."""

import json
import os
import shutil

import pytest
from scipy import stats

from metricjax import study
from metricjax.config_utils import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_compare_is_welchs_95_interval():
  a, b = [0.61, 0.60, 0.62], [0.55, 0.58, 0.50, 0.57]
  c = study.compare(a, b)
  low, high = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
  assert c.diff == pytest.approx((low + high) / 2)
  assert c.half == pytest.approx((high - low) / 2)
  assert c.verdict == "above" and "beyond" in c.text()


def test_compare_verdicts():
  assert study.compare([0.5, 0.6, 0.7], [0.55, 0.65, 0.6]).verdict == "within"
  assert study.compare([0.1, 0.11, 0.12], [0.5, 0.52, 0.51]).verdict == "below"
  one = study.compare([0.5], [0.1, 0.2])
  assert one.verdict == "unjudged" and one.half is None
  assert "not judged" in one.text()
  # No spread at all: any difference is beyond it, none is within.
  assert study.compare([1, 1], [2, 2]).verdict == "below"
  assert study.compare([1, 1], [1, 1]).verdict == "within"


def _run(curve, total_steps=400, epochs=2.0):
  return dict(curves={"val_map_at_r": curve}, total_steps=total_steps,
              epochs=epochs)


def test_still_improving():
  rising = [(100, 0.40), (200, 0.50), (300, 0.55), (400, 0.60)]
  flat = [(100, 0.40), (200, 0.50), (300, 0.600), (400, 0.603)]
  assert study.still_improving([_run(rising)], "val_map_at_r") == "yes (+9.1%)"
  assert study.still_improving([_run(flat)], "val_map_at_r") == "no (+0.5%)"
  # The seed mean decides: one flat and one rising seed average to rising.
  assert study.still_improving([_run(flat), _run(rising)],
                               "val_map_at_r").startswith("yes")
  assert study.still_improving([_run([(400, 0.6)])], "val_map_at_r") == "—"
  assert study.mean_curve([_run(rising)], "val_map_at_r")[0] == (0.5, 0.40)


@pytest.mark.slow
def test_long_scale_trains_whole_epochs_validated_every_half(tiny_idx_dir,
                                                             tmp_path):
  config = load_config(os.path.join(REPO, "configs", "compact_involution.py"))
  config.dataset = f"idx:{tiny_idx_dir}"
  config.model.widths = (8, 16, 16, 16)
  config.model.embedding_dim = 16
  # 64 training images, 16 held out: 48 trained on, half an epoch is 3
  # steps of 8.
  scale = dict(epochs={"*": 2}, batch_size=8, samples_per_class=4,
               val_size=16, eval_batch=16)
  config = study.set_budget(config, scale, seed=1)
  assert study.epoch_size(config) == 48
  assert (config.total_steps, config.eval_every) == (12, 3)
  assert config.keep_checkpoints == 5 and config.checkpoint_every == 3
  workdir = str(tmp_path / "run")
  records = str(tmp_path / "records")
  calls = []

  def steps_measured(run_dir, step):
    calls.append((run_dir, step))
    return float(step)

  summary = study.run(config, workdir, select="val_map_at_r", scale="long",
                      record_dir=records,
                      extra_metrics=dict(steps_measured=steps_measured))
  assert calls == [(workdir, summary["step"])]
  assert summary["metrics"]["steps_measured"] == summary["step"]
  # The task's own epoch count agrees with the planned one.
  assert summary["epochs"] == pytest.approx(2.0)
  assert (summary["scale"], summary["seed"], summary["total_steps"]) == (
      "long", 1, 12)
  assert [s for s, _ in summary["curves"]["val_map_at_r"]] == [3, 6, 9, 12]
  assert [e for e, _ in study.mean_curve([summary], "val_map_at_r")] == [
      0.5, 1.0, 1.5, 2.0]
  assert study.still_improving([summary], "val_map_at_r") != "—"
  # Done runs are read back, not retrained.
  mtime = os.path.getmtime(os.path.join(workdir, "summary.json"))
  again = study.run(config, workdir, select="val_map_at_r", scale="long")
  assert os.path.getmtime(os.path.join(workdir, "summary.json")) == mtime
  assert json.loads(json.dumps(summary)) == json.loads(json.dumps(again))
  # A fresh clone holds the record only: the run is neither retrained nor
  # re-measured, and the summary is the same.
  shutil.rmtree(workdir)
  cloned = study.run(config, workdir, select="val_map_at_r", scale="long",
                     record_dir=records,
                     extra_metrics=dict(steps_measured=steps_measured))
  assert not os.path.exists(workdir) and len(calls) == 1
  assert json.loads(json.dumps(cloned)) == json.loads(json.dumps(summary))

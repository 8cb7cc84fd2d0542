"""metricjax/metric_writers.py: metrics.jsonl and TensorBoard events hold
the same rows, and resuming drops both past the restored step (the
training loop's use is tested in tests/test_train.py)."""

import json
import os

import numpy as np
from tensorboard.backend.event_processing import event_accumulator

from metricjax import metric_writers


def _scalars(logdir):
  events = event_accumulator.EventAccumulator(
      str(logdir), size_guidance={event_accumulator.SCALARS: 0},
      purge_orphaned_data=False)
  events.Reload()
  # By step: the reader takes files in name order (time in seconds, host,
  # pid, then a per-process counter), and two writers of one test process
  # within one second may sort "…10" before "…9"; a resumed run is a new
  # process, seconds later, whose file sorts last.
  return {tag: sorted((e.step, e.value) for e in events.Scalars(tag))
          for tag in events.Tags()["scalars"]}


def _event_files(logdir):
  return sorted(n for n in os.listdir(logdir)
                if n.startswith(metric_writers.EVENTS_PREFIX))


def test_resume_drops_rows_and_events_past_the_step(tmp_path):
  writer = metric_writers.create_run_writer(str(tmp_path))
  for step in (2, 4, 6):
    writer.write_scalars(step, {"loss": 1.0 / step, "tag": "not a number"})
  writer.close()
  # Killed while writing its next event: a torn record.
  (first,) = _event_files(tmp_path)
  with open(tmp_path / first, "ab") as f:
    f.write(b"\x20\x00\x00")

  writer = metric_writers.create_run_writer(str(tmp_path), resume_step=3)
  for step in (4, 6):
    writer.write_scalars(step, {"loss": 10.0 / step})
  writer.close()
  assert len(_event_files(tmp_path)) == 2  # Appended in a file of its own.
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert rows == [{"step": 2, "loss": 0.5, "tag": "not a number"},
                  {"step": 4, "loss": 2.5}, {"step": 6, "loss": 10.0 / 6}]
  assert _scalars(tmp_path) == {
      "loss": [(2, 0.5), (4, 2.5), (6, float(np.float32(10.0 / 6)))]}


def test_only_the_enabled_process_writes(tmp_path):
  writer = metric_writers.create_run_writer(str(tmp_path), enabled=False)
  writer.write_scalars(1, {"loss": 1.0})
  writer.close()
  assert os.listdir(tmp_path) == []

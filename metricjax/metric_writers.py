"""Where a run's metrics go: DIR/metrics.jsonl and TensorBoard event files.

Every logged row is one line of DIR/metrics.jsonl (what the tests, tools,
experiments and studies read) and the same scalars in a TensorBoard event
file in DIR, so `tensorboard --logdir runs/` shows the curves of every run
under runs/ (each run named by its workdir). The writers keep clu's
MetricWriter interface (`write_scalars(step, scalars)`, `flush()`,
`close()`).

Why not clu itself: clu's metric_writers package (0.0.12, its latest
release) imports TensorFlow when it is imported, even for its interface and
MultiWriter, and so does clu.periodic_actions (ReportProgress); TensorFlow is
no dependency of metricjax (hundreds of MB, and TFDS takes other code paths
where it can import it). The event files are written by TensorBoard's own
EventFileWriter and protos (what torch.utils.tensorboard uses; numpy only,
no TensorFlow), so the format is TensorBoard's.

Resuming: both keep what was logged up to the restored step and drop the
rest (a run killed between a log and a checkpoint would otherwise show
those steps twice), and a torn last record; then the resumed run appends,
to metrics.jsonl and to a new event file (TensorBoard's one file per
writer). Dropping is done on disk, so that every reader (TensorBoard's
loaders, tbparse, a script) sees what metrics.jsonl holds.
"""

import json
import os
import time
from typing import Any, Mapping

from metricjax import errors
from metricjax import files
from metricjax.errors import UserError


def _cannot_write(path: str, e: Exception) -> UserError:
  return UserError(f"Cannot append to {path}: {errors.one_line(e)}. Free "
                   "disk space or fix the permissions, then run again: it "
                   "resumes from the last checkpoint.")


class JsonlWriter:
  """One JSON object a line, `{"step": step, **scalars}`, appended to path;
  on resume (resume_step > 0), the rows past resume_step and a torn last
  line are dropped first."""

  def __init__(self, path: str, resume_step: int = 0):
    self.path = path
    rows = []
    if resume_step and os.path.exists(path):
      rows = rows_up_to(path, resume_step)
    files.write_text(path, "".join(rows))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    try:
      with open(self.path, "a") as f:
        f.write(json.dumps(dict(step=step, **scalars)) + "\n")
    except OSError as e:
      raise _cannot_write(self.path, e) from e

  def flush(self) -> None:
    pass  # Every row is closed as it is written.

  def close(self) -> None:
    pass


def rows_up_to(path: str, step: int) -> list[str]:
  """metrics.jsonl's lines of steps <= step, without a torn last line (a run
  killed while appending)."""
  rows = []
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      if row["step"] <= step:
        rows.append(line if line.endswith("\n") else line + "\n")
  return rows


class SummaryWriter:
  """Scalars as TensorBoard events in a new event file of logdir, flushed
  at every write; on resume (resume_step > 0), the events of earlier files
  past resume_step are dropped first (events_up_to).

  TensorBoard is imported here, not with the module: what imports
  metricjax.train without training (metricjax.aot on an accelerator
  machine's bare image, tools/device_check.py) needs none of it."""

  def __init__(self, logdir: str, resume_step: int = 0):
    # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.summary.writer import event_file_writer
    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    self.logdir = logdir
    try:
      if resume_step:
        for name in sorted(os.listdir(logdir)):
          if EVENTS_PREFIX in name:
            events_up_to(os.path.join(logdir, name), resume_step)
      self._writer = event_file_writer.EventFileWriter(logdir)
    except OSError as e:
      raise _cannot_write(f"an event file in {logdir}", e) from e

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    summary = self._summary(value=[
        self._summary.Value(tag=tag, simple_value=float(value))
        for tag, value in scalars.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)])
    try:
      self._writer.add_event(self._event(
          step=int(step), wall_time=time.time(), summary=summary))
      self._writer.flush()
    except OSError as e:
      raise _cannot_write(f"an event file in {self.logdir}", e) from e

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


EVENTS_PREFIX = "events.out.tfevents."


def events_up_to(path: str, step: int) -> None:
  """Rewrites an event file without its events past step and without a torn
  last record (a run killed while writing); a file with neither is left
  as it is."""
  # pylint: disable=g-import-not-at-top
  from tensorboard.backend.event_processing import event_file_loader
  from tensorboard.compat.proto import event_pb2
  from tensorboard.summary.writer import record_writer
  records = list(event_file_loader.RawEventFileLoader(path).Load())
  kept = [r for r in records if event_pb2.Event.FromString(r).step <= step]
  # A record is its data and 16 bytes of length and checksums.
  if (len(kept) == len(records)
      and sum(len(r) + 16 for r in records) == os.path.getsize(path)):
    return
  with files.atomic_write(path, "wb") as f:
    out = record_writer.RecordWriter(f)
    for record in kept:
      out.write(record)


class MultiWriter:
  """Writes to every writer, in order (clu.metric_writers.MultiWriter)."""

  def __init__(self, writers):
    self.writers = list(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    for writer in self.writers:
      writer.write_scalars(step, scalars)

  def flush(self) -> None:
    for writer in self.writers:
      writer.flush()

  def close(self) -> None:
    for writer in self.writers:
      writer.close()


def create_run_writer(workdir: str, resume_step: int = 0, *,
                      enabled: bool = True) -> MultiWriter:
  """DIR/metrics.jsonl and DIR's TensorBoard events; nothing where not
  enabled (every process but process 0)."""
  if not enabled:
    return MultiWriter([])
  return MultiWriter([
      JsonlWriter(os.path.join(workdir, "metrics.jsonl"), resume_step),
      SummaryWriter(workdir, resume_step)])

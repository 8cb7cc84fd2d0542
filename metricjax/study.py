"""The skeleton every runner in experiments/ shares.

A runner defines its scales (budgets) and rows, and gets from here: the
flags (--scale, --seeds, --workdir, --out, --report_only) and default
paths; the budget of a retrieval config (a number of steps, or at
`--scale=long` whole epochs validated every half epoch); the grid loop
over rows x seeds (seed-major, resumable, finished runs skipped); the one
rule that says whether two rows differ beyond the seed spread (`compare`);
the page header; and the results file a page is a pure function of.

A run's summary (test metrics at the checkpoint selected on validation,
validation curves, timings, the machine) is stored in WORKDIR/summary.json
when it completes, and copied to RECORD_DIR/NAME-TAG.json when the runner
gives one (OUT/runs, committed with the page): a runner started again skips
finished runs, also on a fresh clone without the run directories (a long
grid spans sessions and machines), and resumes unfinished ones from their
checkpoints. A page (OUT/README.md and its
figures) is rendered from OUT/results.json alone, so `--report_only`
rewrites it without the run directories.
"""

import dataclasses
import functools
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import NamedTuple

from absl import flags
import ml_collections
import numpy as np
from scipy import stats  # A dependency of jax itself.

from metricjax import data as data_lib
from metricjax import evaluate as evaluate_lib
from metricjax import files
from metricjax import inference
from metricjax import restore as restore_lib
from metricjax import train as train_lib
from metricjax.errors import UserError

# Validations per epoch at --scale=long (issue 22: every half epoch).
LONG_VALIDATIONS_PER_EPOCH = 2
# A row "still improved" when its seed-mean validation curve rose by more
# than this (relative) over the last quarter of training.
PLATEAU_FRACTION, PLATEAU_GAIN = 0.25, 0.01


def define_flags(scales, default: str = "cpu") -> None:
  """The flags of every runner; call once at import, before app.run."""
  flags.DEFINE_enum("scale", default, list(scales),
                    "Budget (smoke: the pipeline in seconds, for tests).")
  flags.DEFINE_integer("seeds", None, "Seeds (default: the scale's).")
  flags.DEFINE_string("workdir", None,
                      "Runs go here (default runs/STUDY-SCALE).")
  flags.DEFINE_string(
      "out", None, "Results folder (default experiments/results/STUDY at "
      "--scale=cpu, experiments/results/STUDY/SCALE otherwise; smoke: "
      "WORKDIR/results).")
  flags.DEFINE_bool("report_only", False,
                    "Rewrite OUT/README.md and its plots from "
                    "OUT/results.json; train nothing.")


@dataclasses.dataclass(frozen=True)
class Setup:
  """A runner's parsed flags and paths."""
  name: str
  scale_name: str
  scale: dict
  seeds: int
  root: str
  out: str
  report_only: bool
  command: str


def setup(name: str, scales, script: str, page: str | None = None) -> Setup:
  """The flags as a Setup. script: the runner's __file__; page: the
  results subfolder (default: none at cpu scale, else the scale's name)."""
  f = flags.FLAGS
  repo = os.path.dirname(os.path.dirname(os.path.abspath(script)))
  root = f.workdir or os.path.join("runs", f"{name}-{f.scale}")
  page = page if page is not None else ("" if f.scale == "cpu" else f.scale)
  out = f.out or (os.path.join(root, "results") if f.scale == "smoke" else
                  os.path.join(repo, "experiments", "results", name, page))
  return Setup(name=name, scale_name=f.scale, scale=scales[f.scale],
               seeds=f.seeds or scales[f.scale]["seeds"], root=root,
               out=out.rstrip("/"), report_only=f.report_only,
               command=command_line(os.path.basename(script)))


def command_line(script: str) -> str:
  """This runner's command line as typed from the repository root. The
  data comes from $METRICJAX_DATA_DIR, recorded by machine()."""
  return " ".join(["python", f"experiments/{script}", *sys.argv[1:]])


def machine() -> dict:
  """Where and when a run finished: CPU model, CPU count, load averages
  (1/5/15 min), UTC time, and the data folder."""
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f
                 if line.startswith("model name"))
  except (OSError, StopIteration):
    cpu = platform.processor() or platform.machine()
  return dict(cpu=cpu, cpus=os.cpu_count(),
              load=[round(x, 2) for x in os.getloadavg()],
              date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              data_dir=os.environ.get("METRICJAX_DATA_DIR"))


def run_dir(root: str, name: str, settings) -> str:
  """ROOT/NAME-TAG, TAG a hash of every setting (a ConfigDict or a JSON
  value): another setting is another run, never a stale one reused."""
  text = (settings.to_json_best_effort(sort_keys=True)
          if isinstance(settings, ml_collections.ConfigDict)
          else json.dumps(settings, sort_keys=True))
  tag = hashlib.sha256(text.encode()).hexdigest()[:10]
  return os.path.join(root, f"{name}-{tag}")


def run(config: ml_collections.ConfigDict, workdir: str, *,
        select: str | None, scale: str, record_dir: str | None = None,
        extra_metrics=None) -> dict:
  """Trains (or resumes) and evaluates on the test split; the summary,
  with the seed, scale, epochs trained and workdir.

  select: a logged validation metric (e.g. "val_map_at_r"): the test split
  is evaluated at the checkpoint with its best value (ties: earliest);
  None: at the last step.
  record_dir: where a copy of the summary is kept (and read back when the
  run directory is gone).
  extra_metrics: {name: fn(workdir, step) -> value}, measured once on the
  selected checkpoint and stored with the test metrics (so that a record
  carries them).
  """
  path = os.path.join(workdir, "summary.json")
  record = (os.path.join(record_dir, os.path.basename(workdir) + ".json")
            if record_dir else None)
  if not os.path.exists(path) and record and os.path.exists(record):
    with open(record) as f:
      return dict(json.load(f), seed=config.seed, scale=scale,
                  workdir=workdir)
  if not os.path.exists(path):
    start = time.perf_counter()
    train_lib.train(config, workdir)
    seconds = time.perf_counter() - start
    result = evaluate_lib.evaluate(
        workdir, restore_lib.best_step(workdir, select) if select else None)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      rows = [json.loads(line) for line in f]
    val_keys = sorted({k for r in rows for k in r if k.startswith("val_")})
    files.write_json(path, dict(
        step=result["step"], metrics=result["metrics"],
        num_params=result["num_params"], param_bytes=result["param_bytes"],
        train_seconds=seconds, total_steps=rows[-1]["step"],
        epochs=rows[-1]["epoch"],
        images_per_sec=statistics.median(
            [r["examples_per_sec"] for r in rows[1:]] or
            [rows[-1]["examples_per_sec"]]),
        step_temp_bytes=rows[-1].get("step_temp_bytes"),
        dataset=result["dataset"],
        curves={k: [(r["step"], r[k]) for r in rows if k in r]
                for k in val_keys},
        loss_curve=[(r["step"], r["loss"]) for r in rows],
        machine=machine()))
  with open(path) as f:
    summary = json.load(f)
  missing = {k: fn for k, fn in (extra_metrics or {}).items()
             if k not in summary["metrics"]}
  if missing:
    summary["metrics"].update(
        {k: fn(workdir, summary["step"]) for k, fn in missing.items()})
    files.write_json(path, summary)
  if record and (missing or not os.path.exists(record)):
    files.write_json(record, summary)
  return dict(summary, seed=config.seed, scale=scale, workdir=workdir)


def run_grid(rows, seeds: int, run_one, on_done=None) -> dict:
  """{row: [summary per seed]} of run_one(row, seed) over rows x seeds.

  Seed-major: every row's seed 0 before any seed 1, so a grid cut short
  still compares all rows. on_done(results, pending) after every run
  (skipped ones included); pending: the (seed, row) still to run."""
  todo = [(seed, row) for seed in range(seeds) for row in rows]
  results = {row: [] for row in rows}
  for i, (seed, row) in enumerate(todo):
    results[row].append(run_one(row, seed))
    if on_done:
      on_done(results, todo[i + 1:])
  return results


class Comparison(NamedTuple):
  """a's mean minus b's and the half-width of its 95% interval (None with
  fewer than 2 seeds on a side: no spread to judge)."""
  diff: float
  half: float | None

  @property
  def verdict(self) -> str:
    """"above" or "below" (beyond the seed spread), "within", "unjudged"."""
    if self.half is None:
      return "unjudged"
    if abs(self.diff) <= self.half:
      return "within"
    return "above" if self.diff > 0 else "below"

  def text(self, digits: int = 4) -> str:
    if self.half is None:
      return f"{self.diff:+.{digits}f} (one seed on a side: not judged)"
    said = "within" if self.verdict == "within" else "beyond"
    return (f"{self.diff:+.{digits}f} ± {self.half:.{digits}f}, {said} the "
            "seed spread")


def compare(a, b) -> Comparison:
  """The project's one rule for "beyond the seed spread": the difference
  of the means of a and b (per-seed values) with its Welch 95% interval
  (unequal variances, Welch-Satterthwaite degrees of freedom); beyond the
  spread when the interval excludes 0. See experiments/README.md."""
  a, b = [float(v) for v in a], [float(v) for v in b]
  diff = statistics.fmean(a) - statistics.fmean(b)
  if min(len(a), len(b)) < 2:
    return Comparison(diff, None)
  va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
  if va + vb == 0:
    return Comparison(diff, 0.0)
  df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
  return Comparison(diff, float(stats.t.ppf(0.975, df)) * math.sqrt(va + vb))


def fmt_std(values, scale: float = 1.0, digits: int = 4) -> str:
  """mean ± sample standard deviation (the mean alone for one value)."""
  values = [scale * float(v) for v in values]
  mean = statistics.fmean(values)
  if len(values) < 2:
    return f"{mean:.{digits}f}"
  return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def steps_to(curve, target: float):
  """The first logged step whose value reaches target, or None."""
  return next((s for s, v in curve if v >= target), None)


def to_target(runs, key: str, target: float):
  """(median steps, median epochs, how many runs) to the first validation
  where `key` reached target, over the runs that reached it."""
  reached = [(s, s * r["epochs"] / r["total_steps"]) for r in runs
             if (s := steps_to(r["curves"][key], target)) is not None]
  if not reached:
    return None, None, 0
  return (statistics.median(s for s, _ in reached),
          statistics.median(e for _, e in reached), len(reached))


def mean_curve(runs, key: str) -> list[tuple[float, float]]:
  """[(epoch, seed-mean value)] of a logged validation metric over the
  steps every run logged."""
  curves = [dict((s, v) for s, v in r["curves"][key]) for r in runs]
  steps = sorted(set.intersection(*(set(c) for c in curves)))
  per_step = runs[0]["epochs"] / runs[0]["total_steps"]
  return [(s * per_step, statistics.fmean(c[s] for c in curves))
          for s in steps]


def still_improving(runs, key: str) -> str:
  """A table cell: whether the seed-mean curve `key` rose by more than
  PLATEAU_GAIN (relative) from the last validation at or before
  1 - PLATEAU_FRACTION of training to the end ("yes (+2.3%)"), "—"
  without a validation before the end."""
  curve = mean_curve(runs, key)
  end = curve[-1][0]
  before = [v for e, v in curve if e <= (1 - PLATEAU_FRACTION) * end + 1e-9]
  if not before or before[-1] <= 0:
    return "—"
  gain = curve[-1][1] / before[-1] - 1
  return f"{'yes' if gain > PLATEAU_GAIN else 'no'} ({100 * gain:+.1f}%)"


def per_dataset(value, dataset: str):
  """value, or value[dataset] (value["*"] for other datasets) when a dict."""
  if isinstance(value, dict):
    return value.get(dataset, value["*"])
  return value


@functools.lru_cache(maxsize=None)
def _train_size(dataset: str, split: str, imbalance: str, val_size: int) -> int:
  ds = data_lib.load_dataset(dataset, split)
  if imbalance:
    ds = data_lib.imbalanced(ds, **json.loads(imbalance))
  return len(ds) - val_size


def epoch_size(config: ml_collections.ConfigDict) -> int:
  """Training examples of a retrieval config after its imbalance and its
  held-out validation, as tasks.retrieval builds them."""
  imbalance = (config.imbalance.to_dict() if config.imbalance.classes
               else None)
  return _train_size(config.dataset, config.train_split,
                     json.dumps(imbalance) if imbalance else "",
                     config.val_size)


def set_budget(config: ml_collections.ConfigDict, scale: dict, seed: int, *,
               batch_size: int | None = None) -> ml_collections.ConfigDict:
  """A runner's scale on a retrieval config: batch (batch_size overrides
  the scale's, e.g. a number of explicit triplets), validation with a
  checkpoint at every validated step (selection needs them), and steps:
  scale["steps"] (validation every scale["eval_every"]) or, at
  --scale=long, scale["epochs"] whole epochs validated every half epoch
  (each half epoch rounded up to whole steps)."""
  config.batch_size = batch_size or scale["batch_size"]
  config.samples_per_class = scale["samples_per_class"]
  config.val_size = scale["val_size"]
  config.eval.batch_size = scale["eval_batch"]
  config.seed = seed
  if "epochs" in scale:
    per_step = config.batch_size * (3 if config.sampler == "triplets" else 1)
    every = math.ceil(epoch_size(config) / LONG_VALIDATIONS_PER_EPOCH
                      / per_step)
    steps = every * LONG_VALIDATIONS_PER_EPOCH * per_dataset(
        scale["epochs"], config.dataset)
  else:
    steps = per_dataset(scale["steps"], config.dataset)
    every = scale["eval_every"]
  config.total_steps = steps
  config.warmup_steps = min(config.warmup_steps, steps // 10)
  config.log_every = config.eval_every = every
  config.checkpoint_every = every
  config.keep_checkpoints = steps // every + 1
  return config


def settings(scale: dict) -> dict:
  """A scale's settings as they go into results.json (functions left out)."""
  return {k: v for k, v in scale.items() if not callable(v)}


def write_results(out: str, page: dict) -> None:
  files.write_json(os.path.join(out, "results.json"), page)


def read_results(out: str) -> dict:
  path = os.path.join(out, "results.json")
  if not os.path.exists(path):
    raise UserError(f"--report_only: {path} does not exist. Run the study "
                    "first (without --report_only), or pass the --out "
                    "holding its results.json.")
  with open(path) as f:
    return json.load(f)


def write_page(out: str, lines) -> None:
  files.write_text(os.path.join(out, "README.md"), "\n".join(lines) + "\n")


def header(page: dict, title: str) -> list[str]:
  """The title, command, data, machine and training time of a page."""
  # Every run once: a row's runs and its other searched trials, if any.
  runs = [r for row in page["rows"] for r in row["runs"] + [
      s for i, s in enumerate(row.get("searched", [])) if i != row["chosen"]]]
  machines = [r["machine"] for r in runs if r.get("machine")]
  if machines:
    loads = [m["load"][0] for m in machines]
    dates = sorted(m["date"] for m in machines)
    where = (", ".join(sorted({f"{m['cpu']} ({m['cpus']} CPUs)"
                               for m in machines}))
             + f"; 1-min load average {min(loads):.2f} to {max(loads):.2f} "
             f"as runs finished; runs finished {dates[0]} to {dates[-1]}")
    data = sorted({m["data_dir"] or "unset" for m in machines})
  else:
    where, data = page.get("machine", "not recorded"), [page.get("data_dir")]
  minutes = sum(r["train_seconds"] for r in runs) / 60
  return [f"# {title} ({page['scale']} scale)", "",
          f"Command: `{page['command']}`, with `$METRICJAX_DATA_DIR` "
          "pointing at the offline datasets (here "
          f"{', '.join(map(str, data))}).",
          "", f"Machine: {where}. {len(runs)} runs, {minutes:.0f} min of "
          "training in all; images/s and train time are of a machine shared "
          "with other jobs: compare them within a page only.", "",
          "Every \"beyond / within the seed spread\" below is the project's "
          "one rule (`study.compare`): the difference of two rows' means "
          "with its Welch 95% interval; beyond when it excludes 0.", ""]


def split_embeddings(workdir: str, step: int, limit: int = 2000,
                     split: str | None = None):
  """(embeddings, labels) of `limit` images of the evaluation split
  (default config.eval_split) at a checkpoint of a retrieval run: a seeded
  random subset in file order, since image folders are sorted by class and
  their first images would be one or two classes."""
  restored = restore_lib.restore(workdir, step)
  ds = data_lib.load_dataset(restored.config.dataset,
                             split or restored.config.eval_split)
  pick = np.sort(np.random.default_rng(0).permutation(len(ds))[:limit])
  variables = {"params": restored.state.params,
               "batch_stats": restored.state.batch_stats}
  outputs = inference.embed(
      restored.model, variables, ds.images[pick],
      batch_size=restored.config.eval.batch_size, mesh=restored.mesh,
      desc=f"embed {ds.name}")
  return outputs["embedding"], np.asarray(ds.labels)[pick]

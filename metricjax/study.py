"""What the experiment runners in experiments/ share: run a config once
(resumable, skipped when done), select its checkpoint on validation,
summarise seeds, write a results page.

A run's summary (test metrics at the selected step, validation curve,
timings) is stored in WORKDIR/summary.json when it completes; a runner
started again skips finished runs and resumes unfinished ones from their
checkpoints.
"""

import hashlib
import json
import math
import os
import statistics
import sys
import time

import ml_collections
import numpy as np

from metricjax import data as data_lib
from metricjax import evaluate as evaluate_lib
from metricjax import files
from metricjax import inference
from metricjax import restore as restore_lib
from metricjax import train as train_lib

# Two-sided 95% Student t quantiles t(0.975, df), df = n - 1 seeds.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447,
         7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def command_line(script: str) -> str:
  """This runner's command line as typed from the repository root, with
  the offline data of ../shared/datasets (for a results page)."""
  return " ".join(["METRICJAX_DATA_DIR=../shared/datasets python",
                   f"experiments/{script}", *sys.argv[1:]])


def run_dir(root: str, name: str, config: ml_collections.ConfigDict) -> str:
  """ROOT/NAME-TAG, TAG a hash of every setting: another setting is another
  run, never a stale one reused."""
  tag = hashlib.sha256(config.to_json_best_effort(sort_keys=True).encode())
  return os.path.join(root, f"{name}-{tag.hexdigest()[:10]}")


def run(config: ml_collections.ConfigDict, workdir: str, *,
        select: str | None = None) -> dict:
  """Trains (or resumes) and evaluates on the test split; the summary.

  select: a logged validation metric (e.g. "val_map_at_r"): the test
  split is evaluated at the checkpoint with its best value (ties: earliest);
  None: at the last step.
  """
  path = os.path.join(workdir, "summary.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  start = time.perf_counter()
  train_lib.train(config, workdir)
  seconds = time.perf_counter() - start
  step = restore_lib.best_step(workdir, select) if select else None
  result = evaluate_lib.evaluate(workdir, step)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  val_keys = sorted({k for r in rows for k in r if k.startswith("val_")})
  summary = dict(
      step=result["step"], metrics=result["metrics"],
      num_params=result["num_params"], param_bytes=result["param_bytes"],
      train_seconds=seconds,
      images_per_sec=statistics.median(
          [r["examples_per_sec"] for r in rows[1:]] or
          [rows[-1]["examples_per_sec"]]),
      step_temp_bytes=rows[-1].get("step_temp_bytes"),
      curves={k: [(r["step"], r[k]) for r in rows if k in r] for k in val_keys},
      loss_curve=[(r["step"], r["loss"]) for r in rows])
  files.write_json(path, summary)
  return summary


def mean_ci(values) -> tuple[float, float]:
  """(mean, half-width of its 95% confidence interval; 0 for one value)."""
  values = [float(v) for v in values]
  mean = statistics.fmean(values)
  if len(values) < 2:
    return mean, 0.0
  t = _T975.get(len(values) - 1, 1.96)
  return mean, t * statistics.stdev(values) / math.sqrt(len(values))


def fmt_ci(values, scale: float = 1.0, digits: int = 4) -> str:
  mean, half = mean_ci([scale * v for v in values])
  return (f"{mean:.{digits}f} ± {half:.{digits}f}" if len(values) > 1
          else f"{mean:.{digits}f}")


def steps_to(curve, target: float):
  """The first logged step whose value reaches target, or None."""
  return next((s for s, v in curve if v >= target), None)


def fmt_std(values, scale: float = 1.0, digits: int = 4) -> str:
  """mean ± sample standard deviation (the mean alone for one value)."""
  values = [scale * float(v) for v in values]
  mean = statistics.fmean(values)
  if len(values) < 2:
    return f"{mean:.{digits}f}"
  return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


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


def tsne(embeddings, seed: int = 0) -> np.ndarray:
  """2-d t-SNE points of embeddings, with cosine distances as retrieval
  ranks them."""
  from sklearn.manifold import TSNE  # Slow to import; figures only.
  return TSNE(n_components=2, metric="cosine", init="pca",
              perplexity=min(30.0, (len(embeddings) - 1) / 3),
              random_state=seed).fit_transform(np.asarray(embeddings))


def scatter_panel(ax, points, labels, title: str) -> None:
  """2-d points coloured by label on a matplotlib axis, without ticks."""
  ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=3,
             linewidths=0)
  ax.set_title(title, fontsize=9)
  ax.set_xticks([])
  ax.set_yticks([])


def tsne_panel(ax, embeddings, labels, title: str, seed: int = 0) -> None:
  """A t-SNE of embeddings, coloured by label, on a matplotlib axis."""
  scatter_panel(ax, tsne(embeddings, seed), labels, title)


def save_figure(fig, path: str, dpi: int = 110) -> None:
  """A matplotlib figure as PNG, written atomically, then closed."""
  import matplotlib.pyplot as plt  # Figures only.
  fig.tight_layout()
  with files.atomic_write(path, "wb") as f:
    fig.savefig(f, format="png", dpi=dpi)
  plt.close(fig)


def set_budget(config: ml_collections.ConfigDict, scale: dict,
               seed: int) -> ml_collections.ConfigDict:
  """A runner's scale on a retrieval config: batch, steps, and validation
  with a checkpoint at every validated step (selection needs them)."""
  config.batch_size = scale["batch_size"]
  config.samples_per_class = scale["samples_per_class"]
  config.total_steps = scale["steps"]
  config.warmup_steps = min(config.warmup_steps, scale["steps"] // 10)
  config.log_every = config.eval_every = scale["eval_every"]
  config.checkpoint_every = scale["eval_every"]
  config.keep_checkpoints = scale["steps"] // scale["eval_every"] + 1
  config.val_size = scale["val_size"]
  config.eval.batch_size = scale["eval_batch"]
  config.seed = seed
  return config

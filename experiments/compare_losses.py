r"""Losses compared as "A Metric Learning Reality Check" asks.

Every loss gets the same backbone (paper 1's hybrid1), embedding size,
optimiser, batch (P classes x K images), augmentation and step budget; its
own hyper-parameters come from the same number of trials for every loss,
chosen on validation (training images held out of training, never the
test split); the chosen setting is then trained with several seeds and
evaluated on the test split at the checkpoint with the best validation
MAP@R. Table: mean ± 95% interval over seeds; plot: validation MAP@R.

  python experiments/compare_losses.py --scale=cpu
  python experiments/compare_losses.py --scale=smoke --dataset=idx:DIR --out=/tmp/x

Runs are resumable and skipped when done (WORKDIR/<loss>-<hash>/...).
"""

import os
import platform
import time

from absl import app
from absl import flags
import matplotlib
import matplotlib.pyplot as plt

from metricjax import cli
from metricjax import files
from metricjax import study
from metricjax.config_utils import load_config
from metricjax.errors import exit_on_user_error
from metricjax.errors import UserError

matplotlib.use("Agg")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Hyper-parameter trials per loss, PML's defaults first; a scale uses the
# first `trials` of each list, the same number for every loss. Learnable
# parameters (proxies, class weights) train at param_lr_multiplier x.
TRIALS = {
    "ms": [dict(kwargs=dict(alpha=2.0, beta=50.0, base=0.5, epsilon=0.1)),
           dict(kwargs=dict(alpha=2.0, beta=40.0, base=0.5, epsilon=0.1)),
           dict(kwargs=dict(alpha=1.0, beta=50.0, base=0.6, epsilon=0.1))],
    "triplet": [dict(kwargs=dict(margin=0.05, mining="semihard")),
                dict(kwargs=dict(margin=0.2, mining="semihard")),
                dict(kwargs=dict(margin=0.1, mining="all"))],
    "contrastive": [dict(kwargs=dict(pos_margin=0.0, neg_margin=1.0)),
                    dict(kwargs=dict(pos_margin=0.0, neg_margin=0.6)),
                    dict(kwargs=dict(pos_margin=0.2, neg_margin=1.0))],
    "ntxent": [dict(kwargs=dict(temperature=0.07)),
               dict(kwargs=dict(temperature=0.2)),
               dict(kwargs=dict(temperature=0.03))],
    "proxy_anchor": [dict(kwargs=dict(margin=0.1, alpha=32.0), lr_mult=100.0),
                     dict(kwargs=dict(margin=0.1, alpha=16.0), lr_mult=100.0),
                     dict(kwargs=dict(margin=0.2, alpha=32.0), lr_mult=10.0)],
    "arcface": [dict(kwargs=dict(margin=28.6, scale=64.0), lr_mult=10.0),
                dict(kwargs=dict(margin=28.6, scale=32.0), lr_mult=10.0),
                dict(kwargs=dict(margin=15.0, scale=64.0), lr_mult=10.0)],
}

SCALES = {
    # The pipeline in seconds (tests); not a comparison.
    "smoke": dict(dataset=None, steps=6, eval_every=3, val_size=16,
                  batch_size=16, samples_per_class=4, trials=1, seeds=2,
                  model=dict(widths=(8, 16, 16, 16), embedding_dim=16),
                  eval_batch=16),
    # What this 2-core CPU does in about an hour.
    "cpu": dict(dataset="fashion_mnist", steps=300, eval_every=100,
                val_size=2000, batch_size=128, samples_per_class=16, trials=2,
                seeds=3, model={}, eval_batch=1000),
    # A budget for accelerators.
    "full": dict(dataset="fashion_mnist", steps=5000, eval_every=500,
                 val_size=5000, batch_size=256, samples_per_class=32,
                 trials=3, seeds=5, model={}, eval_batch=1000),
}

_SCALE = flags.DEFINE_enum("scale", "cpu", list(SCALES), "Budget.")
_LOSSES = flags.DEFINE_list("losses", list(TRIALS), "Losses to compare.")
_DATASET = flags.DEFINE_string("dataset", None,
                               "Dataset name or spec (default: the scale's).")
_SEEDS = flags.DEFINE_integer("seeds", None, "Seeds (default: the scale's).")
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Runs go here (default runs/compare_losses-SCALE).")
_OUT = flags.DEFINE_string(
    "out", None, "Results folder (default experiments/results/compare_losses; "
    "smoke: WORKDIR/results).")
_SELECT = "val_map_at_r"


def _config(scale: dict, dataset: str, loss: str, trial: dict, seed: int):
  config = load_config(os.path.join(REPO, "configs", "compact_involution.py")
                       + f":dataset=fashion_mnist,loss={loss}")
  config.dataset = dataset
  config.model.update(scale["model"])
  config.loss.kwargs = trial["kwargs"]
  config.loss.param_lr_multiplier = trial.get("lr_mult", 1.0)
  return study.set_budget(config, scale, seed)


def compare(scale_name: str, dataset: str, losses, seeds: int, root: str,
            on_loss_done=None):
  """{loss: {"trials": [...], "chosen": i, "seeds": [summaries]}};
  on_loss_done(results so far) after each loss (results as they come)."""
  scale = SCALES[scale_name]
  results = {}
  for loss in losses:
    if loss not in TRIALS:
      raise UserError(f"No trials defined for loss {loss!r}; compare_losses "
                      f"knows {', '.join(TRIALS)}.")
    trials = TRIALS[loss][:scale["trials"]]
    searched = []
    for i, trial in enumerate(trials):
      config = _config(scale, dataset, loss, trial, seed=0)
      print(f"== {loss} trial {i}: {trial}", flush=True)
      searched.append(study.run(config, study.run_dir(root, loss, config),
                                select=_SELECT))
    # The trial with the best validation MAP@R (at its best checkpoint).
    best = max(range(len(trials)),
               key=lambda i: max(v for _, v in searched[i]["curves"][_SELECT]))
    runs = [searched[best]]
    for seed in range(1, seeds):
      config = _config(scale, dataset, loss, trials[best], seed)
      print(f"== {loss} seed {seed}", flush=True)
      runs.append(study.run(config, study.run_dir(root, loss, config),
                            select=_SELECT))
    results[loss] = dict(trials=trials, searched=searched, chosen=best,
                         seeds=runs)
    if on_loss_done:
      on_loss_done(results)
  return results


def write_report(results, out: str, command: str, scale_name: str,
                 dataset: str, seconds: float, pending=()) -> None:
  scale = SCALES[scale_name]
  # Every run once (a loss's chosen trial is also its seed 0).
  runs = {id(s): s for r in results.values() for s in r["searched"] + r["seeds"]}
  train_minutes = sum(s["train_seconds"] for s in runs.values()) / 60
  lines = [
      f"# Losses compared ({scale_name} scale)", "",
      f"Command: `{command}`", "",
      f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, load average "
      f"{os.getloadavg()[0]:.2f} when this page was written; "
      f"{time.strftime('%Y-%m-%d')}; {len(runs)} runs, {train_minutes:.0f} "
      f"min of training in all (this call: {seconds / 60:.0f} min for the "
      "runs not already done).", "",
      f"Data: {dataset} (validation: {scale['val_size']} training images "
      "held out of training, stratified by class; test: the test split). "
      f"Backbone: compact hybrid1; batch {scale['batch_size']} "
      f"({scale['batch_size'] // scale['samples_per_class']} classes x "
      f"{scale['samples_per_class']}), AdamW with cosine decay, "
      f"{scale['steps']} steps; validation every {scale['eval_every']} "
      f"steps. Each loss: {scale['trials']} hyper-parameter trial(s) at seed 0, "
      f"the best on validation MAP@R then run with "
      f"{len(next(iter(results.values()))['seeds'])} seed(s); test metrics at "
      "each run's best-validation checkpoint, mean ± 95% interval over seeds.",
      "",
      "| loss | chosen hyper-parameters | test MAP@R | P@1 | R@1 | R@10 | val MAP@R of the trials | images/s |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for loss, r in results.items():
    runs = r["seeds"]
    metric = lambda k: study.fmt_ci([s["metrics"][k] for s in runs])
    trial_vals = ", ".join(
        f"{max(v for _, v in s['curves'][_SELECT]):.4f}" for s in r["searched"])
    chosen = r["trials"][r["chosen"]]
    hp = ", ".join(f"{k}={v}" for k, v in chosen["kwargs"].items())
    if chosen.get("lr_mult", 1.0) != 1.0:
      hp += f", param lr x{chosen['lr_mult']:g}"
    lines.append(
        f"| {loss} | {hp} | {metric('map_at_r')} | {metric('precision_at_1')} "
        f"| {metric('recall_at_1')} | {metric('recall_at_10')} | {trial_vals} "
        f"| {study.mean_ci([s['images_per_sec'] for s in runs])[0]:.0f} |")
  # Reading, from the numbers: which losses the seeds cannot tell apart
  # from the best one (95% intervals overlapping).
  ci = {loss: study.mean_ci([s["metrics"]["map_at_r"] for s in r["seeds"]])
        for loss, r in results.items()}
  best = max(ci, key=lambda loss: ci[loss][0])
  ties = [loss for loss in ci if loss != best
          and ci[loss][0] + ci[loss][1] >= ci[best][0] - ci[best][1]]
  apart = [loss for loss in ci if loss != best and loss not in ties]
  epochs = scale["steps"] * scale["batch_size"] / 60000
  lines += ["", f"Reading: highest mean test MAP@R: {best} "
            f"({ci[best][0]:.4f}). Its 95% interval overlaps those of "
            f"{', '.join(ties) or 'no other loss'}"
            + (f"; {', '.join(apart)} lie(s) below it" if apart else "")
            + f". {scale['steps']} steps of {scale['batch_size']} are "
            f"about {epochs:.2f} epochs of the 60,000 training images (fewer "
            "once validation is held out): a short budget that ranks how fast "
            "losses learn as much as where they end, and wide intervals "
            "mean most differences here are not resolved."]
  if pending:
    lines += ["", f"Not run yet: {', '.join(pending)} (the runner resumes "
              "where it stopped)."]
  lines += ["", "![validation MAP@R](curves.png)", ""]
  files.write_text(os.path.join(out, "README.md"), "\n".join(lines))
  files.write_json(os.path.join(out, "results.json"), results)

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for loss, r in results.items():
    steps, values = zip(*r["seeds"][0]["curves"][_SELECT])
    ax.plot(steps, values, marker=".", label=loss)
  ax.set(xlabel="step", ylabel="validation MAP@R (seed 0)",
         title=f"Losses on {dataset}, {scale_name} scale")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  study.save_figure(fig, os.path.join(out, "curves.png"))


@exit_on_user_error
def main(argv):
  del argv
  cli.quiet_logging()
  scale = SCALES[_SCALE.value]
  dataset = _DATASET.value or scale["dataset"]
  if dataset is None:
    raise UserError("--scale=smoke needs --dataset (a small spec, e.g. "
                    "idx:DIR).")
  root = _WORKDIR.value or os.path.join("runs", f"compare_losses-{_SCALE.value}")
  out = _OUT.value or (os.path.join(root, "results") if _SCALE.value == "smoke"
                       else os.path.join(REPO, "experiments", "results",
                                         "compare_losses"))
  start = time.perf_counter()
  command = study.command_line("compare_losses.py")

  def report(results):
    pending = [l for l in _LOSSES.value if l not in results]
    write_report(results, out, command, _SCALE.value, dataset,
                 time.perf_counter() - start, pending)
  compare(_SCALE.value, dataset, _LOSSES.value,
          _SEEDS.value or scale["seeds"], root, on_loss_done=report)
  print(open(os.path.join(out, "README.md")).read())


if __name__ == "__main__":
  app.run(main)

r"""Losses compared as "A Metric Learning Reality Check" asks.

Every loss gets the same backbone (paper 1's hybrid1), embedding size,
optimiser, batch (P classes x K images), augmentation and step budget; its
own hyper-parameters come from the same number of trials for every loss,
chosen on validation (training images held out of training, never the
test split); the chosen setting is then trained with several seeds and
evaluated on the test split at the checkpoint with the best validation
MAP@R. Table: mean ± std over seeds; plot: validation MAP@R, mean over
seeds.

  python experiments/compare_losses.py --scale=cpu
  python experiments/compare_losses.py --scale=cpu --report_only
  python experiments/compare_losses.py --scale=smoke --dataset=idx:DIR --out=/tmp/x

Runs are resumable and skipped when done (WORKDIR/<loss>-<hash>/...); the
page is rewritten after every run.
"""

import os
import statistics

from absl import app
from absl import flags

from metricjax import cli
from metricjax import study
from metricjax import study_plots
from metricjax.config_utils import load_config
from metricjax.errors import exit_on_user_error
from metricjax.errors import UserError

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

study.define_flags(SCALES)
_LOSSES = flags.DEFINE_list("losses", list(TRIALS), "Losses to compare.")
_DATASET = flags.DEFINE_string("dataset", None,
                               "Dataset name or spec (default: the scale's).")
_SELECT = "val_map_at_r"


def _config(scale: dict, dataset: str, loss: str, trial: dict, seed: int):
  config = load_config(os.path.join(REPO, "configs", "compact_involution.py")
                       + f":dataset=fashion_mnist,loss={loss}")
  config.dataset = dataset
  config.model.update(scale["model"])
  config.loss.kwargs = trial["kwargs"]
  config.loss.param_lr_multiplier = trial.get("lr_mult", 1.0)
  return study.set_budget(config, scale, seed)


def _best_val(summary) -> float:
  return max(v for _, v in summary["curves"][_SELECT])


def write_report(page: dict, out: str) -> None:
  """OUT/README.md and curves.png from the results alone."""
  st = page["settings"]
  rows = [r for r in page["rows"] if r["runs"]]
  lines = study.header(page, "Losses compared") + [
      f"Data: {page['dataset']} (validation: {st['val_size']} training images "
      "held out of training, stratified by class; test: the test split). "
      f"Backbone: compact hybrid1; batch {st['batch_size']} "
      f"({st['batch_size'] // st['samples_per_class']} classes x "
      f"{st['samples_per_class']}), AdamW with cosine decay, {st['steps']} "
      f"steps ({rows[0]['runs'][0]['epochs']:.2f} epochs); validation every "
      f"{st['eval_every']} steps. Each loss: {st['trials']} hyper-parameter "
      "trial(s) at seed 0, the best on validation MAP@R then run with more "
      "seeds; test metrics at each run's best-validation checkpoint, mean ± "
      "std over seeds.", "",
      "| loss | chosen hyper-parameters | seeds | test MAP@R | P@1 | R@10 "
      "| val MAP@R of the trials | images/s |",
      "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    metric = lambda k: study.fmt_std([s["metrics"][k] for s in r["runs"]])
    chosen = r["trials"][r["chosen"]]
    hp = ", ".join(f"{k}={v}" for k, v in chosen["kwargs"].items())
    if chosen.get("lr_mult", 1.0) != 1.0:
      hp += f", param lr x{chosen['lr_mult']:g}"
    lines.append(
        f"| {r['loss']} | {hp} | {len(r['runs'])} | {metric('map_at_r')} "
        f"| {metric('precision_at_1')} | {metric('recall_at_10')} | "
        + ", ".join(f"{_best_val(s):.4f}" for s in r["searched"])
        + f" | {statistics.median(s['images_per_sec'] for s in r['runs']):.0f} |")
  # Reading, from the numbers: which losses the seeds cannot tell apart
  # from the best one.
  value = {r["loss"]: [s["metrics"]["map_at_r"] for s in r["runs"]] for r in rows}
  best = max(value, key=lambda l: statistics.fmean(value[l]))
  said = [f"{l} {study.compare(value[l], value[best]).text()}"
          for l in value if l != best]
  lines += ["", f"Reading: highest mean test MAP@R: {best} "
            f"({statistics.fmean(value[best]):.4f}). Every other loss minus "
            f"{best} (± the half-width of the Welch 95% interval): "
            + "; ".join(said) + f". {st['steps']} steps of {st['batch_size']} "
            "are a short budget that ranks how fast losses learn as much as "
            "where they end."]
  if page.get("pending"):
    lines += ["", f"Not run yet: {', '.join(page['pending'])} (the runner "
              "resumes where it stopped)."]
  lines += ["", "![validation MAP@R](curves.png)"]
  study.write_page(out, lines)
  study_plots.curves(
      os.path.join(out, "curves.png"),
      [(page["dataset"], [(r["loss"], r["runs"], {}) for r in rows], [])],
      _SELECT, "validation MAP@R (mean of seeds)",
      f"Losses, {page['scale']} scale")


@exit_on_user_error
def main(argv):
  del argv
  cli.quiet_logging()
  s = study.setup("compare_losses", SCALES, __file__)
  if s.report_only:
    write_report(study.read_results(s.out), s.out)
    return
  dataset = _DATASET.value or s.scale["dataset"]
  if dataset is None:
    raise UserError("--scale=smoke needs --dataset (a small spec, e.g. "
                    "idx:DIR).")
  unknown = [l for l in _LOSSES.value if l not in TRIALS]
  if unknown:
    raise UserError(f"No trials defined for loss(es) {', '.join(unknown)}; "
                    f"compare_losses knows {', '.join(TRIALS)}.")
  trials = {l: TRIALS[l][:s.scale["trials"]] for l in _LOSSES.value}
  searched, chosen = {}, {}

  def run_at(loss, trial, seed):
    config = _config(s.scale, dataset, loss, trial, seed)
    return study.run(config, study.run_dir(s.root, loss, config),
                     select=_SELECT, scale=s.scale_name)

  def run_one(loss, seed):
    """Seed 0: every trial, keeping the best on validation; then its seeds."""
    if seed == 0:
      searched[loss] = []
      for i, trial in enumerate(trials[loss]):
        print(f"== {loss} trial {i}: {trial}", flush=True)
        searched[loss].append(run_at(loss, trial, 0))
      chosen[loss] = max(range(len(trials[loss])),
                         key=lambda i: _best_val(searched[loss][i]))
      return searched[loss][chosen[loss]]
    print(f"== {loss} seed {seed}", flush=True)
    return run_at(loss, trials[loss][chosen[loss]], seed)

  def report(results, pending):
    page = dict(study=s.name, scale=s.scale_name, command=s.command,
                settings=study.settings(s.scale), dataset=dataset,
                rows=[dict(name=l, loss=l, trials=trials[l], chosen=chosen[l],
                           searched=searched[l], runs=rs)
                      for l, rs in results.items() if rs],
                pending=[f"{l} seed {seed}" for seed, l in pending])
    study.write_results(s.out, page)
    write_report(page, s.out)
  study.run_grid(_LOSSES.value, s.seeds, run_one, on_done=report)
  print(open(os.path.join(s.out, "README.md")).read())


if __name__ == "__main__":
  app.run(main)

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

On the photo benchmarks (--dataset=cub|cars196|sop|inshop) the runs are
configs/dml_benchmark.py's (--protocol=reality_check by default, or
proxy_anchor), validated on a quarter of the training classes held out
(data.val_classes), tested on the benchmark's test classes:

  python experiments/compare_losses.py --dataset=cub --scale=full \
      --weights=resnet50.npz  # tools/convert_backbone.py --arch=resnet50
  python experiments/compare_losses.py --dataset=cub --scale=smoke

--scale=full is the Reality-Check comparison, for an accelerator: a
ResNet-50 at 227 px (for the paper's BN-Inception), 512-d, the protocol's
optimiser and batch, 3 seeds, each loss at the paper's published optimum
for the dataset (MLRC_OPTIMA; In-Shop, not in the paper: the loss's
defaults), the losses of the paper's table that metricjax registers,
"MS + miner" (ms+multi_similarity_miner, the paper's one loss with a miner)
among them.
--scale=smoke: a tiny compact net at 32 px, 4 steps, 2 losses, 1 seed
(the test suite's, on the CUB replica).

Runs are resumable and skipped when done (WORKDIR/<loss>-<hash>/...); the
page is rewritten after every run. On the photo benchmarks a finished
run's checkpoints other than the evaluated one are deleted (ResNet-50 and
RMSprop state: ~0.3 GB each).
"""

import os
import statistics

from absl import app
from absl import flags

from metricjax import cli
from metricjax import losses as losses_lib
from metricjax import study
from metricjax import study_plots
from metricjax import checkpoint
from metricjax.config_utils import load_config
from metricjax.data import sources
from metricjax.errors import exit_on_user_error
from metricjax.errors import UserError
from metricjax.losses import spec as loss_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Hyper-parameter trials per loss, PML's defaults first; a scale uses the
# first `trials` of each list, the same number for every loss. A row with a
# miner (loss+miner, metricjax/losses/spec.py) tries its loss's list with the
# miner's defaults. Learnable parameters (proxies, class weights) train at
# param_lr_multiplier x.
TRIALS = {
    "multi_similarity": [dict(kwargs=dict(alpha=2.0, beta=50.0, base=0.5)),
                         dict(kwargs=dict(alpha=2.0, beta=40.0, base=0.5)),
                         dict(kwargs=dict(alpha=1.0, beta=50.0, base=0.6))],
    "triplet_margin": [dict(kwargs=dict(margin=0.05)),
                       dict(kwargs=dict(margin=0.2)),
                       dict(kwargs=dict(margin=0.1))],
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
# The rows of the cpu and full scales: the Reality Check's "MS" and
# "MS + miner", and the miner each pair or triplet loss is most often run
# with in the field beside the same loss without one.
ROWS = ["multi_similarity", "multi_similarity+multi_similarity_miner",
        "contrastive", "contrastive+multi_similarity_miner",
        "triplet_margin", "triplet_margin+triplet_margin_miner:semihard",
        "ntxent", "proxy_anchor", "arcface"]


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

# The photo benchmarks: configs/dml_benchmark.py, validated on held-out
# training classes.
DML_DATASETS = sources.benchmarks()
# "A Metric Learning Reality Check"'s optima, chosen by its Bayesian search
# on validation (powerful-benchmarker, branch metric-learning, commit
# 222790a, docs/papers/mlrc.md "Optimal hyperparameters"; the paper's
# "weights lr" / "proxy lr" over the 1e-6 of the model -> lr_mult). Per
# dataset: cub, cars196, sop. Keyed by row: a loss, or a loss with its miner
# (metricjax/losses/spec.py, without the miner's options). The paper ran one
# loss with a miner, its "Multi Similarity + Miner" row: PML's
# MultiSimilarityLoss fed MultiSimilarityMiner's pairs (mining_funcs/
# tuple_miner/MultiSimilarityMiner/epsilon in its optimisation plots,
# docs/papers/mlrc_plots/*_multi_similarity_with_ms_miner.html; the page's
# FAQ: "We did test one loss+miner combination (Multi-similarity loss + their
# mining method)"); its miner's epsilon goes in the trial's `miner`, merged
# into config.loss.miner. Every other row ran without a miner: "ms" is
# multi-similarity alone (epsilon=None), triplet over all triplets; a
# pos_margin below 0 equals 0 (the page's FAQ). No loss of the MS rows
# learns parameters, so neither has a loss lr.
MLRC_OPTIMA = {
    "contrastive": [dict(kwargs=dict(pos_margin=p, neg_margin=n))
                    for p, n in ((-0.2, 0.3841), (0.2652, 0.5409),
                                 (0.2850, 0.5130))],
    "triplet": [dict(kwargs=dict(margin=m, mining="all"))
                for m in (0.0961, 0.1190, 0.0451)],
    "ntxent": [dict(kwargs=dict(temperature=t))
               for t in (0.0091, 0.0219, 0.0002)],
    "ms": [dict(kwargs=dict(alpha=a, beta=b, base=c, epsilon=None))
           for a, b, c in ((0.01, 50.60, 0.56), (14.35, 75.83, 0.66),
                           (8.49, 57.38, 0.41))],
    "ms+multi_similarity_miner": [
        dict(kwargs=dict(alpha=a, beta=b, base=c), miner=dict(epsilon=e))
        for a, b, c, e in ((17.97, 75.66, 0.77, 0.39),
                           (7.49, 47.99, 0.63, 0.72),
                           (15.94, 156.61, 0.72, 0.34))],
    "proxy_nca": [dict(kwargs=dict(softmax_scale=s), lr_mult=lr / 1e-6)
                  for lr, s in ((6.04e-3, 13.98), (4.43e-3, 7.97),
                                (5.28e-4, 10.73))],
    "normalized_softmax": [dict(kwargs=dict(temperature=t), lr_mult=lr / 1e-6)
                           for lr, t in ((4.46e-3, 0.1087), (1.10e-2, 0.0886),
                                         (5.46e-4, 0.0630))],
    "cosface": [dict(kwargs=dict(margin=m, scale=s), lr_mult=lr / 1e-6)
                for lr, m, s in ((2.53e-3, 0.6182, 100.0),
                                 (7.41e-3, 0.4324, 161.5),
                                 (2.16e-3, 0.3364, 100.0))],
    "arcface": [dict(kwargs=dict(margin=m, scale=s), lr_mult=lr / 1e-6)
                for lr, m, s in ((5.13e-3, 23.22, 100.0),
                                 (7.39e-6, 20.52, 49.50),
                                 (2.01e-3, 18.63, 220.3))],
    "fastap": [dict(kwargs=dict(num_bins=b)) for b in (17, 27, 16)],
}
MLRC_DATASETS = ("cub", "cars196", "sop")
DML_SCALES = {
    # The pipeline on the CUB replica, in seconds (tests); not a comparison.
    "smoke": dict(backbone="compact", image_size=32, embedding_dim=16,
                  model=dict(widths=(8, 8, 16, 16)), steps=4, eval_every=2,
                  batch_size=16, samples_per_class=4, val_size=0,
                  eval_batch=64, trials=1, seeds=1,
                  losses=["contrastive", "ms"],
                  data=dict(num_threads=2, prefetch=16)),
    # The Reality Check on an accelerator. Steps are ours (the paper stops
    # early: patience 9 / 14 / 39 validations); 20 validations a run, a
    # checkpoint at each (selection needs them; ~6 GB a run at most).
    "full": dict(backbone="resnet50", image_size=0, embedding_dim=512,
                 model={}, steps={"cub": 20000, "cars196": 30000, "*": 60000},
                 eval_every={"cub": 1000, "cars196": 1500, "*": 3000},
                 batch_size=None, samples_per_class=4, val_size=0,
                 eval_batch=256, trials=1, seeds=3, losses=list(MLRC_OPTIMA),
                 data={}),
}

study.define_flags(sorted(set(SCALES) | set(DML_SCALES)))
_LOSSES = flags.DEFINE_list(
    "losses", None, "Rows to compare, each a loss or a loss with its miner "
    "(contrastive+multi_similarity_miner, triplet_margin+triplet_margin_"
    "miner:semihard; metricjax/losses/spec.py). Default: the scale's.")
_PROTOCOL = flags.DEFINE_enum("protocol", "reality_check",
                              ["reality_check", "proxy_anchor"],
                              "Photo benchmarks: the training recipe.")
_WEIGHTS = flags.DEFINE_string(
    "weights", None, "Photo benchmarks: the backbone's converted ImageNet "
    "weights (tools/convert_backbone.py); required at --scale=full.")
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
  _set_miner(config, trial)
  return study.set_budget(config, scale, seed)


def _set_miner(config, trial: dict) -> None:
  """A trial's miner settings (its `miner`, e.g. dict(epsilon=0.39)) over
  the row's miner (config.loss.miner, set from the row's spec)."""
  if not trial.get("miner"):
    return
  if not config.loss.miner:
    raise UserError(f"A trial sets miner settings {trial['miner']} for loss "
                    f"{config.loss.name!r}, whose row has no miner; name one "
                    "in the row (LOSS+MINER_miner).")
  config.loss.miner = dict(config.loss.miner, **trial["miner"])


def _dml_config(scale: dict, dataset: str, loss: str, trial: dict,
                seed: int):
  arg = (f"dataset={dataset},loss={loss},backbone={scale['backbone']},"
         f"protocol={_PROTOCOL.value},image_size={scale['image_size']},"
         f"embedding_dim={scale['embedding_dim']}")
  if _WEIGHTS.value:
    arg += f",weights={os.path.abspath(_WEIGHTS.value)}"
  config = load_config(os.path.join(REPO, "configs", "dml_benchmark.py")
                       + ":" + arg)
  config.model.update(scale["model"])
  config.data.update(scale["data"])
  if trial["kwargs"]:
    config.loss.kwargs = trial["kwargs"]
  if "lr_mult" in trial:
    config.loss.param_lr_multiplier = trial["lr_mult"]
  _set_miner(config, trial)
  return study.set_budget(config, scale, seed,
                          batch_size=scale["batch_size"] or config.batch_size)


def _loss_of(row: str) -> str:
  """The loss of a row (a loss or loss+miner spec), checked."""
  loss, miner = loss_spec.parse(row)
  losses_lib.get_loss(loss)
  if miner is not None:
    losses_lib.build(loss, miner=miner)  # Refused combinations fail here.
  return loss


def _trials(row: str) -> list[dict]:
  loss = _loss_of(row)
  trials = TRIALS.get(losses_lib.ALIASES.get(loss, loss))
  if trials is None:
    raise UserError(f"No trials defined for loss {loss!r} (row {row!r}); "
                    f"compare_losses has trials for {', '.join(TRIALS)} "
                    "(TRIALS in experiments/compare_losses.py).")
  return trials


def _dml_trials(row: str, dataset: str) -> list[dict]:
  """The paper's optimum for the dataset, else the loss's defaults.

  A row with a miner takes the optimum of its loss with that miner (the
  paper's "MS + miner"), the miner's options written in the row overriding
  the optimum's; a miner the paper did not run takes its loss's optimum
  (the miner at its options or defaults)."""
  loss = _loss_of(row)
  _, miner = loss_spec.parse(row)
  if dataset not in MLRC_DATASETS:
    return [dict(kwargs={}, source="defaults")]
  options = {k: v for k, v in (miner or {}).items() if k != "name"}
  paired = miner and loss_spec.label(loss, {"name": miner["name"]})
  if paired in MLRC_OPTIMA:
    trial = MLRC_OPTIMA[paired][MLRC_DATASETS.index(dataset)]
    trial = dict(trial, miner=dict(trial.get("miner", {}), **options))
    return [dict(trial, source="Reality Check optimum" + (
        " (miner options from the row)" if options else ""))]
  if loss in MLRC_OPTIMA:
    trial = MLRC_OPTIMA[loss][MLRC_DATASETS.index(dataset)]
    if miner is None:
      return [dict(trial, source="Reality Check optimum")]
    # The loss's own optimum was found without a miner.
    kwargs = {k: v for k, v in trial["kwargs"].items()
              if not (loss == "ms" and k == "epsilon")
              and not (loss == "triplet" and k == "mining")}
    return [dict(trial, kwargs=kwargs, source=f"{loss}'s Reality Check "
                 "optimum, found without a miner")]
  return [dict(kwargs={}, source="defaults")]


def _dml_scale(name: str, dataset: str) -> dict:
  """The scale with its budget resolved for the dataset."""
  if name not in DML_SCALES:
    raise UserError(f"--scale={name} is a Fashion-MNIST budget; the photo "
                    f"benchmarks have {', '.join(DML_SCALES)}.")
  scale = dict(DML_SCALES[name])
  for key in ("steps", "eval_every"):
    scale[key] = study.per_dataset(scale[key], dataset)
  if name == "full" and not _WEIGHTS.value:
    raise UserError(
        "--scale=full fine-tunes an ImageNet ResNet-50, as the Reality Check "
        "does its BN-Inception: pass --weights=resnet50.npz, converted from "
        "torchvision's resnet50 state_dict by `python tools/"
        "convert_backbone.py --arch=resnet50 --torch=FILE.pth "
        "--out=resnet50.npz`.")
  return scale


def _prune(workdir: str, keep: int) -> None:
  """Deletes a finished run's checkpoints but the evaluated one."""
  path = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(path):
    return
  mngr = checkpoint.manager(workdir, create=False)
  for step in mngr.all_steps():
    if step != keep:
      mngr.delete(step)
  mngr.close()


def _best_val(summary) -> float:
  return max(v for _, v in summary["curves"][_SELECT])


def write_report(page: dict, out: str) -> None:
  """OUT/README.md and curves.png from the results alone."""
  st = page["settings"]
  rows = [r for r in page["rows"] if r["runs"]]
  protocol = page.get("protocol")
  per_class = st["samples_per_class"]
  batch = (f"batch {st['batch_size']} ({st['batch_size'] // per_class} "
           f"classes x {per_class}), ")
  budget = (f"{st['steps']} steps ({rows[0]['runs'][0]['epochs']:.2f} "
            f"epochs); validation every {st['eval_every']} steps. ")
  if protocol:
    ds = rows[0]["runs"][0]["dataset"]["split_sizes"]
    held = st["val_classes"]
    held = f"{100 * held:g}%" if held < 1 else f"{held:g}"
    data = (f"Data: {page['dataset']}, configs/dml_benchmark.py protocol="
            f"{protocol} (validation: {held} of the training classes, every "
            "image of them held out of training; test: the test classes; "
            f"split sizes {ds}). Backbone: {st['backbone']} at "
            f"{st['image_size']} px, {st['embedding_dim']}-d; " + batch
            + f"{st['optimizer']} at lr {st['learning_rate']:g}, " + budget
            + "Each loss: the Reality Check's published optimum for the "
            "dataset where it has one (else the loss's defaults: the "
            "\"hyper-parameters from\" column), run with several seeds; test "
            "metrics at each run's best-validation checkpoint, mean ± std "
            "over seeds.")
    recall = ("r_precision", "R-Precision")
  else:
    data = (f"Data: {page['dataset']} (validation: {st['val_size']} training "
            "images held out of training, stratified by class; test: the "
            "test split). Backbone: compact hybrid1; " + batch
            + "AdamW with cosine decay, " + budget
            + f"Each loss: {st['trials']} hyper-parameter trial(s) at seed 0, "
            "the best on validation MAP@R then run with more seeds; test "
            "metrics at each run's best-validation checkpoint, mean ± std "
            "over seeds.")
    recall = ("recall_at_10", "R@10")
  lines = study.header(page, "Losses compared") + [
      data, "",
      f"| loss | chosen hyper-parameters | seeds | test MAP@R | P@1 | "
      f"{recall[1]} | val MAP@R of the trials | images/s |",
      "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    metric = lambda k: study.fmt_std([s["metrics"][k] for s in r["runs"]])
    chosen = r["trials"][r["chosen"]]
    hp = ", ".join(f"{k}={v}" for k, v in chosen["kwargs"].items())
    if chosen.get("lr_mult", 1.0) != 1.0:
      hp += f", param lr x{chosen['lr_mult']:g}"
    if chosen.get("miner"):
      hp += ", miner " + ", ".join(f"{k}={v}"
                                   for k, v in chosen["miner"].items())
    if chosen.get("source"):
      hp = f"{hp or 'the config'} ({chosen['source']})"
    lines.append(
        f"| {r['loss']} | {hp} | {len(r['runs'])} | {metric('map_at_r')} "
        f"| {metric('precision_at_1')} | {metric(recall[0])} | "
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
  dml = _DATASET.value in DML_DATASETS
  if dml:
    s = study.setup("compare_losses", DML_SCALES if flags.FLAGS.scale in
                    DML_SCALES else SCALES, __file__,
                    page=f"{_DATASET.value}/{flags.FLAGS.scale}")
  else:
    s = study.setup("compare_losses", SCALES, __file__)
  if s.report_only:
    write_report(study.read_results(s.out), s.out)
    return
  dataset = _DATASET.value or s.scale["dataset"]
  if dataset is None:
    raise UserError("--scale=smoke needs --dataset (a small spec, e.g. "
                    "idx:DIR, or cub for the CUB-200-2011 layout).")
  scale = _dml_scale(s.scale_name, dataset) if dml else s.scale
  names = _LOSSES.value or (scale["losses"] if dml else ROWS)
  trials = {l: (_dml_trials(l, dataset) if dml else _trials(l))[
      :scale["trials"]] for l in names}
  make_config = _dml_config if dml else _config
  searched, chosen = {}, {}
  settings = study.settings(scale)
  if dml:  # What the protocol set, for the page.
    c = make_config(scale, dataset, names[0], trials[names[0]][0], 0)
    settings.update(batch_size=c.batch_size, image_size=c.image_size,
                    optimizer=c.optimizer, learning_rate=c.learning_rate,
                    val_classes=c.data.val_classes)

  def run_at(loss, trial, seed):
    config = make_config(scale, dataset, loss, trial, seed)
    summary = study.run(config, study.run_dir(s.root, loss, config),
                        select=_SELECT, scale=s.scale_name,
                        record_dir=os.path.join(s.out, "runs"))
    if dml:
      _prune(summary["workdir"], summary["step"])
    return summary

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
                settings=settings, dataset=dataset,
                rows=[dict(name=l, loss=l, trials=trials[l], chosen=chosen[l],
                           searched=searched[l], runs=rs)
                      for l, rs in results.items() if rs],
                pending=[f"{l} seed {seed}" for seed, l in pending])
    if dml:
      page["protocol"] = _PROTOCOL.value
    study.write_results(s.out, page)
    write_report(page, s.out)
  study.run_grid(names, s.seeds, run_one, on_done=report)
  print(open(os.path.join(s.out, "README.md")).read())


if __name__ == "__main__":
  app.run(main)

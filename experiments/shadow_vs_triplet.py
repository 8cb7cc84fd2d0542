r"""Paper 2: Shadow loss vs Triplet loss in a Siamese network, same set-ups.

Khan et al., "Shadow: A Novel Loss Function for Efficient Training in
Siamese Networks" (arXiv 2311.14012; notes in the shared papers folder).
Every run has the same backbone (paper 1's hybrid1, 64-d embedding),
optimiser, data, budget and seeds; runs differ only in the loss, the
triplets (random explicit (a, p, n), the paper's Siamese set-up, or
semi-hard ones mined in a P x K batch), and whether classes 0-4 keep a
tenth of their training images. Losses:

  shadow      Shadow on L2-normalised embeddings, margin M.
  shadow_raw  Shadow without normalisation (ignores the part of p and n
              orthogonal to a), margin M.
  triplet     Triplet on the euclidean distance of unit vectors.
  sq_triplet  Triplet on the squared euclidean distance, margin 2M: on unit
              vectors exactly 2 x `shadow`, so Adam should give nearly
              the same run.

Each run is tested at its checkpoint of best validation (held-out images).

  python experiments/shadow_vs_triplet.py --scale=cpu
  python experiments/shadow_vs_triplet.py --scale=long   # issue 22's rows
  python experiments/shadow_vs_triplet.py --scale=cpu --report_only
  python experiments/shadow_vs_triplet.py --scale=smoke --dataset=idx:DIR

Runs are resumable and skipped when done (WORKDIR/<name>-<hash>/, or its
record OUT/runs/<name>-<hash>.json); the page (OUT/README.md, results.json,
curves.png, tsne-*.png) is rewritten after every run.
"""

import collections
import functools
import json
import os
import re
import statistics

from absl import app
from absl import flags

from metricjax import cli
from metricjax import files
from metricjax import study
from metricjax import study_plots
from metricjax.config_utils import load_config
from metricjax.errors import exit_on_user_error
from metricjax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MARGIN = 0.1  # Shadow's M; sq_triplet gets 2M, FaceNet's alpha = 0.2.
TRIPLET_MARGIN = 0.2  # On euclidean distances of unit vectors (<= 2).
_TRIPLET = "loss=triplet,distance="
LOSSES = {  # name: (label, config argument)
    "shadow": (f"Shadow, unit, m={MARGIN:g}",
               f"loss=shadow,normalize=true,margin={MARGIN}"),
    "shadow_raw": (f"Shadow, unnormalised, m={MARGIN:g}",
                   f"loss=shadow,normalize=false,margin={MARGIN}"),
    "triplet": (f"Triplet, euclidean, m={TRIPLET_MARGIN:g}",
                f"{_TRIPLET}euclidean,margin={TRIPLET_MARGIN}"),
    "sq_triplet": (f"Triplet, sq. euclidean, m={2 * MARGIN:g}",
                   f"{_TRIPLET}squared_euclidean,margin={2 * MARGIN}"),
}
MININGS = ("random", "semihard")
ALL, PAIR = tuple(LOSSES), ("shadow", "triplet")
IMBALANCED = 0.1  # Fraction of classes 0-4 kept (configs/siamese.py's keep).

# A grid: (dataset, keep, minings, losses) blocks; None: smoke's --dataset
# (elsewhere --dataset replaces the first dataset and drops the others).
_CPU = dict(steps={"cifar10": 200, "*": 300}, eval_every=50, val_size=1000,
            batch_size=64, samples_per_class=8, triplets=21, seeds=3,
            model={}, eval_batch=1000, tsne=1500)
SCALES = {
    # The pipeline in seconds (tests); not a comparison.
    # (One mining: the other's training path is tests/tasks' to check.)
    "smoke": dict(grid=[(None, 1.0, ("semihard",), PAIR)], steps=6,
                  eval_every=3, val_size=16, batch_size=16,
                  samples_per_class=4, triplets=8, seeds=2,
                  model=dict(widths=(8, 16, 16, 16), embedding_dim=16),
                  eval_batch=16, tsne=32),
    # ~50 s a run here at load ~4; all four losses on balanced FMNIST only.
    "cpu": dict(_CPU, grid=[("fashion_mnist", 1.0, MININGS, ALL),
                            ("fashion_mnist", IMBALANCED, MININGS, PAIR),
                            ("cifar10", 1.0, MININGS, PAIR)]),
    # Issue 22: Shadow vs Triplet at whole epochs, validated every half.
    "long": dict(_CPU, grid=[("fashion_mnist", 1.0, MININGS, PAIR),
                             ("cifar10", 1.0, ("semihard",), PAIR)],
                 epochs={"fashion_mnist": 5, "cifar10": 8, "*": 5}),
    # An accelerator budget near the paper's: the whole grid, the config's
    # batches (8 x 32 mined, 88 triplets), ~28-34 epochs.
    "full": dict(grid=[(ds, keep, MININGS, ALL)
                       for ds in ("fashion_mnist", "cifar10")
                       for keep in (1.0, IMBALANCED)],
                 steps=6000, eval_every=250, val_size=5000, batch_size=256,
                 samples_per_class=32, triplets=88, seeds=5, model={},
                 eval_batch=1000, tsne=1500),
}

study.define_flags(SCALES)
_DATASET = flags.DEFINE_string(
    "dataset", None, "Dataset name or spec (smoke: required; otherwise it "
    "replaces the scale's first dataset and drops the others).")
# Selection on validation MAP@R (less noisy); P@1 is the convergence curve.
_SELECT = "val_map_at_r"
_CURVE = "val_precision_at_1"


def grid(scale: dict, dataset: str | None):
  """[(dataset, keep, mining, loss)] in the scale's order."""
  blocks = scale["grid"]
  if dataset is not None:
    first = blocks[0][0]
    blocks = [(dataset, *b[1:]) for b in blocks if b[0] == first]
  return [(ds, keep, mining, loss) for ds, keep, minings, losses in blocks
          for mining in minings for loss in losses]


def _config(scale: dict, dataset: str, keep: float, mining: str, loss: str,
            seed: int):
  config = load_config(
      os.path.join(REPO, "configs", "siamese.py")
      + f":{LOSSES[loss][1]},mining={mining},keep={keep},"
      f"dataset={dataset}")
  config.model.update(scale["model"])
  # Explicit triplets: batch_size counts triplets (3 images each).
  return study.set_budget(
      config, scale, seed,
      batch_size=scale["triplets"] if mining == "random" else None)


def _name(dataset, keep, mining, loss) -> str:
  ds = re.sub(r"[^A-Za-z0-9_]+", "_", dataset).strip("_")[-24:]
  return f"{ds}-{'bal' if keep >= 1 else 'imb'}-{mining}-{loss}"


def _silhouette(workdir: str, step: int, limit: int) -> float:
  """Silhouette score (cosine) of `limit` test embeddings by class: paper
  2's measure of tight, separated clusters (cached in the run directory)."""
  path = os.path.join(workdir, f"silhouette-{step}-{limit}.json")
  if not os.path.exists(path):
    from sklearn.metrics import silhouette_score  # pylint: disable=g-import-not-at-top
    emb, labels = study.split_embeddings(workdir, step, limit)
    files.write_json(path, dict(silhouette=float(
        silhouette_score(emb, labels, metric="cosine"))))
  with open(path) as f:
    return json.load(f)["silhouette"]


def _target(groups, mining: str) -> float | None:
  """Validation P@1 target of a section's mining: 95% of the median over
  its losses of the seed-mean best value, rounded down to 0.01 (most runs
  reach it, not all at once). Per mining: mined batches learn several
  times faster, so one target would tell the two apart, not the losses."""
  bests = [statistics.fmean(max(v for _, v in s["curves"][_CURVE])
                            for s in seeds)
           for (m, _), seeds in groups.items() if m == mining and seeds]
  if not bests:
    return None
  return int(95 * statistics.median(bests)) / 100


def _to_target(seeds, target):
  """(steps, epochs) to the target as table cells (study.to_target)."""
  steps, epochs, reached = study.to_target(seeds, _CURVE, target)
  count = f"({reached}/{len(seeds)})"
  return ((f"{steps:g} {count}", f"{epochs:.3f}") if reached
          else (f"not reached {count}", "–"))


def _sections(page):
  """[(dataset, keep, {(mining, loss): seeds})] in grid order."""
  out = {}
  for r in page["rows"]:
    section = out.setdefault((r["dataset"], r["keep"]), {})
    section[(r["mining"], r["loss"])] = r["runs"]
  return [(ds, keep, groups) for (ds, keep), groups in out.items()]


def _section_title(ds, keep) -> str:
  return f"{ds}, " + ("balanced" if keep >= 1 else
                      f"imbalanced (classes 0-4 keep {keep:g})")


_values = lambda seeds, key: [s["metrics"][key] for s in seeds]


def _mb(seeds):
  values = [s["step_temp_bytes"] for s in seeds
            if s.get("step_temp_bytes") is not None]
  return statistics.fmean(values) / 2**20 if values else None


def _reading(groups) -> list[str]:
  """Sentences computed from one section's numbers."""
  out = []
  for mining in MININGS:
    sh, tr = groups.get((mining, "shadow")), groups.get((mining, "triplet"))
    if sh and tr:
      parts = [f"{name} {study.fmt_std(_values(sh, k))} vs "
               f"{study.fmt_std(_values(tr, k))}, Shadow minus Triplet "
               + study.compare(_values(sh, k), _values(tr, k)).text()
               for k, name in (("map_at_r", "MAP@R"), ("precision_at_1", "P@1"),
                               ("silhouette", "silhouette"))]
      target = _target(groups, mining)
      parts.append(f"steps to validation P@1 {target}: "
                   f"{_to_target(sh, target)[0]} vs {_to_target(tr, target)[0]}")
      mem_s, mem_t = _mb(sh), _mb(tr)
      if mem_s is not None and mem_t:
        parts.append(f"step memory {mem_s:.1f} vs {mem_t:.1f} MB "
                     f"({100 * (mem_s - mem_t) / mem_t:+.1f}%, "
                     f"{(mem_s - mem_t) * 2**20:+,.0f} bytes)")
      out.append(f"{mining}, Shadow vs Triplet ({min(len(sh), len(tr))} "
                 "seed(s)): " + "; ".join(parts) + ".")
    sq = groups.get((mining, "sq_triplet"))
    if sh and sq:
      common = {s["seed"]: s["metrics"]["map_at_r"] for s in sh}
      diffs = [abs(common[s["seed"]] - s["metrics"]["map_at_r"])
               for s in sq if s["seed"] in common]
      c = study.compare(_values(sh, "map_at_r"), _values(sq, "map_at_r"))
      out.append(
          f"{mining}, Shadow (unit, m={MARGIN:g}) minus sq. Triplet "
          f"(m={2 * MARGIN:g}), MAP@R: {c.text()}; same-seed runs differ by "
          f"at most {max(diffs):.4f} MAP@R." if diffs else "")
    raw = groups.get((mining, "shadow_raw"))
    if sh and raw:
      out.append(f"{mining}, unnormalised minus normalised Shadow, MAP@R "
                 f"{study.fmt_std(_values(raw, 'map_at_r'))} vs "
                 f"{study.fmt_std(_values(sh, 'map_at_r'))}: "
                 + study.compare(_values(raw, "map_at_r"),
                                 _values(sh, "map_at_r")).text() + ".")
  return [line for line in out if line]


def write_report(page: dict, out: str) -> None:
  """OUT/README.md and curves.png from the results alone."""
  st = page["settings"]
  eval_every = ("every half epoch" if "epochs" in st
                else f"every {st['eval_every']} steps")
  runs = [s for r in page["rows"] for s in r["runs"]]
  lines = study.header(page, "Shadow vs Triplet") + [
      f"Set-up (configs/siamese.py): {runs[0]['backbone'] if runs else '?'} "
      f"backbone, {runs[0]['embedding_dim'] if runs else '?'}-d embedding, "
      f"AdamW with warm-up and cosine decay. A step: {st['triplets']} random "
      f"(a, p, n) triplets, or {st['batch_size']} images "
      f"({st['batch_size'] // st['samples_per_class']} classes x "
      f"{st['samples_per_class']}) whose semi-hard triplets are mined. "
      f"Validation {eval_every} on {st['val_size']} training images held out "
      "of training (stratified: imbalanced where training is); test: the "
      "whole test split at each run's best validation MAP@R checkpoint; mean "
      "± std over seeds (R@1 = P@1). Silhouette: sklearn's (cosine) of "
      f"{st['tsne']} test embeddings by class (paper 2's v2 measure, -1 to "
      "1). To target: medians over the seeds that reached the target "
      "validation P@1 (how many did), the target of a mining 95% of the "
      "median over its losses of the best validation P@1, rounded down to "
      "0.01. Still improving: the seed-mean validation MAP@R from the last "
      "validation at or before 75% of training to the end (yes above "
      f"{100 * study.PLATEAU_GAIN:g}% relative). Step MB: XLA's temp "
      "allocation of one compiled training step.", ""]
  readings, verdicts, same_mem, n = [], collections.Counter(), 0, 0
  for ds, keep, groups in _sections(page):
    targets = {m: _target(groups, m) for m, _ in groups}
    budget = {m: (seeds[0]["total_steps"], seeds[0]["epochs"])
              for (m, _), seeds in groups.items() if seeds}
    best = max((s["metrics"]["precision_at_1"] for seeds in groups.values()
                for s in seeds), default=None)
    lines += [f"## {_section_title(ds, keep)}", "",
              "Training: " + ", ".join(f"{m} {steps} steps, {e:.2f} epochs"
                                       for m, (steps, e) in budget.items())
              + (f"; best test P@1 of any run here {best:.4f}"
                 if best is not None else "") + ".", "",
              "Target validation P@1: " + ", ".join(
                  f"{m} {'–' if t is None else t}" for m, t in targets.items())
              + ".", "",
              "| loss | mining | seeds | test P@1 | R@5 | R@10 | MAP@R "
              "| silhouette | steps to target | epochs to target "
              "| still improving | step MB | images/s | train s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (mining, loss), seeds in groups.items():
      if not seeds:
        continue
      m = lambda k: study.fmt_std(_values(seeds, k))
      steps_t, epochs_t = _to_target(seeds, targets[mining])
      mb = _mb(seeds)
      lines.append(
          f"| {LOSSES[loss][0]} | {mining} | {len(seeds)} "
          f"| {m('precision_at_1')} | {m('recall_at_5')} | {m('recall_at_10')} "
          f"| {m('map_at_r')} "
          f"| {study.fmt_std(_values(seeds, 'silhouette'), digits=3)} "
          f"| {steps_t} | {epochs_t} | {study.still_improving(seeds, _SELECT)} "
          f"| {'–' if mb is None else f'{mb:.1f}'} "
          f"| {statistics.median(s['images_per_sec'] for s in seeds):.0f} "
          f"| {statistics.median(s['train_seconds'] for s in seeds):.0f} |")
    lines.append("")
    readings += [f"- {_section_title(ds, keep)}, {r}" for r in _reading(groups)]
    for mining in MININGS:
      sh = groups.get((mining, "shadow")) or []
      tr = groups.get((mining, "triplet")) or []
      if min(len(sh), len(tr)) < 2:
        continue
      n += 1
      for k in ("map_at_r", "silhouette"):
        verdicts[k, study.compare(_values(sh, k), _values(tr, k)).verdict] += 1
      same_mem += _mb(sh) == _mb(tr)
  lines += ["## Reading (computed from the tables)", ""]
  if n:
    count = lambda k: (f"above Triplet's in {verdicts[k, 'above']}, below in "
                       f"{verdicts[k, 'below']} and within the seed spread "
                       f"in {verdicts[k, 'within']}")
    lines.append(
        f"- Over {n} Shadow vs Triplet comparisons (dataset x balance x "
        f"mining, 2+ seeds each), Shadow's mean test MAP@R is "
        f"{count('map_at_r')}; its silhouette score is {count('silhouette')}; the "
        f"compiled step's temp memory is the same to the byte in {same_mem} "
        f"of {n}.")
  lines += readings or ["- Nothing to compare yet."]
  lines += ["", "![validation P@1](curves.png)", ""]
  lines += [f"![{f['alt']}]({f['file']})\n" for f in page.get("figures", [])]
  if page.get("pending"):
    lines += [f"Pending ({len(page['pending'])} runs, the runner resumes "
              f"where it stopped): {', '.join(page['pending'])}.", ""]
  study.write_page(out, lines)
  colors = ("C0", "C1", "C2", "C3")
  study_plots.curves(
      os.path.join(out, "curves.png"),
      [(_section_title(ds, keep),
        [(f"{LOSSES[loss][0]}, {mining}", seeds,
          dict(color=colors[ALL.index(loss)],
               linestyle="-" if mining == "semihard" else "--"))
         for (mining, loss), seeds in groups.items()],
        [(t, dict(linestyle="-" if m == "semihard" else "--"))
         for m in dict.fromkeys(m for m, _ in groups)
         if (t := _target(groups, m)) is not None])
       for ds, keep, groups in _sections(page)],
      _CURVE, "validation P@1 (mean over seeds); grey: targets",
      f"Shadow vs Triplet, {page['scale']} scale")


def _tsne(page: dict, out: str, limit: int) -> None:
  """tsne-<ds>.png per balanced dataset: Shadow vs Triplet, each mining,
  seed 0, once every panel's run exists."""
  figures = []
  for ds, keep, groups in _sections(page):
    panels = [(mining, loss) for mining in MININGS for loss in PAIR
              if (mining, loss) in groups]
    seed0 = {p: next((s for s in groups[p] if s["seed"] == 0), None)
             for p in panels}
    if keep < 1 or not panels or None in seed0.values():
      continue
    name = f"tsne-{re.sub(r'[^A-Za-z0-9_]+', '_', ds).strip('_')[-24:]}.png"
    minings = list(dict.fromkeys(m for m, _ in panels))
    study_plots.tsne_figure(
        os.path.join(out, name),
        [(minings.index(m), PAIR.index(l), seed0[(m, l)]["workdir"],
          seed0[(m, l)]["step"], f"{LOSSES[l][0]}, {m}\ntest MAP@R "
          f"{seed0[(m, l)]['metrics']['map_at_r']:.3f}") for m, l in panels],
        limit, f"{ds}: t-SNE of test embeddings (seed 0)")
    figures.append(dict(file=name, alt=f"t-SNE {ds}"))
  page["figures"] = figures


@exit_on_user_error
def main(argv):
  del argv
  cli.quiet_logging()
  s = study.setup("shadow_vs_triplet", SCALES, __file__)
  if s.report_only:
    write_report(study.read_results(s.out), s.out)
    return
  if s.scale_name == "smoke" and _DATASET.value is None:
    raise UserError("--scale=smoke needs --dataset (a small spec, e.g. "
                    "idx:DIR).")
  keys = grid(s.scale, _DATASET.value)

  def run_one(key, seed):
    print(f"== {_name(*key)} seed {seed}", flush=True)
    config = _config(s.scale, *key, seed)
    silhouette = functools.partial(_silhouette, limit=s.scale["tsne"])
    summary = study.run(config, study.run_dir(s.root, _name(*key), config),
                        select=_SELECT, scale=s.scale_name,
                        record_dir=os.path.join(s.out, "runs"),
                        extra_metrics=dict(silhouette=silhouette))
    return dict(summary, backbone=config.model.variant,
                embedding_dim=config.model.embedding_dim)

  def report(results, pending):
    page = dict(study=s.name, scale=s.scale_name, command=s.command,
                settings=study.settings(s.scale),
                rows=[dict(name=_name(*k), dataset=k[0], keep=k[1],
                           mining=k[2], loss=k[3], runs=v)
                      for k, v in results.items()],
                pending=[f"{_name(*k)} seed {seed}" for seed, k in pending])
    _tsne(page, s.out, s.scale["tsne"])
    study.write_results(s.out, page)
    write_report(page, s.out)
  study.run_grid(keys, s.seeds, run_one, on_done=report)
  print(open(os.path.join(s.out, "README.md")).read())


if __name__ == "__main__":
  app.run(main)

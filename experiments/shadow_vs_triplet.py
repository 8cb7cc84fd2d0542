r"""Paper 2: Shadow loss vs Triplet loss in a Siamese network, same set-ups.

Khan et al., "Shadow: A Novel Loss Function for Efficient Training in
Siamese Networks" (arXiv 2311.14012; notes in the shared papers folder).
Every run has the same backbone (paper 1's hybrid1, 64-d embedding),
optimiser, data, step budget and seeds; a group of runs differs only in the
loss, where its triplets come from (random explicit (a, p, n) triplets, the
paper's Siamese set-up, or semi-hard ones mined in a P x K batch), and
whether classes 0-4 keep only a tenth of their training images. Losses:

  shadow      Shadow on L2-normalised embeddings, margin M.
  shadow_raw  Shadow without normalisation (ignores the part of p and n
              orthogonal to a), margin M.
  triplet     Triplet on the euclidean distance of unit vectors.
  sq_triplet  Triplet on the squared euclidean distance, margin 2M: on unit
              vectors exactly 2 x `shadow` (the same mined triplets, the
              gradient doubled), so Adam should give nearly the same run.

Each run is evaluated on the test split at its best-validation checkpoint
(validation: training images held out, stratified by class). The page gives
mean ± std over seeds, steps/epochs until validation P@1 first reaches a
target, the compiled step's memory, throughput, validation curves and
t-SNE panels.

  python experiments/shadow_vs_triplet.py --scale=cpu
  python experiments/shadow_vs_triplet.py --scale=smoke --dataset=idx:DIR

Runs are resumable and skipped when done (WORKDIR/<name>-<hash>/); the page
(OUT/README.md, results.json, curves.png, tsne-*.png) is rewritten after
every run, with what is still pending.
"""

import json
import os
import platform
import re
import statistics
import time

from absl import app
from absl import flags
import matplotlib
import matplotlib.pyplot as plt

from metricjax import files
from metricjax import study
from metricjax.config_utils import load_config
from metricjax.errors import exit_on_user_error
from metricjax.errors import UserError

matplotlib.use("Agg")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MARGIN = 0.1  # Shadow's M; sq_triplet gets 2M, FaceNet's alpha = 0.2.
TRIPLET_MARGIN = 0.2  # On euclidean distances of unit vectors (<= 2).
LOSSES = {
    "shadow": dict(label=f"Shadow, unit, m={MARGIN:g}",
                   arg=f"loss=shadow,normalize=true,margin={MARGIN}"),
    "shadow_raw": dict(label=f"Shadow, unnormalised, m={MARGIN:g}",
                       arg=f"loss=shadow,normalize=false,margin={MARGIN}"),
    "triplet": dict(label=f"Triplet, euclidean, m={TRIPLET_MARGIN:g}",
                    arg=f"loss=triplet,distance=euclidean,"
                        f"margin={TRIPLET_MARGIN}"),
    "sq_triplet": dict(label=f"Triplet, sq. euclidean, m={2 * MARGIN:g}",
                       arg=f"loss=triplet,distance=squared_euclidean,"
                           f"margin={2 * MARGIN}"),
}
MININGS = ("random", "semihard")
ALL, PAIR = tuple(LOSSES), ("shadow", "triplet")
IMBALANCED = 0.1  # Fraction of classes 0-4 kept (configs/siamese.py's keep).

# A grid is a list of (dataset, keep, minings, losses) blocks; None is the
# --dataset of smoke. --dataset on another scale runs the blocks of its
# first dataset on that dataset.
SCALES = {
    # The pipeline in seconds (tests); not a comparison.
    "smoke": dict(grid=[(None, 1.0, MININGS, PAIR)], steps=6, eval_every=3,
                  val_size=16, batch_size=16, samples_per_class=4, triplets=8,
                  seeds=2, model=dict(widths=(8, 16, 16, 16),
                                      embedding_dim=16),
                  eval_batch=16, tsne=32),
    # A run trains ~50 s on this 2-core CPU at load ~4 (Fashion-MNIST at
    # 300 steps; CIFAR-10, 3-channel and augmented, at 200), plus ~20 s of
    # test evaluation: the 48 runs of 3 seeds took 52 min of training and
    # 75 min of wall time beside other jobs; --seeds=2 fits ~35 min.
    # Pruned: all four losses only on balanced Fashion-MNIST; the
    # imbalanced and CIFAR-10 blocks compare Shadow with Triplet only.
    # Batches: 8 classes x 8 mined, or 21 explicit triplets (63 images).
    "cpu": dict(grid=[("fashion_mnist", 1.0, MININGS, ALL),
                      ("fashion_mnist", IMBALANCED, MININGS, PAIR),
                      ("cifar10", 1.0, MININGS, PAIR)],
                steps=300, steps_by_dataset=dict(cifar10=200), eval_every=50,
                val_size=1000, batch_size=64, samples_per_class=8, triplets=21,
                seeds=3, model={}, eval_batch=1000, tsne=1500),
    # An accelerator budget near the paper's: the whole grid, the config's
    # batches (8 x 32 mined, 88 triplets), ~28 (Fashion-MNIST) and ~34
    # (CIFAR-10) epochs.
    "full": dict(grid=[(ds, keep, MININGS, ALL)
                       for ds in ("fashion_mnist", "cifar10")
                       for keep in (1.0, IMBALANCED)],
                 steps=6000, eval_every=250, val_size=5000, batch_size=256,
                 samples_per_class=32, triplets=88, seeds=5, model={},
                 eval_batch=1000, tsne=1500),
}

_SCALE = flags.DEFINE_enum("scale", "cpu", list(SCALES), "Budget.")
_DATASET = flags.DEFINE_string(
    "dataset", None, "Dataset name or spec (smoke: required; otherwise it "
    "replaces the scale's first dataset and drops the others).")
_SEEDS = flags.DEFINE_integer("seeds", None, "Seeds (default: the scale's).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Runs go here (default runs/shadow_vs_triplet-SCALE).")
_OUT = flags.DEFINE_string(
    "out", None, "Results folder (default experiments/results/"
    "shadow_vs_triplet; smoke: WORKDIR/results).")
# Checkpoint selection on validation MAP@R: less noisy than P@1 on the
# held-out images; P@1 is the convergence curve.
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
      + f":{LOSSES[loss]['arg']},mining={mining},keep={keep},"
      f"dataset={dataset}")
  steps = scale.get("steps_by_dataset", {}).get(dataset, scale["steps"])
  config.model.update(scale["model"])
  # Explicit triplets: batch_size counts triplets (3 images each).
  config.batch_size = (scale["triplets"] if mining == "random"
                       else scale["batch_size"])
  config.samples_per_class = scale["samples_per_class"]
  config.total_steps = steps
  config.warmup_steps = min(config.warmup_steps, steps // 10)
  config.log_every = config.eval_every = scale["eval_every"]
  # Every validated step is kept, so the best-validation one can be tested.
  config.checkpoint_every = scale["eval_every"]
  config.keep_checkpoints = steps // scale["eval_every"] + 1
  config.val_size = scale["val_size"]
  config.eval.batch_size = scale["eval_batch"]
  config.seed = seed
  return config


def _name(dataset, keep, mining, loss) -> str:
  ds = re.sub(r"[^A-Za-z0-9_]+", "_", dataset).strip("_")[-24:]
  return f"{ds}-{'bal' if keep >= 1 else 'imb'}-{mining}-{loss}"


def run_all(scale_name: str, dataset, seeds: int, root: str,
            on_run_done=None):
  """{key: [summary per seed done]}, key = (dataset, keep, mining, loss).

  Seed-major: every configuration's seed 0 before any seed 1, so a run cut
  short still compares all of them. on_run_done(results, pending) after
  every run (skipped ones included)."""
  scale = SCALES[scale_name]
  keys = grid(scale, dataset)
  # When the study first started, for its wall time across resumptions.
  os.makedirs(root, exist_ok=True)
  if not os.path.exists(os.path.join(root, "started")):
    files.write_text(os.path.join(root, "started"), f"{time.time():.0f}\n")
  todo = [(seed, key) for seed in range(seeds) for key in keys]
  results = {key: [] for key in keys}
  for i, (seed, key) in enumerate(todo):
    config = _config(scale, *key, seed)
    workdir = study.run_dir(root, _name(*key), config)
    print(f"== {_name(*key)} seed {seed}", flush=True)
    summary = dict(study.run(config, workdir, select=_SELECT))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      last = [json.loads(line) for line in f][-1]
    summary.update(seed=seed, workdir=workdir,
                   silhouette=_silhouette(workdir, summary["step"],
                                          scale["tsne"]),
                   epochs_per_step=last["epoch"] / last["step"],
                   backbone=config.model.variant,
                   embedding_dim=config.model.embedding_dim)
    results[key].append(summary)
    if on_run_done:
      on_run_done(results, todo[i + 1:])
  return results


def _silhouette(workdir: str, step: int, limit: int) -> float:
  """Silhouette score (cosine) of `limit` test embeddings by class at the
  selected checkpoint: paper 2's measure of tight, separated clusters.
  Stored in the run directory, computed once."""
  path = os.path.join(workdir, f"silhouette-{step}-{limit}.json")
  if not os.path.exists(path):
    from sklearn.metrics import silhouette_score  # Slow to import.
    emb, labels = study.split_embeddings(workdir, step, limit)
    files.write_json(path, dict(silhouette=float(
        silhouette_score(emb, labels, metric="cosine"))))
  with open(path) as f:
    return json.load(f)["silhouette"]


def _cpu() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f
                  if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def _stats(values):
  return statistics.fmean(values), (statistics.stdev(values)
                                    if len(values) > 1 else 0.0)


def _target(groups, mining: str) -> float | None:
  """Validation P@1 target of a section's mining: 95% of the median over
  its losses of the seed-mean best value, rounded down to 0.01; then
  most runs reach it, not all at the first validation, and the steps
  rank how fast. Per mining:
  mined batches learn several times faster, so one target for both would
  be reached at the first validation by one of them and never by the other."""
  bests = [statistics.fmean(max(v for _, v in s["curves"][_CURVE])
                            for s in seeds)
           for (m, _), seeds in groups.items() if m == mining and seeds]
  if not bests:
    return None
  return int(95 * statistics.median(bests)) / 100


def _to_target(seeds, target):
  """(text for steps, text for epochs): the median over the seeds that
  reached target and how many did."""
  reached = [(s, s * r["epochs_per_step"]) for r in seeds
             if (s := study.steps_to(r["curves"][_CURVE], target)) is not None]
  count = f"({len(reached)}/{len(seeds)})"
  if not reached:
    return f"not reached {count}", "–"
  steps = statistics.median(s for s, _ in reached)
  epochs = statistics.median(e for _, e in reached)
  return f"{steps:g} {count}", f"{epochs:.3f}"


def _sections(results):
  """[(dataset, keep, {(mining, loss): seeds})] in grid order."""
  out = {}
  for (ds, keep, mining, loss), seeds in results.items():
    out.setdefault((ds, keep), {})[(mining, loss)] = seeds
  return [(ds, keep, groups) for (ds, keep), groups in out.items()]


def _section_title(ds, keep) -> str:
  return f"{ds}, " + ("balanced" if keep >= 1 else
                      f"imbalanced (classes 0-4 keep {keep:g})")


def _where(a, b) -> str:
  """"above", "below" or "overlaps": seeds a's mean ± std interval against
  seeds b's."""
  (ma, sa), (mb, sb) = _stats(a), _stats(b)
  return ("above" if ma - sa > mb + sb else "below" if ma + sa < mb - sb
          else "overlaps")


def _compare(a, b, names=("Shadow's", "Triplet's")) -> str:
  """_where in words; with one seed on either side only which mean is
  higher (no spread to judge)."""
  if min(len(a), len(b)) < 2:
    higher = statistics.fmean(a) > statistics.fmean(b)
    return (f"{names[0]} mean is {'higher' if higher else 'lower'} on one "
            "seed (no spread to judge)")
  where = _where(a, b)
  return (f"{names[0]} mean ± std interval "
          f"{'overlaps' if where == 'overlaps' else 'lies ' + where} "
          f"{names[1]}")


def _reading(ds, keep, groups) -> list[str]:
  """Sentences computed from one section's numbers (never fixed prose)."""
  out = []
  metric = lambda seeds, k: [s[k] if k == "silhouette" else s["metrics"][k]
                             for s in seeds]
  for mining in MININGS:
    sh, tr = groups.get((mining, "shadow")), groups.get((mining, "triplet"))
    if sh and tr:
      parts = []
      for k, name in (("map_at_r", "MAP@R"), ("precision_at_1", "P@1"),
                      ("silhouette", "silhouette")):
        (ms, ss), (mt, st) = _stats(metric(sh, k)), _stats(metric(tr, k))
        parts.append(f"{name} {ms:.4f} ± {ss:.4f} vs {mt:.4f} ± {st:.4f}: "
                     + _compare(metric(sh, k), metric(tr, k)))
      target = _target(groups, mining)
      parts.append(f"steps to validation P@1 {target}: "
                   f"{_to_target(sh, target)[0]} vs {_to_target(tr, target)[0]}")
      mem_s = _mb(sh)
      mem_t = _mb(tr)
      if mem_s is not None and mem_t:
        parts.append(f"step memory {mem_s:.1f} vs {mem_t:.1f} MB "
                     f"({100 * (mem_s - mem_t) / mem_t:+.1f}%, "
                     f"{(mem_s - mem_t) * 2**20:+,.0f} bytes)")
      out.append(f"{mining}, Shadow vs Triplet "
                 f"({min(len(sh), len(tr))} seed(s)): " + "; ".join(parts)
                 + ".")
    sq = groups.get((mining, "sq_triplet"))
    if sh and sq:
      (ms, ss), (mq, sq_std) = (_stats(metric(sh, "map_at_r")),
                                _stats(metric(sq, "map_at_r")))
      common = {s["seed"]: s["metrics"]["map_at_r"] for s in sh}
      diffs = [abs(common[s["seed"]] - s["metrics"]["map_at_r"])
               for s in sq if s["seed"] in common]
      spread = max(ss, sq_std)
      verdict = ("agree within the seed spread" if len(sh) > 1 and len(sq) > 1
                 and abs(ms - mq) <= spread else
                 "differ by more than the seed spread" if len(sh) > 1
                 and len(sq) > 1 else "cannot be judged on one seed")
      out.append(
          f"{mining}, Shadow (unit, m={MARGIN:g}) vs sq. Triplet "
          f"(m={2 * MARGIN:g}): MAP@R {ms:.4f} vs {mq:.4f}, |difference of "
          f"means| {abs(ms - mq):.4f} against a seed std of up to "
          f"{spread:.4f}: they {verdict}; same-seed runs differ by at most "
          f"{max(diffs):.4f} MAP@R." if diffs else "")
    raw = groups.get((mining, "shadow_raw"))
    if sh and raw:
      (ms, ss), (mr, sr) = (_stats(metric(sh, "map_at_r")),
                            _stats(metric(raw, "map_at_r")))
      out.append(f"{mining}, unnormalised vs normalised Shadow: MAP@R "
                 f"{mr:.4f} ± {sr:.4f} vs {ms:.4f} ± {ss:.4f}: "
                 + _compare(metric(raw, "map_at_r"), metric(sh, "map_at_r"),
                            ("the unnormalised one's", "the normalised one's"))
                 + ".")
  return [line for line in out if line]


def _mb(seeds):
  values = [s["step_temp_bytes"] for s in seeds
            if s.get("step_temp_bytes") is not None]
  return statistics.fmean(values) / 2**20 if values else None


def _tsne_figure(out: str, ds: str, groups, limit: int) -> str | None:
  """tsne-<ds>.png: Shadow vs Triplet, each mining, seed 0, balanced;
  drawn once all its panels' runs exist (t-SNE is slow), redrawn only when
  they change. The file name, or None while runs are missing."""
  panels = [(mining, loss) for mining in MININGS for loss in PAIR
            if (mining, loss) in groups]
  seed0 = {p: next((s for s in groups[p] if s["seed"] == 0), None)
           for p in panels}
  if not panels or any(s is None for s in seed0.values()):
    return None
  name = f"tsne-{re.sub(r'[^A-Za-z0-9_]+', '_', ds).strip('_')[-24:]}.png"
  stamp = json.dumps([[p, seed0[p]["workdir"], seed0[p]["step"]]
                      for p in panels] + [limit])
  stamp_path = os.path.join(out, name + ".json")
  if (os.path.exists(os.path.join(out, name)) and os.path.exists(stamp_path)
      and open(stamp_path).read() == stamp):
    return name
  minings = [m for m in MININGS if any(p[0] == m for p in panels)]
  fig, axes = plt.subplots(len(minings), len(PAIR), squeeze=False,
                           figsize=(4 * len(PAIR), 4 * len(minings)))
  for ax in axes.flat:
    ax.axis("off")
  for (mining, loss) in panels:
    s = seed0[(mining, loss)]
    emb, labels = study.split_embeddings(s["workdir"], s["step"], limit)
    ax = axes[minings.index(mining), PAIR.index(loss)]
    ax.axis("on")
    study.tsne_panel(ax, emb, labels,
                     f"{LOSSES[loss]['label']}, {mining}\n"
                     f"test MAP@R {s['metrics']['map_at_r']:.3f}")
  fig.suptitle(f"{ds}: t-SNE of {min(limit, len(labels))} test embeddings "
               "(seed 0)", fontsize=10)
  study.save_figure(fig, os.path.join(out, name), dpi=100)
  files.write_text(stamp_path, stamp)
  return name


def write_report(results, pending, out: str, command: str, scale_name: str,
                 seconds: float, root: str) -> None:
  scale = SCALES[scale_name]
  done = [s for seeds in results.values() for s in seeds]
  train_minutes = sum(s["train_seconds"] for s in done) / 60
  try:
    with open(os.path.join(root, "started")) as f:
      started = float(f.read())
    # To the last run finished, so a later call that only rewrites this
    # page does not add its idle time.
    last = max(os.path.getmtime(os.path.join(r["workdir"], "summary.json"))
               for r in done)
    since = (last - started) / 60
  except (OSError, ValueError):
    since = None
  wall = (f"{since:.0f} min from the study's first start to its last "
          "finished run (pauses and restarts included), "
          if since is not None else "")
  steps = ", ".join(f"{ds}: {scale.get('steps_by_dataset', {}).get(ds, scale['steps'])}"
                    for ds in dict.fromkeys(k[0] for k in results))
  lines = [
      f"# Shadow vs Triplet ({scale_name} scale)", "",
      f"Command: `{command}`", "",
      f"Machine: {_cpu()}, "
      f"{os.cpu_count()} CPUs, load average "
      f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min) when "
      f"this page was written, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
      f"{len(done)} runs done, {train_minutes:.0f} min of training in all; "
      f"wall time: {wall}{seconds / 60:.0f} min in this call.", "",
      f"Set-up (configs/siamese.py): {done[0]['backbone'] if done else '?'} "
      f"backbone, {done[0]['embedding_dim'] if done else '?'}-d embedding, "
      f"AdamW with warm-up and cosine decay. Steps: {steps}. A step is "
      f"{scale['triplets']} random (a, p, n) triplets "
      f"({3 * scale['triplets']} images) or, for semi-hard mining, "
      f"{scale['batch_size']} images ({scale['batch_size'] // scale['samples_per_class']} "
      f"classes x {scale['samples_per_class']}) whose semi-hard triplets "
      f"are mined. Validation every {scale['eval_every']} steps on "
      f"{scale['val_size']} training images held out of training "
      "(stratified, so imbalanced like the training set where it is); test: "
      "the whole (balanced) test split, at each run's best validation MAP@R checkpoint. "
      "Metrics are mean ± std over seeds (the number in the seeds column); "
      "R@k is 1 when a correct image is in the top k, so R@1 = P@1. "
      f"Silhouette: sklearn's silhouette score (cosine) of {scale['tsne']} "
      "test embeddings (a seeded random subset) by class, the measure of "
      "tight, separated clusters paper 2's v2 reports (-1 to 1). Steps "
      "and epochs to target: median over the seeds that reached the "
      "target validation P@1 (how many did in brackets); the target of a "
      "section's mining is 95% of the median over its losses of the best "
      "validation P@1 (seed mean), rounded down to 0.01. Step memory: XLA's compiled "
      "temp allocation of one training step (activations, not parameters); "
      "images/s: median over logs, training only; train s: median over "
      "seeds of a run's training call, with compilation and validation (a "
      "run stopped and resumed counts its last call only).", "",
      "Grid: "
      + "; ".join(f"{_section_title(ds, keep)}: "
                  + ", ".join(dict.fromkeys(l for _, l in groups))
                  + " x " + ", ".join(dict.fromkeys(m for m, _ in groups))
                  for ds, keep, groups in _sections(results))
      + (" (the cpu scale prunes the full grid of 4 losses x 2 minings x "
         "balanced/imbalanced x 2 datasets)" if scale_name == "cpu" else "")
      + ".", "",
  ]
  readings, tsnes = [], []
  for ds, keep, groups in _sections(results):
    targets = {m: _target(groups, m) for m in dict.fromkeys(m for m, _ in groups)}
    # How much training a section's runs had, and where they ended: a tiny
    # budget on a hard dataset leaves every loss near chance, which the
    # reader must see before comparing losses there.
    budget = {}
    for (mining, _), seeds in groups.items():
      for r in seeds:
        last_step = max(step for step, _ in r["curves"][_CURVE])
        budget[mining] = last_step * r["epochs_per_step"]
    best = max((s["metrics"]["precision_at_1"] for seeds in groups.values()
                for s in seeds), default=None)
    lines += [f"## {_section_title(ds, keep)}", "",
              "Training: " + ", ".join(
                  f"{m} {e:.2f} epochs" for m, e in budget.items())
              + (f"; best test P@1 of any run here {best:.4f}"
                 if best is not None else "") + ".",
              "",
              "Target validation P@1: " + ", ".join(
                  f"{m} {'–' if t is None else t}" for m, t in targets.items())
              + ".", "",
              "| loss | mining | seeds | test P@1 | R@1 | R@5 | R@10 | MAP@R "
              "| silhouette | steps to target | epochs to target | step MB "
              "| images/s | train s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (mining, loss), seeds in groups.items():
      if not seeds:
        lines.append(f"| {LOSSES[loss]['label']} | {mining} | 0 | pending "
                     "| | | | | | | | | | |")
        continue
      m = lambda k: study.fmt_std([s["metrics"][k] for s in seeds])
      steps_t, epochs_t = _to_target(seeds, targets[mining])
      mb = _mb(seeds)
      lines.append(
          f"| {LOSSES[loss]['label']} | {mining} | {len(seeds)} "
          f"| {m('precision_at_1')} | {m('recall_at_1')} | {m('recall_at_5')} "
          f"| {m('recall_at_10')} | {m('map_at_r')} "
          f"| {study.fmt_std([s['silhouette'] for s in seeds], digits=3)} "
          f"| {steps_t} | {epochs_t} "
          f"| {'–' if mb is None else f'{mb:.1f}'} "
          f"| {statistics.median(s['images_per_sec'] for s in seeds):.0f} "
          f"| {statistics.median(s['train_seconds'] for s in seeds):.0f} |")
    lines.append("")
    readings += [f"- {_section_title(ds, keep)}, {r}"
                 for r in _reading(ds, keep, groups)]
    if keep >= 1:
      tsnes.append((ds, _tsne_figure(out, ds, groups, scale["tsne"])))
  lines += ["## Reading (computed from the tables)", ""]
  # The headline: every section x mining where both have 2+ seeds.
  outcome, clusters, same_mem, n = {}, {}, 0, 0
  for _, _, groups in _sections(results):
    for mining in MININGS:
      sh = groups.get((mining, "shadow")) or []
      tr = groups.get((mining, "triplet")) or []
      if min(len(sh), len(tr)) < 2:
        continue
      n += 1
      where = _where([r["metrics"]["map_at_r"] for r in sh],
                     [r["metrics"]["map_at_r"] for r in tr])
      outcome[where] = outcome.get(where, 0) + 1
      where = _where([r["silhouette"] for r in sh],
                     [r["silhouette"] for r in tr])
      clusters[where] = clusters.get(where, 0) + 1
      same_mem += _mb(sh) == _mb(tr)
  if n:
    lines.append(
        f"- Over {n} Shadow vs Triplet comparisons (dataset x balance x "
        f"mining, 2+ seeds each), Shadow's test MAP@R mean ± std interval "
        f"lies above Triplet's in {outcome.get('above', 0)}, below in "
        f"{outcome.get('below', 0)} and overlaps it in "
        f"{outcome.get('overlaps', 0)}; its silhouette score's lies above "
        f"in {clusters.get('above', 0)}, below in {clusters.get('below', 0)} "
        f"and overlaps in {clusters.get('overlaps', 0)}; the compiled "
        f"step's temp memory is the same to the byte in {same_mem} of {n}.")
  lines += readings or ["- Nothing to compare yet."]
  lines += ["", "![validation P@1](curves.png)", ""]
  for ds, name in tsnes:
    lines += ([f"![t-SNE {ds}]({name})", ""] if name else
              [f"t-SNE for {ds}: pending (needs seed 0 of Shadow and Triplet "
               "with every mining).", ""])
  if pending:
    names = [f"{_name(*key)} seed {seed}" for seed, key in pending]
    lines += [f"Pending ({len(pending)} runs, the runner resumes where it "
              f"stopped): {', '.join(names)}.", ""]
  os.makedirs(out, exist_ok=True)
  files.write_text(os.path.join(out, "README.md"), "\n".join(lines))
  files.write_json(os.path.join(out, "results.json"), [
      dict(dataset=k[0], keep=k[1], mining=k[2], loss=k[3], runs=v)
      for k, v in results.items()])
  _plot_curves(results, os.path.join(out, "curves.png"), scale_name)


def _plot_curves(results, path: str, scale_name: str) -> None:
  sections = _sections(results)
  fig, axes = plt.subplots(1, len(sections), squeeze=False,
                           figsize=(5.5 * len(sections), 4.2))
  colors = dict(zip(LOSSES, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
  for ax, (ds, keep, groups) in zip(axes[0], sections):
    for (mining, loss), seeds in groups.items():
      if not seeds:
        continue
      # Mean over the seeds done; all log the same steps.
      curves = [dict(s["curves"][_CURVE]) for s in seeds]
      steps = sorted(set.intersection(*(set(c) for c in curves)))
      ax.plot(steps, [statistics.fmean(c[t] for c in curves) for t in steps],
              color=colors[loss], linestyle="-" if mining == "semihard" else "--",
              marker=".", label=f"{LOSSES[loss]['label']}, {mining}")
    for mining in dict.fromkeys(m for m, _ in groups):
      target = _target(groups, mining)
      if target is not None:
        ax.axhline(target, color="grey", linewidth=0.8,
                   linestyle="-" if mining == "semihard" else "--")
    ax.set(xlabel="step", ylabel="validation P@1 (mean over seeds); grey: "
           "targets", title=_section_title(ds, keep))
    ax.grid(alpha=0.3)
    if any(groups.values()):  # Labelled lines to list.
      ax.legend(fontsize=7)
  fig.suptitle(f"Shadow vs Triplet, {scale_name} scale", fontsize=10)
  study.save_figure(fig, path, dpi=100)


@exit_on_user_error
def main(argv):
  del argv
  scale = SCALES[_SCALE.value]
  if _SCALE.value == "smoke" and _DATASET.value is None:
    raise UserError("--scale=smoke needs --dataset (a small spec, e.g. "
                    "idx:DIR).")
  root = _WORKDIR.value or os.path.join("runs",
                                        f"shadow_vs_triplet-{_SCALE.value}")
  out = _OUT.value or (os.path.join(root, "results") if _SCALE.value == "smoke"
                       else os.path.join(REPO, "experiments", "results",
                                         "shadow_vs_triplet"))
  start = time.perf_counter()
  command = study.command_line("shadow_vs_triplet.py")

  def report(results, pending):
    write_report(results, pending, out, command, _SCALE.value,
                 time.perf_counter() - start, root)
  run_all(_SCALE.value, _DATASET.value, _SEEDS.value or scale["seeds"], root,
          on_run_done=report)
  print(open(os.path.join(out, "README.md")).read())


if __name__ == "__main__":
  app.run(main)

r"""Paper 1: the compact involution model and its variants, on three datasets.

Rows are (dataset, variant, activation, loss, widths). Every row trains
with the same optimiser, batch and step budget as the others of its
dataset, is evaluated on the test split at the checkpoint with the best
validation MAP@R (training images held out of training), and is repeated
over seeds: mean ± std. Variants are compared twice: at their default
widths (involution_only is then 5x smaller than the rest) and at a matched
budget of about 0.117 M parameters (involution_only widened).

  METRICJAX_DATA_DIR=../shared/datasets python experiments/compact_involution.py --scale=cpu
  python experiments/compact_involution.py --scale=smoke --dataset=idx:DIR --out=/tmp/x

Runs are resumable and skipped when done (WORKDIR/<row>-<hash>/); the page
is rewritten after every row, so a stopped runner leaves the rows it has.
"""

import collections
import os
import platform
import statistics
import time

from absl import app
from absl import flags
import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from metricjax import cli
from metricjax import files
from metricjax import study
from metricjax.config_utils import load_config
from metricjax.errors import exit_on_user_error
from metricjax.errors import UserError

matplotlib.use("Agg")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_WIDTHS = (32, 64, 64, 96)
# involution_only at hybrid1's budget: 117,368 parameters on 28x28x1 input
# against hybrid1's 117,659 (widths are multiples of 16, the involution's
# channels per group).
MATCHED_WIDTHS = (80, 160, 160, 240)

Row = collections.namedtuple("Row", "dataset variant activation loss widths")


def _core(ds) -> list[Row]:
  """The rows that test the paper's claims, most telling first (a runner
  stopped early has those)."""
  return [Row(ds, "hybrid1", "gelu", "ms", DEFAULT_WIDTHS),
          Row(ds, "conv_only", "gelu", "ms", DEFAULT_WIDTHS),
          Row(ds, "involution_only", "gelu", "ms", MATCHED_WIDTHS),
          Row(ds, "hybrid1", "relu", "ms", DEFAULT_WIDTHS),
          Row(ds, "hybrid1", "gelu", "ce", DEFAULT_WIDTHS),
          Row(ds, "hybrid3", "gelu", "ms", DEFAULT_WIDTHS),
          Row(ds, "involution_only", "gelu", "ms", DEFAULT_WIDTHS),
          Row(ds, "hybrid2", "gelu", "ms", DEFAULT_WIDTHS)]


def _cpu_rows(datasets) -> list[Row]:
  """Every core row on the first dataset; on the others the MS rows of the
  architecture and activation claims, hybrid3 only where the paper says
  hybrids suffer most (CIFAR-10). The matched-width involution_only runs
  only on the first: at ~7 min a run here it would cost the others 40 min."""
  rows = _core(datasets[0])[:-1]
  for ds in datasets[1:]:
    rows += [r for r in _core(ds)[:6] if r.loss == "ms" and
             r.variant != "involution_only" and
             (r.variant != "hybrid3" or "cifar" in ds)]
  return rows + _core(datasets[0])[-1:]  # hybrid2: hybrid3 says more.


def _full_rows(datasets) -> list[Row]:
  """Every variant x activation x loss, involution_only at both widths."""
  variants = ("hybrid1", "hybrid2", "hybrid3", "conv_only", "involution_only")
  return [Row(ds, v, a, l, w) for ds in datasets for v in variants
          for w in ((DEFAULT_WIDTHS, MATCHED_WIDTHS)
                    if v == "involution_only" else (DEFAULT_WIDTHS,))
          for a in ("gelu", "relu") for l in ("ms", "ce")]


SCALES = {
    # The pipeline in seconds (tests); not a comparison.
    "smoke": dict(datasets=None, steps=6, eval_every=3, val_size=16,
                  batch_size=16, samples_per_class=4, seeds=2,
                  width_scale=0.25, embedding_dim=16, eval_batch=16,
                  tsne_points=60, grid="hybrid1 with MS and with CE.",
                  rows=lambda ds: [
                      Row(ds[0], "hybrid1", "gelu", "ms", DEFAULT_WIDTHS),
                      Row(ds[0], "hybrid1", "gelu", "ce", DEFAULT_WIDTHS)]),
    # What this 2-core CPU does in about an hour (shared with the other
    # studies): 8 rows on Fashion-MNIST, 4 on CIFAR-10, 3 on MNIST; 300
    # steps of 128.
    "cpu": dict(datasets=("fashion_mnist", "cifar10", "mnist"), steps=300,
                eval_every=100, val_size=1000, batch_size=128,
                samples_per_class=16, seeds=3, width_scale=1.0,
                embedding_dim=64, eval_batch=1000, tsne_points=1500,
                rows=_cpu_rows, grid=(
                    "pruned from the full grid (5 variants x GELU/ReLU x "
                    "MS/CE x 3 datasets, involution_only at both widths: "
                    "72 rows) to 15: every variant with MS (involution_only "
                    "at both widths), hybrid1 with ReLU and hybrid1 with CE "
                    "on Fashion-MNIST; hybrid1 (GELU and ReLU), conv_only "
                    "and hybrid3 with MS on CIFAR-10; hybrid1 (GELU and "
                    "ReLU) and conv_only with MS on MNIST. CE, ReLU and the "
                    "matched involution_only (about 7 min a run here) are "
                    "not crossed with the other factors.")),
    # An accelerator budget: the whole grid, a few epochs per run.
    "full": dict(datasets=("fashion_mnist", "cifar10", "mnist"), steps=5000,
                 eval_every=500, val_size=5000, batch_size=256,
                 samples_per_class=32, seeds=5, width_scale=1.0,
                 embedding_dim=64, eval_batch=1000, tsne_points=3000,
                 rows=_full_rows, grid="every variant x GELU/ReLU x MS/CE "
                 "x dataset, involution_only at both widths."),
}

_SCALE = flags.DEFINE_enum("scale", "cpu", list(SCALES), "Budget.")
_DATASET = flags.DEFINE_list(
    "dataset", None, "Datasets (names or specs; default: the scale's).")
_SEEDS = flags.DEFINE_integer("seeds", None, "Seeds (default: the scale's).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Runs go here (default runs/compact_involution-SCALE).")
_OUT = flags.DEFINE_string(
    "out", None, "Results folder (default experiments/results/"
    "compact_involution; smoke: WORKDIR/results).")
_SELECT = "val_map_at_r"
_METRICS = ("precision_at_1", "map_at_r", "recall_at_1", "recall_at_5",
            "recall_at_10", "accuracy")


def _config(scale: dict, row: Row, seed: int):
  config = load_config(
      os.path.join(REPO, "configs", "compact_involution.py")
      + f":loss={row.loss},variant={row.variant},activation={row.activation}")
  # The dataset after parsing: specs hold characters the arg parser splits.
  config.dataset = row.dataset
  config.augment = "cifar" in row.dataset
  config.model.widths = tuple(max(16, int(w * scale["width_scale"]))
                              for w in row.widths)
  config.model.embedding_dim = scale["embedding_dim"]
  return study.set_budget(config, scale, seed)


def _name(row: Row) -> str:
  widths = "matched" if row.widths == MATCHED_WIDTHS else "default"
  return (f"{os.path.basename(row.dataset.rstrip('/'))}-{row.variant}-"
          f"{row.activation}-{row.loss}-{widths}")


def run_rows(scale: dict, rows, seeds: int, root: str, on_row_done=None):
  """{row: [summaries per seed]}; on_row_done(results so far) after each."""
  results = {}
  for row in rows:
    runs = []
    for seed in range(seeds):
      config = _config(scale, row, seed)
      print(f"== {_name(row)} seed {seed}", flush=True)
      runs.append(study.run(config, study.run_dir(root, _name(row), config),
                            select=_SELECT))
    results[row] = runs
    if on_row_done:
      on_row_done(results)
  return results


def _mean(runs, key):
  return statistics.fmean(s["metrics"][key] for s in runs)


def _spread(runs, key):
  values = [s["metrics"][key] for s in runs]
  return statistics.stdev(values) if len(values) > 1 else 0.0


def _apart(a, b, key="map_at_r") -> str:
  """How a's mean compares with b's, in units of their seed spreads."""
  diff = _mean(a, key) - _mean(b, key)
  spread = _spread(a, key) + _spread(b, key)
  if abs(diff) <= spread:
    return f"{diff:+.4f}, within the seed spread (std sum {spread:.4f})"
  return f"{diff:+.4f}, beyond the seed spread (std sum {spread:.4f})"


def reading(results) -> list[str]:
  """Sentences about the paper's claims, each computed from the rows."""
  by = {(r.dataset, r.variant, r.activation, r.loss, r.widths): runs
        for r, runs in results.items()}
  lines = []
  for ds in dict.fromkeys(r.dataset for r in results):
    get = lambda v, a="gelu", l="ms", w=DEFAULT_WIDTHS: by.get((ds, v, a, l, w))
    h1 = get("hybrid1")
    if not h1:
      continue
    said = []
    ms_rows = {r: runs for r, runs in results.items()
               if r.dataset == ds and r.loss == "ms"}
    best = max(ms_rows, key=lambda r: _mean(ms_rows[r], "map_at_r"))
    said.append(f"highest test MAP@R with MS: {_name(best)} "
                f"({_mean(ms_rows[best], 'map_at_r'):.4f})")
    for label, other in (("conv_only", get("conv_only")),
                         ("involution_only at matched width",
                          get("involution_only", w=MATCHED_WIDTHS)),
                         ("involution_only at default width",
                          get("involution_only")),
                         ("hybrid2", get("hybrid2")),
                         ("hybrid3", get("hybrid3"))):
      if other:
        said.append(f"hybrid1 minus {label}: {_apart(h1, other)}")
    if get("hybrid1", a="relu"):
      said.append(f"GELU minus ReLU (hybrid1, MS): "
                  f"{_apart(h1, get('hybrid1', a='relu'))}")
    if get("hybrid1", l="ce"):
      said.append(f"MS minus CE (hybrid1): "
                  f"{_apart(h1, get('hybrid1', l='ce'))}")
    lines.append(f"- {ds}: " + "; ".join(said) + ".")
  return lines


def write_report(results, out: str, command: str, scale_name: str,
                 seconds: float, pending=()) -> None:
  scale = SCALES[scale_name]
  runs = [s for rs in results.values() for s in rs]
  train_minutes = sum(s["train_seconds"] for s in runs) / 60
  seeds = max(len(rs) for rs in results.values())
  lines = [
      f"# Paper 1: compact involution model ({scale_name} scale)", "",
      f"Command: `{command}`", "",
      f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, shared with "
      f"other studies; load average {os.getloadavg()[0]:.2f} when this page "
      f"was written; {time.strftime('%Y-%m-%d')}; {len(runs)} runs, "
      f"{train_minutes:.0f} min of training in all (this call: "
      f"{seconds / 60:.0f} min for the runs not already done). images/s and "
      "train time are of a loaded machine: compare them within this page "
      "only.", "",
      f"Every run: {scale['steps']} steps of {scale['batch_size']} "
      f"(MS: {scale['batch_size'] // scale['samples_per_class']} classes x "
      f"{scale['samples_per_class']}; CE: uniform), AdamW 3e-3 with warm-up "
      "and cosine decay, weight decay 1e-4, random crop + flip on CIFAR-10 "
      f"only, {scale['embedding_dim']}-d L2-normalised embedding; validation "
      f"MAP@R every {scale['eval_every']} steps on {scale['val_size']} "
      "training images held out of training (stratified); test metrics "
      "(test split against itself, cosine) at the best-validation "
      f"checkpoint; mean ± std over {seeds} seed(s). MS: pytorch-metric-"
      "learning's defaults (alpha 2, beta 50, base 0.5, epsilon 0.1). CE "
      "trains a classification head on the embedding; retrieval uses the "
      "embedding, accuracy the head. MNIST: 10,000 training digits (all that is "
      "offline here), not 60,000.", "",
      f"Rows: {scale['grid']}", "",
      "Widths: *default* (32, 64, 64, 96) for every variant; *matched*: "
      f"involution_only widened to {MATCHED_WIDTHS} so that it has "
      "about as many parameters as hybrid1 (the default-width rows of the "
      "other variants are already within 2% of each other).", "",
      "| dataset | variant | act. | loss | widths | params | float32 MB | "
      "P@1 | MAP@R | R@1 | R@5 | R@10 | accuracy | images/s | train s |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for row, rs in results.items():
    cells = [study.fmt_std([s["metrics"][k] for s in rs])
             if k in rs[0]["metrics"] else "—" for k in _METRICS]
    widths = "matched" if row.widths == MATCHED_WIDTHS else "default"
    lines.append(
        f"| {row.dataset} | {row.variant} | {row.activation} | {row.loss} | "
        f"{widths} | {rs[0]['num_params']:,} | "
        f"{rs[0]['param_bytes'] / 1e6:.3f} | " + " | ".join(cells) +
        f" | {statistics.median(s['images_per_sec'] for s in rs):.0f} | "
        f"{statistics.fmean(s['train_seconds'] for s in rs):.0f} |")
  lines += ["", "Reading (differences of mean test MAP@R; 'within the seed "
            "spread' when the difference is at most the sum of the two "
            "standard deviations):", ""] + reading(results)
  if pending:
    lines += ["", f"Not run yet: {', '.join(pending)} (the runner resumes "
              "where it stopped)."]
  lines += ["", "![validation MAP@R](curves.png)", "",
            "![t-SNE of hybrid1's test embeddings](tsne.png)", ""]
  files.write_text(os.path.join(out, "README.md"), "\n".join(lines))
  files.write_json(os.path.join(out, "results.json"),
                {_name(r): rs for r, rs in results.items()})
  _plot_curves(results, os.path.join(out, "curves.png"))


def _plot_curves(results, path):
  datasets = list(dict.fromkeys(r.dataset for r in results))
  fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4),
                           squeeze=False)
  for ax, ds in zip(axes[0], datasets):
    for row, rs in results.items():
      if row.dataset != ds:
        continue
      curves = [dict(s["curves"][_SELECT]) for s in rs]
      steps = sorted(curves[0])
      ax.plot(steps, [statistics.fmean(c[t] for c in curves) for t in steps],
              marker=".", label=_name(row).split("-", 1)[1])
    ax.set(xlabel="step", ylabel="validation MAP@R (mean of seeds)",
           title=os.path.basename(ds.rstrip("/")))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
  study.save_figure(fig, path)


def write_tsne(results, scale: dict, root: str, out: str) -> None:
  """hybrid1 (GELU, MS, seed 0)'s test embeddings, one panel per dataset."""
  picks = [(row, rs[0]) for row, rs in results.items()
           if (row.variant, row.activation, row.loss) ==
           ("hybrid1", "gelu", "ms")]
  if not picks:
    return
  fig, axes = plt.subplots(1, len(picks), figsize=(4.5 * len(picks), 4.5),
                           squeeze=False)
  for ax, (row, summary) in zip(axes[0], picks):
    workdir = study.run_dir(root, _name(row), _config(scale, row, 0))
    # The page is redrawn after every row: fit each panel once.
    cache = os.path.join(workdir, f"tsne-{summary['step']}.npz")
    if not os.path.exists(cache):
      emb, labels = study.split_embeddings(workdir, summary["step"],
                                          scale["tsne_points"])
      with files.atomic_write(cache, "wb") as f:
        np.savez(f, points=study.tsne(emb), labels=labels)
    with np.load(cache) as panel:
      study.scatter_panel(
          ax, panel["points"], panel["labels"],
          f"{os.path.basename(row.dataset.rstrip('/'))}: hybrid1, MS, "
          f"test MAP@R {summary['metrics']['map_at_r']:.3f}")
  study.save_figure(fig, os.path.join(out, "tsne.png"))


@exit_on_user_error
def main(argv):
  del argv
  cli.quiet_logging()
  scale = SCALES[_SCALE.value]
  datasets = tuple(_DATASET.value or scale["datasets"] or ())
  if not datasets:
    raise UserError("--scale=smoke needs --dataset (a small spec, e.g. "
                    "idx:DIR).")
  root = _WORKDIR.value or os.path.join("runs",
                                        f"compact_involution-{_SCALE.value}")
  out = _OUT.value or (os.path.join(root, "results") if _SCALE.value == "smoke"
                       else os.path.join(REPO, "experiments", "results",
                                         "compact_involution"))
  rows = scale["rows"](datasets)
  start = time.perf_counter()
  command = study.command_line("compact_involution.py")

  def report(results):
    pending = [_name(r) for r in rows if r not in results]
    write_report(results, out, command, _SCALE.value,
                 time.perf_counter() - start, pending)
    write_tsne(results, scale, root, out)
  run_rows(scale, rows, _SEEDS.value or scale["seeds"], root,
           on_row_done=report)
  print(open(os.path.join(out, "README.md")).read())


if __name__ == "__main__":
  app.run(main)

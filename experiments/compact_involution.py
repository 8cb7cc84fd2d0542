r"""Paper 1: the compact involution model and its variants, on three datasets.

Rows are (dataset, variant, activation, loss, widths). Every row trains
with the same optimiser, batch and budget as the others of its dataset, is
evaluated on the test split at the checkpoint with the best validation
MAP@R (training images held out of training), and is repeated over seeds:
mean ± std. Variants are compared twice: at their default widths
(involution_only is then 5x smaller than the rest) and at a matched budget
of about 0.117 M parameters (involution_only widened).

  python experiments/compact_involution.py --scale=cpu
  python experiments/compact_involution.py --scale=long   # issue 22's rows
  python experiments/compact_involution.py --scale=cpu --report_only
  python experiments/compact_involution.py --scale=smoke --dataset=idx:DIR

Runs are resumable and skipped when done (WORKDIR/<row>-<hash>/); the page
(OUT/README.md, results.json, curves.png, tsne.png) is rewritten after
every run, so a stopped runner leaves the runs it has.
"""

import collections
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

DEFAULT_WIDTHS = (32, 64, 64, 96)
# involution_only at hybrid1's budget: 117,368 parameters on 28x28x1 input
# against hybrid1's 117,659 (widths are multiples of 16, the involution's
# channels per group).
MATCHED_WIDTHS = (80, 160, 160, 240)

Row = collections.namedtuple("Row", "dataset variant activation loss widths")


def _core(ds) -> list[Row]:
  """The rows that test the paper's claims, most telling first."""
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


def _long_rows(datasets) -> list[Row]:
  """Issue 22's decisive rows: hybrid1 GELU/ReLU and conv_only, MS."""
  return [Row(ds, v, a, "ms", DEFAULT_WIDTHS) for ds in datasets
          for v, a in (("hybrid1", "gelu"), ("hybrid1", "relu"),
                       ("conv_only", "gelu"))]


def _full_rows(datasets) -> list[Row]:
  """Every variant x activation x loss, involution_only at both widths."""
  variants = ("hybrid1", "hybrid2", "hybrid3", "conv_only", "involution_only")
  return [Row(ds, v, a, l, w) for ds in datasets for v in variants
          for w in ((DEFAULT_WIDTHS, MATCHED_WIDTHS)
                    if v == "involution_only" else (DEFAULT_WIDTHS,))
          for a in ("gelu", "relu") for l in ("ms", "ce")]


_CPU = dict(datasets=("fashion_mnist", "cifar10", "mnist"), steps=300,
            eval_every=100, val_size=1000, batch_size=128,
            samples_per_class=16, seeds=3, width_scale=1.0, embedding_dim=64,
            eval_batch=1000, tsne_points=1500)
SCALES = {
    # The pipeline in seconds (tests); not a comparison.
    "smoke": dict(datasets=None, steps=6, eval_every=3, val_size=16,
                  batch_size=16, samples_per_class=4, seeds=2,
                  width_scale=0.25, embedding_dim=16, eval_batch=16,
                  tsne_points=60, grid="hybrid1 with MS and with CE.",
                  rows=lambda ds: [
                      Row(ds[0], "hybrid1", "gelu", "ms", DEFAULT_WIDTHS),
                      Row(ds[0], "hybrid1", "gelu", "ce", DEFAULT_WIDTHS)]),
    # What this 2-core CPU does in about an hour and a half: 300 steps of
    # 128, 8 rows on Fashion-MNIST, 4 on CIFAR-10, 3 on MNIST.
    "cpu": dict(_CPU, rows=_cpu_rows, grid=(
        "pruned from the full grid (5 variants x GELU/ReLU x MS/CE x 3 "
        "datasets, involution_only at both widths: 72 rows) to 15: every "
        "variant with MS (involution_only at both widths), hybrid1 with ReLU "
        "and hybrid1 with CE on Fashion-MNIST; hybrid1 (GELU and ReLU), "
        "conv_only and hybrid3 with MS on CIFAR-10; hybrid1 (GELU and ReLU) "
        "and conv_only with MS on MNIST.")),
    # Issue 22: the decisive rows at whole epochs, validated every half.
    "long": dict(_CPU, datasets=("fashion_mnist", "cifar10"),
                 epochs={"fashion_mnist": 5, "cifar10": 8, "*": 5},
                 rows=_long_rows, grid=(
                     "hybrid1 (GELU and ReLU) and conv_only with MS on "
                     "Fashion-MNIST (5 epochs) and CIFAR-10 (8 epochs).")),
    # An accelerator budget: the whole grid, a few epochs per run.
    "full": dict(datasets=("fashion_mnist", "cifar10", "mnist"), steps=5000,
                 eval_every=500, val_size=5000, batch_size=256,
                 samples_per_class=32, seeds=5, width_scale=1.0,
                 embedding_dim=64, eval_batch=1000, tsne_points=3000,
                 rows=_full_rows, grid="every variant x GELU/ReLU x MS/CE "
                 "x dataset, involution_only at both widths."),
}

study.define_flags(SCALES)
_DATASET = flags.DEFINE_list(
    "dataset", None, "Datasets (names or specs; default: the scale's).")
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


def _row_entry(row: Row, runs) -> dict:
  return dict(name=_name(row), dataset=row.dataset, variant=row.variant,
              activation=row.activation, loss=row.loss,
              widths="matched" if row.widths == MATCHED_WIDTHS else "default",
              runs=runs)


def reading(page: dict) -> list[str]:
  """Sentences about the paper's claims, each computed from the rows."""
  by = {(r["dataset"], r["variant"], r["activation"], r["loss"], r["widths"]):
        [s["metrics"]["map_at_r"] for s in r["runs"]]
        for r in page["rows"] if r["runs"]}
  lines = []
  for ds in dict.fromkeys(r["dataset"] for r in page["rows"]):
    get = lambda v, a="gelu", l="ms", w="default": by.get((ds, v, a, l, w))
    h1 = get("hybrid1")
    if not h1:
      continue
    ms = {k: v for k, v in by.items() if k[0] == ds and k[3] == "ms"}
    best = max(ms, key=lambda k: statistics.fmean(ms[k]))
    said = [f"highest mean test MAP@R with MS: {'-'.join(best[1:3])} "
            f"({statistics.fmean(ms[best]):.4f})"]
    for label, other in (
        ("hybrid1 minus conv_only", get("conv_only")),
        ("hybrid1 minus involution_only at matched width",
         get("involution_only", w="matched")),
        ("hybrid1 minus involution_only at default width",
         get("involution_only")),
        ("hybrid1 minus hybrid2", get("hybrid2")),
        ("hybrid1 minus hybrid3", get("hybrid3")),
        ("GELU minus ReLU (hybrid1, MS)", get("hybrid1", a="relu")),
        ("MS minus CE (hybrid1)", get("hybrid1", l="ce"))):
      if other:
        said.append(f"{label}: {study.compare(h1, other).text()}")
    lines.append(f"- {ds}: " + "; ".join(said) + ".")
  return lines


def _budget(page: dict) -> str:
  """Steps and epochs per dataset, as the runs trained them."""
  seen = {}
  for r in page["rows"]:
    for s in r["runs"]:
      seen.setdefault(r["dataset"], (s["total_steps"], s["epochs"]))
  return "; ".join(f"{ds}: {steps} steps, {epochs:.2f} epochs"
                   for ds, (steps, epochs) in seen.items())


def write_report(page: dict, out: str) -> None:
  """OUT/README.md and curves.png from the results alone."""
  st = page["settings"]
  long = "epochs" in st
  lines = study.header(page, "Paper 1: compact involution model") + [
      f"Every run: batches of {st['batch_size']} (MS: "
      f"{st['batch_size'] // st['samples_per_class']} classes x "
      f"{st['samples_per_class']}; CE: uniform), AdamW 3e-3 with warm-up and "
      "cosine decay, weight decay 1e-4, random crop + flip on CIFAR-10 only, "
      f"{st['embedding_dim']}-d L2-normalised embedding. Budget: "
      f"{_budget(page)}; validation MAP@R "
      + ("every half epoch" if long else f"every {st['eval_every']} steps")
      + f" on {st['val_size']} training images held out of training "
      "(stratified); test metrics (test split against itself, cosine) at the "
      "best-validation checkpoint; mean ± std over seeds. MS: "
      "pytorch-metric-learning's defaults (alpha 2, beta 50, base 0.5, "
      "epsilon 0.1). CE trains a classification head on the embedding; "
      "retrieval uses the embedding, accuracy the head. MNIST: 10,000 "
      "training digits (all that is offline here), not 60,000.", "",
      f"Rows: {st['grid']}", "",
      "Widths: *default* (32, 64, 64, 96) for every variant; *matched*: "
      f"involution_only widened to {MATCHED_WIDTHS} so that it has about as "
      "many parameters as hybrid1.", "",
      "| dataset | variant | act. | loss | widths | seeds | params | float32 MB "
      "| P@1 | MAP@R | R@1 | R@5 | R@10 | accuracy | still improving | "
      "images/s | train s |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in page["rows"]:
    rs = r["runs"]
    if not rs:
      continue
    cells = [study.fmt_std([s["metrics"][k] for s in rs])
             if k in rs[0]["metrics"] else "—" for k in _METRICS]
    lines.append(
        f"| {r['dataset']} | {r['variant']} | {r['activation']} | {r['loss']} "
        f"| {r['widths']} | {len(rs)} | {rs[0]['num_params']:,} | "
        f"{rs[0]['param_bytes'] / 1e6:.3f} | " + " | ".join(cells) +
        f" | {study.still_improving(rs, _SELECT)} | "
        f"{statistics.median(s['images_per_sec'] for s in rs):.0f}"
        f" | {statistics.fmean(s['train_seconds'] for s in rs):.0f} |")
  lines += ["", "Still improving: the change of the seed-mean validation "
            "MAP@R from the last validation at or before 75% of training to "
            "the end (yes when above "
            f"{100 * study.PLATEAU_GAIN:g}% relative: the row had not "
            "plateaued).", "",
            "Reading (differences of mean test MAP@R, ± the half-width of "
            "their Welch 95% interval):", ""] + reading(page)
  if page.get("pending"):
    lines += ["", f"Not run yet: {', '.join(page['pending'])} (the runner "
              "resumes where it stopped)."]
  lines += ["", "![validation MAP@R](curves.png)", ""]
  lines += [f"![{f['alt']}]({f['file']})\n" for f in page.get("figures", [])]
  study.write_page(out, lines)
  datasets = list(dict.fromkeys(r["dataset"] for r in page["rows"]))
  study_plots.curves(
      os.path.join(out, "curves.png"),
      [(os.path.basename(ds.rstrip("/")),
        [(r["name"].split("-", 1)[1], r["runs"], {}) for r in page["rows"]
         if r["dataset"] == ds], []) for ds in datasets],
      _SELECT, "validation MAP@R (mean of seeds)",
      f"Paper 1, {page['scale']} scale")


def _tsne(page: dict, out: str, limit: int) -> None:
  """tsne.png: hybrid1 (GELU, MS, seed 0)'s test embeddings per dataset."""
  picks = [(r, next((s for s in r["runs"] if s["seed"] == 0), None))
           for r in page["rows"] if (r["variant"], r["activation"], r["loss"])
           == ("hybrid1", "gelu", "ms")]
  picks = [(r, s) for r, s in picks if s]
  if not picks:
    return
  study_plots.tsne_figure(
      os.path.join(out, "tsne.png"),
      [(0, i, s["workdir"], s["step"],
        f"{os.path.basename(r['dataset'].rstrip('/'))}: hybrid1, MS, test "
        f"MAP@R {s['metrics']['map_at_r']:.3f}")
       for i, (r, s) in enumerate(picks)], limit)
  page["figures"] = [dict(file="tsne.png",
                          alt="t-SNE of hybrid1's test embeddings (seed 0)")]


@exit_on_user_error
def main(argv):
  del argv
  cli.quiet_logging()
  s = study.setup("compact_involution", SCALES, __file__)
  if s.report_only:
    write_report(study.read_results(s.out), s.out)
    return
  datasets = tuple(_DATASET.value or s.scale["datasets"] or ())
  if not datasets:
    raise UserError("--scale=smoke needs --dataset (a small spec, e.g. "
                    "idx:DIR).")
  rows = s.scale["rows"](datasets)

  def run_one(row, seed):
    print(f"== {_name(row)} seed {seed}", flush=True)
    config = _config(s.scale, row, seed)
    return study.run(config, study.run_dir(s.root, _name(row), config),
                     select=_SELECT, scale=s.scale_name,
                     record_dir=os.path.join(s.out, "runs"))

  def report(results, pending):
    page = dict(study=s.name, scale=s.scale_name, command=s.command,
                settings=study.settings(s.scale),
                rows=[_row_entry(r, rs) for r, rs in results.items()],
                pending=[f"{_name(r)} seed {seed}" for seed, r in pending])
    _tsne(page, s.out, s.scale["tsne_points"])
    study.write_results(s.out, page)
    write_report(page, s.out)
  study.run_grid(rows, s.seeds, run_one, on_done=report)
  print(open(os.path.join(s.out, "README.md")).read())


if __name__ == "__main__":
  app.run(main)

r"""Paper 2: Shadow loss vs Triplet loss, measured on identical setups.

Same backbone (paper 1's hybrid1, 64-d embedding), data, optimiser, steps and
seed for every run; only the loss (and its triplet source) changes. Reports
test retrieval metrics, steps/epochs until the validation P@1 first reaches
a target, and the memory of one compiled training step.

  python experiments/shadow_vs_triplet.py --workdir=runs/shadow_vs_triplet

Writes experiments/shadow_vs_triplet.md (table + command) and
experiments/shadow_vs_triplet.png (validation curves).
"""

import json
import os
import sys

from absl import app
from absl import flags
import matplotlib
import matplotlib.pyplot as plt

from metricjax import evaluate as evaluate_lib
from metricjax import io
from metricjax import train as train_lib
from metricjax.config_utils import load_config

matplotlib.use("Agg")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WORKDIR = flags.DEFINE_string("workdir", "runs/shadow_vs_triplet", "Runs go here.")
_DATASET = flags.DEFINE_string("dataset", "fashion_mnist", "Dataset name or spec.")
_STEPS = flags.DEFINE_integer("steps", 1500, "Training steps of every run.")
_TARGET = flags.DEFINE_float("target", 0.80, "Validation P@1 to reach.")
_OUT = flags.DEFINE_string("out", os.path.join(REPO, "experiments", "shadow_vs_triplet"),
                           "Output path without extension (.md, .png).")

# (label, config argument). Shadow(m) on unit vectors is exactly half the
# squared-euclidean triplet loss with margin 2m: the "sq. triplet" row tests
# that claim of sameness end to end (Adam is invariant to the factor 1/2).
RUNS = (
    ("triplet, random triplets", "loss=triplet,mining=random,margin=0.2"),
    ("shadow, random triplets", "loss=shadow,mining=random,margin=0.1"),
    ("sq. triplet m=0.2, random", "loss=triplet,mining=random,margin=0.2,distance=squared_euclidean"),
    ("shadow, unnormalised", "loss=shadow,mining=random,margin=0.1,normalize=false"),
    ("triplet, semihard in batch", "loss=triplet,mining=semihard,margin=0.2"),
    ("shadow, semihard in batch", "loss=shadow,mining=semihard,margin=0.1"),
)


def run_one(label: str, arg: str) -> dict:
  workdir = os.path.join(_WORKDIR.value, arg.replace(",", "_").replace("=", "-"))
  config = load_config(os.path.join(REPO, "configs", "siamese.py")
                       + f":{arg},dataset={_DATASET.value}")
  config.total_steps = _STEPS.value
  config.checkpoint_every = _STEPS.value
  print(f"== {label}: {arg}", flush=True)
  train_lib.train(config, workdir)
  result = evaluate_lib.evaluate(workdir)
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  curve = [(r["step"], r["epoch"], r["val_precision_at_1"]) for r in rows
           if "val_precision_at_1" in r]
  reached = next(((s, e) for s, e, v in curve if v >= _TARGET.value), (None, None))
  return dict(label=label, arg=arg, metrics=result["metrics"], curve=curve,
              steps_to_target=reached[0], epochs_to_target=reached[1],
              step_temp_mb=rows[-1].get("step_temp_bytes", 0) / 2**20,
              images_per_sec=sum(r["examples_per_sec"] for r in rows[1:]) / max(len(rows) - 1, 1))


def write_report(results: list[dict], argv: list[str]) -> None:
  fmt = lambda x, f: "not reached" if x is None else format(x, f)
  lines = [
      f"# Shadow vs Triplet on {_DATASET.value}", "",
      f"Command: `python {' '.join(argv)}`", "",
      f"{_STEPS.value} steps each, seed 0, hybrid1 backbone, 64-d embedding; test "
      f"split metrics; steps/epochs until validation P@1 (2000 training "
      f"images held out of training, every 100 steps) reaches {_TARGET.value}; step memory is XLA's "
      "compiled temp allocation of the whole training step.", "",
      "| run | P@1 | MAP@R | R@10 | steps to target | epochs to target | step temp MB | images/s |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for r in results:
    m = r["metrics"]
    lines.append(
        f"| {r['label']} | {m['precision_at_1']:.4f} | {m['map_at_r']:.4f} | "
        f"{m['recall_at_10']:.4f} | {fmt(r['steps_to_target'], 'd')} | "
        f"{fmt(r['epochs_to_target'], '.2f')} | {r['step_temp_mb']:.1f} | "
        f"{r['images_per_sec']:.0f} |")
  io.write_text(_OUT.value + ".md", "\n".join(lines) + "\n")

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for r in results:
    steps, _, values = zip(*r["curve"])
    ax.plot(steps, values, label=r["label"], marker=".")
  ax.axhline(_TARGET.value, color="grey", linestyle=":", linewidth=1)
  ax.set(xlabel="step", ylabel="validation P@1", title=f"Shadow vs Triplet, {_DATASET.value}")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  with io.atomic_write(_OUT.value + ".png", "wb") as f:
    fig.savefig(f, format="png", dpi=120)


def main(argv):
  del argv
  results = [run_one(label, arg) for label, arg in RUNS]
  write_report(results, ["experiments/shadow_vs_triplet.py"] + sys.argv[1:])
  print(open(_OUT.value + ".md").read())


if __name__ == "__main__":
  app.run(main)

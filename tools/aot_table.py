r"""Every shipped config compiled for TPU and GPU targets: the planning table
of docs/accelerators.md, from metricjax.aot.

  python tools/aot_table.py [--targets=v5e:1,v5e:8,h100,h100:8] \
      [--rows=hybrid1,resnet50] [--dtypes=bfloat16,float32] \
      [--max_batch=resnet50@v5e:1,...] [--out=tools/results/aot_gpu.json]

Resumable: rows already in --out are not compiled again (delete a row, or
the file, to redo it); each row is written as soon as it is compiled, so
an interrupted run keeps what it did. --render prints the Markdown table
of --out without compiling.
"""

import json
import os
import platform
import subprocess
import sys
import time

from absl import app
from absl import flags

from metricjax import aot  # First: it sets JAX_PLATFORMS before jax starts.
from metricjax import accelerators
from metricjax import files
from metricjax.config_utils import load_config

# Row name -> config spec (and overrides): the configs README.md ships.
ROWS = {
    "hybrid1": ("configs/compact_involution.py", {}),
    "conv_only": ("configs/compact_involution.py:variant=conv_only", {}),
    "involution_only": (
        "configs/compact_involution.py:variant=involution_only", {}),
    "siamese": ("configs/siamese.py", {}),
    "fne_vse": ("configs/fne_vse.py", {}),
    "resnet50": ("configs/dml_benchmark.py:backbone=resnet50", {}),
    "vit_s16": ("configs/dml_benchmark.py:backbone=vit_s16", {}),
}

flags.DEFINE_string("targets", "v5e:1,v5e:8,h100,h100:8", "Targets.")
flags.DEFINE_string("rows", ",".join(ROWS), "Rows (configs).")
flags.DEFINE_string("dtypes", "bfloat16,float32", "Compute dtypes.")
flags.DEFINE_string("max_batch", "", "ROW@TARGET pairs to find the largest "
                    "global batch of (bfloat16).")
flags.DEFINE_string("out", "tools/results/aot_gpu.json", "Results file.")
flags.DEFINE_bool("render", False, "Only print the table of --out.")
flags.DEFINE_string("compare", None, "With --render: the before/after table "
                    "of the rows this earlier results file shares with --out.")
FLAGS = flags.FLAGS


def _key(row, dtype, target):
  return f"{row}|{dtype}|{target}"


def _machine() -> dict:
  cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
              if line.startswith("model name")), platform.processor())
  return dict(cpu=cpu, cores=os.cpu_count(),
              load=os.getloadavg()[0], date=time.strftime("%Y-%m-%d"))


def _config(row: str, dtype: str):
  spec, overrides = ROWS[row]
  config = load_config(spec)
  config.compute_dtype = dtype
  for k, v in overrides.items():
    config[k] = v
  return config


def render(results: dict) -> str:
  gib = lambda b: f"{b / 2**30:.2f}"
  lines = ["| config | dtype | target | batch | peak GiB/dev | fits | "
           "TFLOP/step/dev | GB/step/dev | bound ms | images/s (bound) | "
           "compile s |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  compiled = [k for k in results if not k.endswith("|max_batch")]
  for key in sorted(compiled, key=lambda k: (list(ROWS).index(k.split("|")[0]),
                                             k.split("|")[1], k.split("|")[2])):
    r = results[key]
    row, dtype, target = key.split("|")
    if r.get("compiler_error"):  # The TPU compiler refused it: too big.
      lines.append(
          f"| {row} | {'bf16' if dtype == 'bfloat16' else 'f32'} | {target} "
          f"| {r['global_batch']} | {gib(r['temp_bytes'] or 0)}+ | **no** "
          f"(refused) | | | | | {r['compile_seconds']:.0f} |")
      continue
    lines.append(
        f"| {row} | {'bf16' if dtype == 'bfloat16' else 'f32'} | {target} "
        f"| {r['global_batch']} | {gib(r['peak_bytes'])} | "
        f"{'yes' if r['fits'] else '**no**'} | {r['flops'] / 1e12:.3f} | "
        f"{r['bytes_accessed'] / 1e9:.2f} | {r['bound_seconds'] * 1e3:.2f} | "
        f"{r['images_per_second']:,.0f} | {r['compile_seconds']:.0f} |")
  batches = [(k, r) for k, r in results.items() if k.endswith("|max_batch")]
  if batches:
    lines += ["", "| config | target | largest global batch (bf16) | compiles |",
              "|---|---|---|---|"]
    for key, r in sorted(batches):
      row, _, target, _ = key.split("|")
      best = r["max_global_batch"]
      if r.get("refused_at"):  # A search cut short: its bracket.
        best = f"{best} fits, {r['refused_at']} does not"
      lines.append(f"| {row} | {target} | {best} | {r['compiles']} |")
  return "\n".join(lines)


def render_comparison(before: dict, after: dict) -> str:
  """before -> after (change) of each row both files hold."""
  change = lambda a, b, f=".1f": f"{a:{f}} -> {b:{f}} ({(b - a) / a:+.0%})"
  lines = ["| config | dtype | target | temp MiB | peak MiB | GB accessed | "
           "bound ms |", "|---|---|---|---|---|---|---|"]
  for key in sorted(set(before) & set(after)):
    if key.endswith("|max_batch"):
      continue
    b, a = before[key], after[key]
    row, dtype, target = key.split("|")
    lines.append(
        f"| {row} | {dtype} | {target} | "
        f"{change(b['temp_bytes'] / 2**20, a['temp_bytes'] / 2**20)} | "
        f"{change(b['peak_bytes'] / 2**20, a['peak_bytes'] / 2**20)} | "
        f"{change(b['bytes_accessed'] / 1e9, a['bytes_accessed'] / 1e9, '.3f')}"
        f" | {change(b['bound_seconds'] * 1e3, a['bound_seconds'] * 1e3, '.3f')}"
        " |")
  return "\n".join(lines)


def _read(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def main(argv):
  del argv
  results = _read(FLAGS.out)
  if FLAGS.render:
    print(render_comparison(_read(FLAGS.compare), results) if FLAGS.compare
          else render(results))
    return

  def save():
    files.write_text(FLAGS.out, json.dumps(results, indent=1, sort_keys=True)
                     + "\n")

  for target in FLAGS.targets.split(","):
    for row in FLAGS.rows.split(","):
      for dtype in FLAGS.dtypes.split(","):
        key = _key(row, dtype, target)
        if key in results:
          continue
        report = aot.compile_config(_config(row, dtype),
                                    accelerators.get(target))
        report.update(machine=_machine(), command=" ".join(sys.argv))
        results[key] = report
        print(f"{key}: peak {report['peak_bytes'] / 2**30:.2f} GiB, "
              f"{report['flops'] / 1e12:.3f} TFLOP, "
              f"{report['compile_seconds']:.0f} s", flush=True)
        save()
  for pair in filter(None, FLAGS.max_batch.split(",")):
    row, target = pair.split("@")
    key = _key(row, "bfloat16", target) + "|max_batch"
    if key in results:
      continue
    found = aot.max_batch(_config(row, "bfloat16"), accelerators.get(target),
                          known=results.get(_key(row, "bfloat16", target)))
    results[key] = dict(found, machine=_machine())
    save()
  print(render(results))


if __name__ == "__main__":
  app.run(main)

r"""Queries/s of metricjax.search.knn against faiss-cpu's exact flat indexes.

  python tools/bench_search.py [--cases=200000x128,1000000x128,200000x64]
      [--metrics=ip,l2] [--queries=2000] [--k=10] [--repeats=5]
      [--faiss_threads=2,1] [--xla_cpu=default|per_core|single_thread]

Per case: random Gaussian references and queries (L2-normalised for ip, so
ip is cosine), the references placed once (knn: `search.References.place`;
FAISS: `IndexFlatIP` / `IndexFlatL2` with the data added), then `repeats`
rounds in each of which every contender searches all queries once, in an
order that rotates from round to round, so load from other jobs falls on
all of them alike; a pause before each call lets the previous one's idle
threads go to sleep. The table gives medians. FAISS runs with each thread
count of --faiss_threads (on cores shared with other jobs one thread can
beat two) and knn is compared with the fastest.

Agreement: the share of queries whose k neighbours are identical to FAISS's
(same indices, same order), and the share that is identical up to ties
(at every rank the two neighbours' float64 scores differ by at most 1e-5,
relative for scores above 1).

On cores shared with other jobs a multi-threaded matmul (XLA's default, as
FAISS's) waits at every call for whichever of its threads was descheduled;
`--xla_cpu=per_core` gives XLA one single-threaded device per core, and knn
then searches half of the references on each, meeting only for the merge;
`--xla_cpu=single_thread` one single-threaded device (thread for thread
against FAISS on one thread).
"""

import argparse
import os
import platform
import subprocess
import time

import numpy as np

# jax and metricjax are imported in main(), after --xla_cpu set XLA_FLAGS.
jax = search = None


def machine() -> str:
  try:
    model = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next(l.split(":", 1)[1].strip() for l in model.splitlines()
                 if l.startswith("Model name"))
  except (OSError, StopIteration):
    model = platform.processor()
  return f"{model}, {os.cpu_count()} CPUs"


def load() -> str:
  return " ".join(open("/proc/loadavg").read().split()[:3])


def exact_scores(queries, refs, indices, metric):
  q = queries.astype(np.float64)[:, None, :]
  r = refs[indices].astype(np.float64)
  if metric == "l2":
    return -np.sum(np.square(q - r), axis=-1)
  return np.sum(q * r, axis=-1)


def run_case(faiss, n, dim, metric, args, rng):
  refs = rng.standard_normal((n, dim), dtype=np.float32)
  queries = rng.standard_normal((args.queries, dim), dtype=np.float32)
  if metric == "ip":
    refs /= np.linalg.norm(refs, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
  flat = (faiss.IndexFlatIP if metric == "ip" else faiss.IndexFlatL2)(dim)
  flat.add(refs)
  placed = search.References.place(refs)

  def run_knn():
    return search.knn(queries, placed, args.k, metric=metric)

  def faiss_with(threads):
    def run():
      faiss.omp_set_num_threads(threads)
      return flat.search(queries, args.k)
    return run

  contenders = {"knn": run_knn}
  contenders.update({f"faiss{t}": faiss_with(t) for t in args.faiss_threads})
  results = {name: fn() for name, fn in contenders.items()}  # Compile, warm.
  times = {name: [] for name in contenders}
  names = list(contenders)
  for rep in range(args.repeats):
    for name in names[rep % len(names):] + names[:rep % len(names)]:
      # Idle threads of the previous contender (OpenMP's and XLA's pools
      # spin before they sleep) would otherwise compete with this one.
      time.sleep(args.pause)
      start = time.perf_counter()
      contenders[name]()
      times[name].append(time.perf_counter() - start)
  median = {name: float(np.median(t)) for name, t in times.items()}

  got = results["knn"][1]
  want = results[f"faiss{args.faiss_threads[0]}"][1]
  identical = float(np.mean(np.all(got == want, axis=1)))
  ours = exact_scores(queries, refs, got, metric)
  theirs = exact_scores(queries, refs, want, metric)
  tied = np.abs(ours - theirs) <= 1e-5 * np.maximum(1.0, np.abs(theirs))
  up_to_ties = float(np.mean(np.all(tied, axis=1)))
  best_faiss = min(median[f"faiss{t}"] for t in args.faiss_threads)
  return dict(median=median, identical=identical, up_to_ties=up_to_ties,
              ratio=best_faiss / median["knn"])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cases", default="200000x128,1000000x128,200000x64")
  parser.add_argument("--metrics", default="ip,l2")
  parser.add_argument("--queries", type=int, default=2000)
  parser.add_argument("--k", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--faiss_threads", default="2,1")
  parser.add_argument(
      "--xla_cpu", choices=("default", "per_core", "single_thread"),
      default="default",
      help="per_core: one XLA CPU device per core, each single-threaded "
      "(XLA_FLAGS), knn then shards the references over them; "
      "single_thread: one single-threaded device, to compare with FAISS on "
      "one thread")
  parser.add_argument("--pause", type=float, default=0.5,
                      help="seconds of sleep before each timed call")
  args = parser.parse_args()
  args.faiss_threads = [int(t) for t in args.faiss_threads.split(",")]
  if args.xla_cpu != "default":
    devices = os.cpu_count() if args.xla_cpu == "per_core" else 1
    os.environ["XLA_FLAGS"] = " ".join([
        os.environ.get("XLA_FLAGS", ""),
        f"--xla_force_host_platform_device_count={devices}",
        "--xla_cpu_multi_thread_eigen=false"]).strip()
  global jax, search
  import faiss  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top,redefined-outer-name
  from metricjax import search  # pylint: disable=g-import-not-at-top,redefined-outer-name

  print(f"{machine()}; jax {jax.__version__} ({jax.default_backend()}, "
        f"{jax.device_count()} device(s)), faiss {faiss.__version__}; "
        f"{args.queries} queries, k={args.k}, median of {args.repeats}")
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"load average at start: {load()}\n")
  faiss_cols = " | ".join(f"faiss {t} thr q/s" for t in args.faiss_threads)
  print(f"| references | metric | knn s | knn q/s | {faiss_cols} | "
        "knn / best faiss | identical lists | identical up to ties | load |")
  print("|---" * (8 + len(args.faiss_threads)) + "|")
  rng = np.random.default_rng(0)
  for case in args.cases.split(","):
    n, dim = (int(v) for v in case.split("x"))
    for metric in args.metrics.split(","):
      r = run_case(faiss, n, dim, metric, args, rng)
      qps = {name: args.queries / t for name, t in r["median"].items()}
      faiss_qps = " | ".join(f"{qps[f'faiss{t}']:,.0f}"
                             for t in args.faiss_threads)
      print(f"| {n:,} x {dim} | {metric} | {r['median']['knn']:.3f} | "
            f"{qps['knn']:,.0f} | {faiss_qps} | {r['ratio']:.2f}x | "
            f"{r['identical']:.4f} | {r['up_to_ties']:.4f} | {load()} |",
            flush=True)
  print(f"\nload average at end: {load()}")


if __name__ == "__main__":
  main()

r"""Queries/s of metricjax.search.knn against faiss-cpu's exact flat indexes.

  PYTHONPATH=$PWD python tools/bench_search.py \
      [--cases=200000x128,1000000x128,200000x64]
      [--metrics=ip,l2] [--queries=2000] [--k=10] [--repeats=5]
      [--faiss_threads=2,1] [--xla_cpu=default|per_core|single_thread]
  PYTHONPATH=$PWD python tools/bench_search.py --retrieval=100000x64 \
      [--classes=100] [--labels=random|balanced] [--repeats=1]
  PYTHONPATH=$PWD python tools/bench_search.py --cases=200000x128 \
      --metrics=ip --knn_routings=ynn_dot,eigen_dot,onednn_dot

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

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np

import benchmark  # tools/, run as a script
from benchmark import load
from benchmark import machine
from benchmark import median_times

# jax and metricjax are imported in main(), after --xla_cpu set XLA_FLAGS.
jax = search = None

FLAGS = flags.FLAGS
flags.DEFINE_list("cases", ["200000x128", "1000000x128", "200000x64"],
                  "References NxD.")
flags.DEFINE_list("metrics", ["ip", "l2"], "knn metrics.")
flags.DEFINE_integer("queries", 2000, "Queries per search.")
flags.DEFINE_integer("k", 10, "Neighbours.")
flags.DEFINE_integer("repeats", 5, "Interleaved repetitions (medians).")
flags.DEFINE_list("faiss_threads", ["2", "1"], "FAISS thread counts.")
flags.DEFINE_enum("xla_cpu", "default", ["default", "per_core",
                                         "single_thread"],
                  "per_core: one XLA CPU device per core, each "
                  "single-threaded; single_thread: one single-threaded "
                  "device.")
flags.DEFINE_list("knn_routings", ["ynn_dot"],
                  "XLA:CPU kernels of knn's matmul, each timed: ynn_dot "
                  "(jaxlib's default), eigen_dot (YNN for reductions only), "
                  "onednn_dot (that plus xla_cpu_use_onednn).")
flags.DEFINE_float("pause", 0.5, "Seconds of sleep before each timed call.")
flags.DEFINE_string("retrieval", "", "NxD, e.g. 100000x64: time "
                    "metrics.retrieval_metrics (self-query, --classes "
                    "classes) against faiss IndexFlatIP + numpy MAP@R "
                    "instead, each in its own process (peak RSS).")
flags.DEFINE_integer("classes", 100, "Classes of --retrieval.")
flags.DEFINE_enum("labels", "random", ["random", "balanced"],
                  "--retrieval labels: each drawn uniformly from the "
                  "classes, or every class of n // classes or one more "
                  "images (SOP's test split: 60502x512 with 11316 classes, "
                  "5.3 images each, R 4-5).")
flags.DEFINE_string("only", "", "Internal: run one --retrieval contender "
                    "(metricjax, faiss1, faiss2, ...), print JSON.")


# knn's compiler options per --knn_routings name (metricjax/xla_routing.py).
_NOT_DOTS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_REDUCE"
KNN_ROUTINGS = {
    "ynn_dot": {},
    "eigen_dot": {"xla_cpu_experimental_ynn_fusion_type": _NOT_DOTS},
    "onednn_dot": {"xla_cpu_experimental_ynn_fusion_type": _NOT_DOTS,
                   "xla_cpu_use_onednn": True},
}


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

  def knn_with(routing):
    def run():
      return search.knn(queries, placed, args.k, metric=metric,
                        compiler_options=KNN_ROUTINGS[routing])
    return run

  def faiss_with(threads):
    def run():
      faiss.omp_set_num_threads(threads)
      return flat.search(queries, args.k)
    return run

  first = args.routings[0]
  contenders = {"knn": knn_with(first)}
  contenders.update({f"knn[{r}]": knn_with(r) for r in args.routings[1:]})
  contenders.update({f"faiss{t}": faiss_with(t) for t in args.faiss_threads})
  results = {name: fn() for name, fn in contenders.items()}  # Compile, warm.
  # Idle threads of the previous contender (OpenMP's and XLA's pools spin
  # before they sleep) would otherwise compete with this one: a pause.
  median = median_times(contenders, args.repeats, warmup=0, pause=args.pause)

  got = results["knn"][1]
  want = results[f"faiss{args.faiss_threads[0]}"][1]
  identical = float(np.mean(np.all(got == want, axis=1)))
  ours = exact_scores(queries, refs, got, metric)
  theirs = exact_scores(queries, refs, want, metric)
  tied = np.abs(ours - theirs) <= 1e-5 * np.maximum(1.0, np.abs(theirs))
  up_to_ties = float(np.mean(np.all(tied, axis=1)))
  best_faiss = min(median[f"faiss{t}"] for t in args.faiss_threads)
  for name in contenders:
    if name.startswith("knn[") and not np.array_equal(results[name][1], got):
      raise AssertionError(f"{name} found other neighbours than {first}")
  return dict(median=median, identical=identical, up_to_ties=up_to_ties,
              ratio=best_faiss / median["knn"])


def _retrieval_data(n, dim, classes, balanced=False):
  """Class-clustered unit embeddings, labels 0..classes-1 (R ~ n/classes)."""
  rng = np.random.default_rng(0)
  if balanced:
    labels = rng.permutation(np.arange(n) % classes).astype(np.int32)
  else:
    labels = rng.integers(0, classes, n).astype(np.int32)
  centres = rng.standard_normal((classes, dim), dtype=np.float32)
  x = centres[labels] * 0.6 + rng.standard_normal((n, dim), dtype=np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def faiss_retrieval(faiss, x, labels, chunk=2000):
  """P@1 and MAP@R (self-query) from IndexFlatIP's k = max R + 1 search;
  queries without a positive (R = 0) are left out, as metricjax does."""
  r = np.bincount(labels)[labels] - 1
  k = int(r.max()) + 1
  flat = faiss.IndexFlatIP(x.shape[1])
  flat.add(x)
  p1, map_r = [], []
  for s in range(0, len(x), chunk):
    _, idx = flat.search(x[s:s + chunk], k)
    rows = np.arange(s, s + len(idx))
    # Drop the query itself (it need not be first on ties), keep k - 1.
    keep = idx != rows[:, None]
    idx = np.stack([row[m][:k - 1] for row, m in zip(idx, keep)])
    correct = labels[idx] == labels[rows, None]
    rr = r[rows]
    hits = correct & (np.arange(1, k) <= rr[:, None])
    prec = np.cumsum(hits, axis=1) / np.arange(1, k)
    p1.append(correct[:, 0])
    map_r.append(np.sum(prec * hits, axis=1) / np.maximum(rr, 1))
  answerable = r > 0
  return {"precision_at_1": float(np.mean(np.concatenate(p1)[answerable])),
          "map_at_r": float(np.mean(np.concatenate(map_r)[answerable]))}


def run_retrieval_contender(name, n, dim, classes, balanced):
  """One contender in this process: {seconds, peak_rss_mb, metrics}."""
  x, labels = _retrieval_data(n, dim, classes, balanced)
  start = time.perf_counter()
  if name.startswith("faiss"):
    import faiss  # pylint: disable=g-import-not-at-top
    faiss.omp_set_num_threads(int(name[len("faiss"):]))
    got = faiss_retrieval(faiss, x, labels)
  else:
    from metricjax import metrics  # pylint: disable=g-import-not-at-top
    got = metrics.retrieval_metrics(x, labels, ks=(1,))
  return dict(contender=name, seconds=time.perf_counter() - start,
              peak_rss_mb=benchmark.peak_rss_mb(), load=load(),
              precision_at_1=got["precision_at_1"], map_at_r=got["map_at_r"])


def bench_retrieval(n, dim, classes, repeats, labels, faiss_threads):
  """Each contender in a fresh process (its own peak RSS), taking turns;
  FAISS with each of faiss_threads OpenMP threads."""
  names = [f"faiss{t}" for t in faiss_threads] + ["metricjax"]
  rows = {name: [] for name in names}
  for rep in range(repeats):
    for name in names[rep % len(names):] + names[:rep % len(names)]:
      out = subprocess.run(
          [sys.executable, __file__, f"--retrieval={n}x{dim}",
           f"--classes={classes}", f"--labels={labels}", f"--only={name}"],
          capture_output=True, text=True, check=True,
          env=dict(os.environ, PYTHONPATH=os.getcwd()))
      rows[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
      print(rows[name][-1], flush=True)
  med = {name: float(np.median([r["seconds"] for r in rs]))
         for name, rs in rows.items()}
  print(f"\n| {n:,} x {dim}, {classes} classes ({labels}) | seconds | peak RSS MB | "
        "P@1 | MAP@R | loads |\n|---|--:|--:|--:|--:|---|")
  for name, rs in rows.items():
    print(f"| {name} | {med[name]:.1f} | "
          f"{max(r['peak_rss_mb'] for r in rs):.0f} | "
          f"{rs[0]['precision_at_1']:.5f} | {rs[0]['map_at_r']:.5f} | "
          f"{'; '.join(r['load'] for r in rs)} |")
  best = min(med[f"faiss{t}"] for t in faiss_threads)
  print(f"\nmetricjax / best faiss speed: {best / med['metricjax']:.2f}x")


def main(_):
  args = FLAGS
  if args.retrieval:
    n, dim = (int(v) for v in args.retrieval.split("x"))
    if args.only:
      benchmark.print_json(run_retrieval_contender(
          args.only, n, dim, args.classes, args.labels == "balanced"))
    else:
      print(machine(), flush=True)
      bench_retrieval(n, dim, args.classes, args.repeats, args.labels,
                      [int(t) for t in args.faiss_threads])
    return
  faiss_threads = [int(t) for t in args.faiss_threads]
  if args.xla_cpu != "default":
    devices = os.cpu_count() if args.xla_cpu == "per_core" else 1
    os.environ["XLA_FLAGS"] = " ".join([
        os.environ.get("XLA_FLAGS", ""),
        f"--xla_force_host_platform_device_count={devices}",
        "--xla_cpu_multi_thread_eigen=false"]).strip()
  global jax, search
  import faiss  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top,redefined-outer-name
  from metricjax.ops import knn as search  # pylint: disable=g-import-not-at-top,redefined-outer-name
  run_args = type("Args", (), dict(queries=args.queries, k=args.k,
                                   repeats=args.repeats, pause=args.pause,
                                   faiss_threads=faiss_threads,
                                   routings=args.knn_routings))

  print(f"{machine()}; {jax.device_count()} XLA device(s), faiss "
        f"{faiss.__version__}; {args.queries} queries, k={args.k}, median "
        f"of {args.repeats}")
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; knn routings "
        f"{', '.join(args.knn_routings)} (knn = {args.knn_routings[0]})\n")
  faiss_cols = " | ".join(f"faiss {t} thr q/s" for t in faiss_threads)
  faiss_cols = " | ".join([f"knn[{r}] q/s" for r in args.knn_routings[1:]]
                          + [faiss_cols])
  print(f"| references | metric | knn s | knn q/s | {faiss_cols} | "
        "knn / best faiss | identical lists | identical up to ties | load |")
  print("|---" * (7 + len(faiss_threads) + len(args.knn_routings)) + "|")
  rng = np.random.default_rng(0)
  for case in args.cases:
    n, dim = (int(v) for v in case.split("x"))
    for metric in args.metrics:
      r = run_case(faiss, n, dim, metric, run_args, rng)
      qps = {name: args.queries / t for name, t in r["median"].items()}
      faiss_qps = " | ".join(
          [f"{qps[f'knn[{r}]']:,.0f}" for r in args.knn_routings[1:]]
          + [f"{qps[f'faiss{t}']:,.0f}" for t in faiss_threads])
      print(f"| {n:,} x {dim} | {metric} | {r['median']['knn']:.3f} | "
            f"{qps['knn']:,.0f} | {faiss_qps} | {r['ratio']:.2f}x | "
            f"{r['identical']:.4f} | {r['up_to_ties']:.4f} | {load()} |",
            flush=True)
  print(f"\nload average at end: {load()}")


if __name__ == "__main__":
  app.run(main)

r"""The search command line: build an index file, query it with images.

    python -m metricjax.search build --workdir=DIR [--step=N] \
        --dataset=SPEC --split=S --out=INDEX.npz
    python -m metricjax.search query --index=INDEX.npz \
        (--image=PATH | --images=DIR) [--k=10] [--json] [--model=M.jaxexport]

The pieces, for use from Python, are importable from here too: `knn`
(metricjax/ops/knn.py, exact: float32 scores at Precision.HIGHEST, ties to
the lower reference index), `Index` (the index file, metricjax/index.py)
and `Model` (images -> embeddings, metricjax/embedder.py).
"""

import json
import os

from absl import app
from absl import flags

from metricjax import cli
from metricjax.data.image_files import list_images
from metricjax.data.image_files import read_images
from metricjax.embedder import Model
from metricjax.errors import UserError, exit_on_user_error, parse_flags_or_exit
from metricjax.index import Index
# The public search API: `search.knn(queries, references, k, metric=...)`.
from metricjax.ops.knn import knn, METRICS, References  # pylint: disable=unused-import


FLAGS = flags.FLAGS
COMMANDS = ("build", "query")


def _define_flags():
  flags.DEFINE_string("workdir", None, "build: a directory written by "
                      "metricjax.train.")
  flags.DEFINE_integer("step", None, "build: checkpoint step (default: the "
                       "latest).")
  flags.DEFINE_string("dataset", None, "build: dataset name or spec "
                      "(idx:DIR, folder:PATH, tfds:NAME).")
  flags.DEFINE_string("split", "test", "build: the split to index.")
  flags.DEFINE_string("out", None, "build: the index file to write (.npz).")
  flags.DEFINE_enum("metric", "cosine", METRICS, "build: similarity.")
  flags.DEFINE_string("index", None, "query: an index file.")
  flags.DEFINE_string("image", None, "query: one query image.")
  flags.DEFINE_string("images", None, "query: a directory of query images.")
  flags.DEFINE_integer("k", 10, "query: neighbours per query.")
  flags.DEFINE_string("model", None, "query: a model exported with "
                      "metricjax.export (default: the index's checkpoint).")
  flags.DEFINE_enum("backend", "exact", ("exact", "faiss"),
                    "query: exact knn, or approximate FAISS HNSW.")
  flags.DEFINE_bool("json", False, "query: print JSON instead of a table.")


def _require(command, *names):
  missing = [f"--{n}" for n in names if getattr(FLAGS, n) is None]
  if missing:
    raise UserError(f"`{command}` needs {', '.join(missing)}; see --helpfull.")


def format_results(queries: list[str], results: list[list[dict]]) -> str:
  lines = []
  for query, rows in zip(queries, results):
    lines += [f"query {query}",
              f"{'rank':>4}  {'score':>9}  {'label':<20}  id"]
    lines += [f"{r['rank']:>4}  {r['score']:>9.4f}  "
              f"{str(r['label']) + ' ' + r['class_name']:<20}  {r['id']}"
              for r in rows]
    lines.append("")
  return "\n".join(lines).rstrip()


def build_main():
  _require("build", "workdir", "dataset", "out")
  index = Index.build(FLAGS.workdir, FLAGS.dataset, FLAGS.split,
                      step=FLAGS.step, metric=FLAGS.metric)
  index.save(FLAGS.out)
  print(f"wrote {FLAGS.out}: {len(index):,} x {index.embeddings.shape[1]} "
        f"{index.metric} embeddings of {index.dataset['name']}/"
        f"{index.dataset['split']}, model {index.model['workdir']} step "
        f"{index.model['step']}, {os.path.getsize(FLAGS.out):,} bytes")


def query_main():
  _require("query", "index")
  if (FLAGS.image is None) == (FLAGS.images is None):
    raise UserError("`query` needs one of --image=PATH or --images=DIR.")
  index = Index.load(FLAGS.index)
  if not 1 <= FLAGS.k <= len(index):
    raise UserError(f"--k={FLAGS.k} but the index has {len(index)} entries; "
                    f"ask for 1 to {len(index)} neighbours.")
  model = (Model.from_export(FLAGS.model) if FLAGS.model else
           Model.from_checkpoint(index.model["workdir"], index.model["step"]))
  index.check_model(model)
  paths = [FLAGS.image] if FLAGS.image else list_images(FLAGS.images)
  scores, indices = index.search_images(read_images(paths), model, FLAGS.k,
                                        names=paths, backend=FLAGS.backend)
  results = index.neighbours(scores, indices)
  if FLAGS.json:
    print(json.dumps([dict(query=p, neighbours=r)
                      for p, r in zip(paths, results)], indent=1))
  else:
    print(format_results(paths, results))


@exit_on_user_error
def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise UserError(f"Give one command, build or query (got "
                    f"{' '.join(argv[1:]) or 'none'}): python -m "
                    "metricjax.search build|query --flags...")
  cli.quiet_logging()
  if argv[1] == "build":
    build_main()
  else:
    query_main()


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=parse_flags_or_exit)

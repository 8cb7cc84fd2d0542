r"""Exact nearest-neighbour search, index files and the query CLI.

  python -m metricjax.search build --workdir=DIR [--step=N] \
      --dataset=SPEC --split=S --out=INDEX.npz
  python -m metricjax.search query --index=INDEX.npz \
      (--image=PATH | --images=DIR) [--k=10] [--json] [--model=M.jaxexport]

`knn` (metricjax/ops/knn.py) is exact: float32 scores at Precision.HIGHEST,
ties to the lower reference index.

An index file is one .npz (embeddings, labels, ids, and a JSON header with
the format version, the metric, the class names and the model reference:
workdir, step and a SHA-256 of the model's variables), written atomically.
Querying with another model than the one that built the index is an error,
since the embeddings would not be comparable.
"""

import dataclasses
import hashlib
import json
import os
import zipfile

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from metricjax import cli
from metricjax import parallel
from metricjax.errors import UserError, exit_on_user_error, parse_flags_or_exit
from metricjax.io import atomic_write
from metricjax.ops.similarity import l2_normalize

# The kernel lives in ops/knn.py; these names are the public search API.
from metricjax.ops.knn import knn, METRICS, References  # pylint: disable=unused-import


# --- Models: what turns images into the embeddings of an index ---------------


def fingerprint(variables) -> str:
  """SHA-256 of a variables pytree: paths, dtypes, shapes and values."""
  h = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(variables))[0]
  for path, leaf in sorted(leaves, key=lambda x: jax.tree_util.keystr(x[0])):
    a = np.ascontiguousarray(leaf)
    h.update(f"{jax.tree_util.keystr(path)} {a.dtype} {a.shape}\n".encode())
    h.update(a.tobytes())
  return "sha256:" + h.hexdigest()


def _describe_shape(shape) -> str:
  if len(shape) != 3:
    return f"an array of shape {tuple(shape)}"
  h, w, c = shape
  kind = {1: "1 channel (grayscale)", 3: "3 channels (RGB)"}.get(
      c, f"{c} channels")
  return f"{w}x{h} pixels with {kind}"


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
  """uint8 (N, H, W, C) images -> (N, D) embeddings, and which model it is.

  `reference` holds workdir, step, fingerprint (SHA-256 of the variables),
  image_shape and embedding_dim; an index stores it and refuses queries from
  a model with another fingerprint.
  """
  embed_fn: object  # images -> embeddings, numpy in and out.
  reference: dict
  module: object = None  # The Flax module and variables, from a checkpoint.
  variables: object = None

  @classmethod
  def from_checkpoint(cls, workdir: str, step: int | None = None) -> "Model":
    # Imported here: knn users need neither checkpoints nor the data layer.
    from metricjax import restore as restore_lib  # pylint: disable=g-import-not-at-top
    from metricjax.inference import batched_apply
    restored = restore_lib.restore(workdir, step)
    config, mesh = restored.config, restored.mesh
    if config.get("task", "retrieval") != "retrieval":
      raise UserError(
          f"{workdir} holds a {config.task!r} model; search indexes embed "
          "images with a retrieval model (config.task = 'retrieval').")
    variables = {"params": restored.state.params,
                 "batch_stats": restored.state.batch_stats}
    image_shape = restored.meta.image_shape
    devices = mesh.devices.size
    # Jitted once: a model queried again does not compile again.
    apply = jax.jit(lambda v, x: restored.model.apply(v, x, train=False))

    def embed_fn(images):
      # Small query sets get a small batch rather than a padded full one.
      batch = min(config.eval.batch_size, -(-len(images) // devices) * devices)
      return batched_apply(apply, variables, (images,), batch_size=batch,
                           mesh=mesh, desc="embed")["embedding"]

    out = jax.eval_shape(
        lambda v, x: restored.model.apply(v, x, train=False), variables,
        jax.ShapeDtypeStruct((1, *image_shape), jnp.uint8))
    reference = dict(workdir=os.path.abspath(workdir), step=int(restored.step),
                     fingerprint=fingerprint(variables),
                     image_shape=list(image_shape),
                     embedding_dim=int(out["embedding"].shape[-1]))
    return cls(embed_fn, reference, restored.model, variables)

  @classmethod
  def from_export(cls, path: str) -> "Model":
    from metricjax import export  # pylint: disable=g-import-not-at-top
    exported, header = export.load(path)
    batch = header["batch"]

    def embed_fn(images):
      if batch == "polymorphic":
        return np.asarray(exported.call(images))
      pad = -len(images) % batch
      images = np.concatenate([images, np.zeros((pad, *images.shape[1:]),
                                                images.dtype)])
      out = [np.asarray(exported.call(images[i:i + batch]))
             for i in range(0, len(images), batch)]
      return np.concatenate(out)[:len(images) - pad]

    return cls(embed_fn, dict(header["model"], export=os.path.abspath(path)))

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.reference["image_shape"])

  def __call__(self, images, names=None) -> np.ndarray:
    """Embeddings of uint8 images, an (N, H, W, C) array or a list of
    (H, W, C) ones; `names` (paths) make a wrong-shape error name the image."""
    for i, image in enumerate(images):
      image = np.asarray(image)
      if image.dtype != np.uint8:
        raise UserError(f"Images must be uint8, got {image.dtype}.")
      if image.shape != self.image_shape:
        what = f"Query image {names[i]}" if names is not None else "An image"
        raise UserError(
            f"{what} is {_describe_shape(image.shape)}; the model takes "
            f"{_describe_shape(self.image_shape)}. Resize or convert it to "
            "match the images the model was trained on.")
    if len(images) == 0:
      return np.zeros((0, self.reference["embedding_dim"]), np.float32)
    return np.asarray(self.embed_fn(np.stack(images)), np.float32)


def read_images(paths) -> list[np.ndarray]:
  """Decoded uint8 (H, W, C) images, C = 1 for grayscale files, else 3."""
  from metricjax.data import image_folder  # pylint: disable=g-import-not-at-top
  images = []
  for path in paths:
    try:
      with open(path, "rb") as f:
        data = f.read()
    except OSError as e:
      raise UserError(f"Cannot read the query image {path}: "
                      f"{e.strerror or e}.") from None
    images.append(image_folder.decode_image(data, path))
  return images


def list_images(directory: str) -> list[str]:
  """The image files directly in `directory`, sorted."""
  from metricjax.data import image_folder  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(directory):
    raise UserError(f"--images={directory} is not a directory.")
  paths = sorted(os.path.join(directory, f) for f in os.listdir(directory)
                 if image_folder.is_image_file(f))
  if not paths:
    raise UserError(f"{directory} holds no image files (looked for "
                    f"{', '.join(sorted(image_folder.IMAGE_EXTENSIONS))}).")
  return paths


def _example_ids(ds) -> np.ndarray:
  """Paths inside the folder or zip when the split came from one, else
  'split/row'."""
  from metricjax.data import image_folder  # pylint: disable=g-import-not-at-top
  # load_image_folder decodes the members in this listing's order.
  for kind in ("zip ", "image folder "):
    if ds.source.startswith(kind):
      path = ds.source[len(kind):]
      try:
        if kind == "zip ":
          with zipfile.ZipFile(path) as zf:
            members, _ = image_folder.list_zip(zf, path, ds.split)
        else:
          members, _ = image_folder.list_dir(path, ds.split)
      except (OSError, UserError, zipfile.BadZipFile):
        break
      if len(members) == len(ds):
        return np.asarray([m for _, m in members])
      break
  return np.asarray([f"{ds.split}/{i}" for i in range(len(ds))])


# --- Index files -------------------------------------------------------------

INDEX_FORMAT = "metricjax-index"
INDEX_VERSION = 1


@dataclasses.dataclass(eq=False)
class Index:
  """A gallery of embeddings with labels, ids and the model that made them.

  Build one from a checkpoint and a dataset split (`Index.build`), save it as
  one .npz (`save`, atomic), `load` it back and `search` it with query
  embeddings, or `search_images` with images and a `Model`.
  """
  embeddings: np.ndarray  # float32 (N, D)
  labels: np.ndarray  # int32 (N,)
  ids: np.ndarray  # str (N,): path inside the dataset, or "split/row".
  class_names: tuple[str, ...]
  metric: str
  model: dict  # Model.reference of the model that embedded the gallery.
  dataset: dict  # name, split, source.

  def __post_init__(self):
    self.embeddings = np.asarray(self.embeddings, np.float32)
    self.labels = np.asarray(self.labels, np.int32).reshape(-1)
    self.ids = np.asarray(self.ids).astype(str).reshape(-1)
    self.class_names = tuple(self.class_names)
    n = len(self.embeddings)
    if n == 0 or self.embeddings.ndim != 2:
      raise UserError(
          f"The gallery {self.dataset.get('name')}/{self.dataset.get('split')} "
          f"has no embeddings (shape {self.embeddings.shape}); an index needs "
          "at least one image.")
    if len(self.labels) != n or len(self.ids) != n:
      raise UserError(f"The index has {n} embeddings but {len(self.labels)} "
                      f"labels and {len(self.ids)} ids.")
    if self.metric not in METRICS:
      raise UserError(f"Unknown metric {self.metric!r}; use one of "
                      f"{', '.join(METRICS)}.")
    if not np.isfinite(self.embeddings).all():
      raise UserError("The gallery embeddings are not all finite; the model "
                      "diverged or the index is corrupt.")
    self._references = None
    self._faiss = None

  def __len__(self) -> int:
    return len(self.embeddings)

  @classmethod
  def build(cls, workdir: str, dataset: str, split: str, *,
            step: int | None = None, metric: str = "cosine") -> "Index":
    """Embeds `split` of `dataset` with the checkpoint of `workdir`."""
    from metricjax import data as data_lib  # pylint: disable=g-import-not-at-top
    if metric not in METRICS:
      raise UserError(f"Unknown metric {metric!r}; use one of "
                      f"{', '.join(METRICS)}.")
    model = Model.from_checkpoint(workdir, step)
    ds = data_lib.load_dataset(dataset, split)
    if ds.image_shape != model.image_shape:
      raise UserError(
          f"{ds.name}/{split} has images of {_describe_shape(ds.image_shape)}"
          f", but the model of {workdir} takes "
          f"{_describe_shape(model.image_shape)}. Build the index from a "
          "dataset like the one the model was trained on.")
    return cls(model(ds.images), ds.labels, _example_ids(ds), ds.class_names,
               metric, model.reference,
               dict(name=ds.name, split=split, source=ds.source))

  def save(self, path: str) -> None:
    header = dict(format=INDEX_FORMAT, version=INDEX_VERSION,
                  num_entries=len(self), dim=int(self.embeddings.shape[1]),
                  metric=self.metric, class_names=list(self.class_names),
                  model=self.model, dataset=self.dataset)
    with atomic_write(path, "wb") as f:
      np.savez(f, embeddings=self.embeddings, labels=self.labels, ids=self.ids,
               header=np.frombuffer(json.dumps(header).encode(), np.uint8))

  @classmethod
  def load(cls, path: str) -> "Index":
    hint = ("Build it again with `python -m metricjax.search build "
            f"--workdir=DIR --dataset=SPEC --split=S --out={path}`.")
    if not os.path.isfile(path):
      raise UserError(f"No index file at {path}. {hint}")
    try:
      with np.load(path, allow_pickle=False) as z:
        header = json.loads(z["header"].tobytes().decode())
        arrays = {name: z[name] for name in ("embeddings", "labels", "ids")}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError,
            UnicodeDecodeError) as e:
      raise UserError(f"{path} is not a complete index file: it is truncated "
                      f"or corrupt ({type(e).__name__}: {e}). {hint}") from None
    if header.get("format") != INDEX_FORMAT:
      raise UserError(f"{path} is not a metricjax index. {hint}")
    if header.get("version") != INDEX_VERSION:
      raise UserError(f"{path} has index format version {header.get('version')}"
                      f"; this metricjax reads version {INDEX_VERSION}. {hint}")
    if arrays["embeddings"].shape != (header["num_entries"], header["dim"]):
      raise UserError(f"{path} declares {header['num_entries']} x "
                      f"{header['dim']} embeddings but holds "
                      f"{arrays['embeddings'].shape}; it is corrupt. {hint}")
    return cls(arrays["embeddings"], arrays["labels"], arrays["ids"],
               header["class_names"], header["metric"], header["model"],
               header["dataset"])

  def check_model(self, model: Model) -> None:
    """A UserError unless `model` is the one that built the index."""
    ours, theirs = self.model, model.reference
    if ours["fingerprint"] != theirs["fingerprint"]:
      where = lambda r: (r.get("export") or f"{r['workdir']} step {r['step']}")
      raise UserError(
          f"The index was built with another model ({where(ours)}, "
          f"{ours['fingerprint'][:19]}...) than the one querying it "
          f"({where(theirs)}, {theirs['fingerprint'][:19]}...); embeddings "
          "of different models cannot be compared. Query with the model that "
          "built the index, or rebuild the index with this one.")

  def search(self, queries, k: int = 10, *, backend: str = "exact"):
    """(scores, indices) of the k nearest entries of each query embedding.

    backend: "exact" (`knn`) or "faiss" (HNSW from faiss-cpu, approximate,
    for galleries too large for exact search; `pip install metricjax[faiss]`).
    """
    queries = np.asarray(queries, np.float32)
    dim = self.embeddings.shape[1]
    if queries.ndim != 2 or queries.shape[1] != dim:
      raise UserError(f"Query embeddings have shape {queries.shape}; this "
                      f"index holds {dim}-d embeddings.")
    if not 1 <= k <= len(self):
      raise UserError(f"k={k} but the index has {len(self)} entries; ask for "
                      f"1 to {len(self)} neighbours.")
    if backend == "exact":
      # Cosine is ip of normalised rows, the references normalised once
      # here rather than chunk by chunk in every search (same numbers).
      metric = "ip" if self.metric == "cosine" else self.metric
      if self._references is None:
        refs = self.embeddings
        if self.metric == "cosine":
          refs = l2_normalize(jnp.asarray(refs))
        self._references = References.place(refs)
      if self.metric == "cosine":
        queries = l2_normalize(jnp.asarray(queries))
      return knn(queries, self._references, k, metric=metric)
    if backend == "faiss":
      return self._faiss_search(queries, k)
    raise UserError(f"Unknown search backend {backend!r}; use exact or faiss.")

  def _faiss_search(self, queries, k):
    try:
      import faiss  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise UserError("The faiss backend needs faiss-cpu: pip install "
                      "'metricjax[faiss]'.") from None
    prepare = ((lambda x: np.asarray(l2_normalize(jnp.asarray(x))))
               if self.metric == "cosine" else np.ascontiguousarray)
    if self._faiss is None:
      kind = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
      self._faiss = faiss.IndexHNSWFlat(self.embeddings.shape[1], 32, kind)
      self._faiss.add(prepare(self.embeddings))
    self._faiss.hnsw.efSearch = max(64, 2 * k)
    scores, indices = self._faiss.search(prepare(queries), k)
    return scores.astype(np.float32), indices.astype(np.int32)

  def search_images(self, images, model: Model, k: int = 10, *,
                    names=None, backend: str = "exact"):
    """Embeds uint8 images with `model` (checked to be the index's) and
    searches; -> (scores, indices)."""
    self.check_model(model)
    return self.search(model(images, names), k, backend=backend)

  def neighbours(self, scores, indices) -> list[list[dict]]:
    """Rows of (rank, id, label, class_name, score) per query."""
    return [[dict(rank=r + 1, id=str(self.ids[i]), label=int(self.labels[i]),
                  class_name=self.class_names[self.labels[i]],
                  score=float(s))
             for r, (s, i) in enumerate(zip(row_s, row_i)) if i >= 0]
            for row_s, row_i in zip(scores, indices)]


# --- CLI ---------------------------------------------------------------------

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

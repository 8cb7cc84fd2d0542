r"""Index files: a gallery of embeddings with labels, ids and the model that
made them.

An index file is one .npz (embeddings, labels, ids, and a JSON header with
the format version, the metric, the class names and the model reference:
workdir, step and a SHA-256 of the model's variables), written atomically.
Querying with another model than the one that built the index is an error,
since the embeddings would not be comparable. Exact search is `knn`
(metricjax/ops/knn.py); `python -m metricjax.search` is the command line.
"""

import dataclasses
import json
import os
import zipfile

import jax.numpy as jnp
import numpy as np

from metricjax import data as data_lib
from metricjax.embedder import describe_image_shape
from metricjax.embedder import Model
from metricjax.errors import UserError
from metricjax.files import atomic_write
from metricjax.ops.knn import knn
from metricjax.ops.knn import METRICS
from metricjax.ops.knn import References
from metricjax.ops.similarity import l2_normalize

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
    if metric not in METRICS:
      raise UserError(f"Unknown metric {metric!r}; use one of "
                      f"{', '.join(METRICS)}.")
    model = Model.from_checkpoint(workdir, step)
    ds = data_lib.load_dataset(dataset, split)
    if ds.image_shape != model.image_shape:
      raise UserError(
          f"{ds.name}/{split} has images of "
          f"{describe_image_shape(ds.image_shape)}, but the model of "
          f"{workdir} takes {describe_image_shape(model.image_shape)}. Build "
          "the index from a dataset like the one the model was trained on.")
    return cls(model(ds.images), ds.labels, ds.ids, ds.class_names,
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

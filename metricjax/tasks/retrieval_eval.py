"""The retrieval task's metrics: validation on the held-out part of the
training split (learning curves), and the evaluation of a split with the
dataset's retrieval convention (data.convention: Recall@K, In-Shop's
query -> gallery, k-means NMI / AMI on the photo benchmarks, no accuracy
on class-disjoint splits)."""

import numpy as np

from metricjax import clustering as clustering_lib
from metricjax import data as data_lib
from metricjax import inference
from metricjax import metrics as metrics_lib
from metricjax import rerank as rerank_lib
from metricjax import xla_routing
from metricjax.errors import UserError
from metricjax.tasks import retrieval_inputs as inputs


def _routing(config) -> str:
  return xla_routing.check(config.xla_cpu_routing)


def _variables(state):
  return {"params": state.params, "batch_stats": state.batch_stats}


def _eval_apply(config, model):
  return inference.eval_apply(model, _routing(config))


def make_validation(config, model, held_out, mesh):
  """Retrieval metrics of the held-out examples (querying each other)."""
  apply = _eval_apply(config, model)

  def validate(state):
    outputs, keep = inputs.of(held_out).embed(
        config, apply, _variables(state), held_out, mesh, desc="validate")
    return metrics_lib.retrieval_metrics(
        outputs["embedding"][keep], held_out.labels[keep],
        ks=tuple(config.eval.ks))
  return validate


def split_metrics(config, ds, embedding, keep, *, clustering: bool) -> dict:
  """Retrieval metrics of the rows `keep` of split `ds`: each query ranks
  the gallery where the split has those roles (In-Shop), else all the
  other rows; k-means NMI / AMI with `clustering`."""
  ks = tuple(config.eval.ks)
  roles = data_lib.query_gallery(ds)
  if roles is not None:
    query, gallery = roles[0] & keep, roles[1] & keep
    metrics = metrics_lib.retrieval_metrics(
        embedding[query], ds.labels[query], embedding[gallery],
        ds.labels[gallery], ks=ks)
  else:
    metrics = metrics_lib.retrieval_metrics(embedding[keep], ds.labels[keep],
                                            ks=ks)
  if clustering:
    metrics.update(clustering_lib.clustering_metrics(
        embedding[keep], ds.labels[keep], seed=config.seed,
        max_iter=config.eval.kmeans_max_iter))
  return metrics


def reranked_metrics(config, ds, embedding, keep, rerank: dict) -> dict:
  """split_metrics' retrieval metrics (no clustering) after re-ranking:
  rerank = {"method": "k_reciprocal" | "query_expansion", "params": {...}},
  metricjax.rerank's method and keyword arguments. In-Shop's queries
  re-rank its gallery; elsewhere the rows re-rank each other, each
  query's own row excluded."""
  roles = data_lib.query_gallery(ds)
  if roles is not None:
    query, gallery = roles[0] & keep, roles[1] & keep
    ranker = rerank_lib.reranker(rerank["method"], embedding[query],
                                 embedding[gallery], **rerank["params"])
    return metrics_lib.ranking_metrics(
        ranker.neighbours, ds.labels[query], ds.labels[gallery],
        ks=tuple(config.eval.ks))
  ranker = rerank_lib.reranker(rerank["method"], embedding[keep],
                               **rerank["params"])
  return metrics_lib.ranking_metrics(ranker.neighbours, ds.labels[keep],
                                     ks=tuple(config.eval.ks))


def evaluate(config, meta, model, state, split: str, mesh, *,
             rerank: dict | None = None):
  """(metrics, dataset) of a split; with `rerank` (reranked_metrics), the
  re-ranked metrics as the dict metrics["reranked"]."""
  ds = inputs.load(config, split)
  kind = inputs.of(ds)
  convention = data_lib.convention(config.dataset)
  outputs, keep = kind.embed(config, _eval_apply(config, model),
                             _variables(state), ds, mesh,
                             desc=f"embed {ds.name}/{split}")
  clustering = config.eval.clustering
  if clustering is None:  # The dataset's convention.
    clustering = convention.clustering
  metrics = split_metrics(config, ds, outputs["embedding"], keep,
                          clustering=clustering)
  if rerank is not None:
    try:
      reranked = reranked_metrics(config, ds, np.asarray(outputs["embedding"]),
                                  keep, rerank)
    except ValueError as e:  # e.g. k1 or k above the split's size
      raise UserError(f"--rerank={rerank['method']}: {e}.") from None
  if kind.counts_skipped:
    metrics["num_skipped_corrupt"] = int(np.sum(~keep))
  if "logits" in outputs and not convention.class_disjoint:
    metrics["accuracy"] = metrics_lib.accuracy(outputs["logits"], ds.labels)
  if rerank is not None:
    metrics["reranked"] = reranked
  sizes = {meta.split: meta.size, split: len(ds)}
  if meta.val_classes:
    sizes[f"{meta.split} (held out for validation: {meta.val_classes} "
          "classes)"] = meta.val_size
  elif meta.val_size:
    sizes[f"{meta.split} (held out for validation)"] = meta.val_size
  dataset = dict(name=ds.name, source=ds.source, eval_split=split,
                 split_sizes=sizes)
  roles = data_lib.query_gallery(ds)
  if roles is not None:
    dataset.update(num_queries=int(roles[0].sum()),
                   num_gallery=int(roles[1].sum()))
  return metrics, dataset

"""Image retrieval: an embedding net trained on a labelled image dataset
(papers 1 and 2), evaluated by retrieval metrics on a held-out split.

The training split lives on the devices (replicated); each step samples and
augments its batch there, from randomness derived from (seed, step). With
validation on (config.eval_every > 0), config.val_size examples of the
training split are held out of it (stratified, the same for every seed) and
the validation metrics are theirs; the test split is read only by
`metricjax.evaluate`. On the photo benchmarks the hold-out is class-disjoint
instead, as the field validates: config.data.val_classes of the training
classes, every image of them (data/photos.py hold_out_classes).

The photo benchmarks (cub, cars196, sop, inshop, csv:FILE) are lazy
PhotoDatasets: always streamed, their views decoded and augmented on the
host (data/photo_pipeline.py), evaluated with the field's conventions
(RECALL_KS; In-Shop query -> gallery) and k-means NMI / AMI.
"""

import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np

from metricjax import clustering
from metricjax import data as data_lib
from metricjax import inference
from metricjax import losses
from metricjax import metrics as metrics_lib
from metricjax import models
from metricjax import parallel
from metricjax import state as state_lib
from metricjax import xla_routing
from metricjax.data import photo_pipeline
from metricjax.data import stream as stream_lib
from metricjax.data.photos import hold_out_classes
from metricjax.data.photos import PhotoDataset
from metricjax.errors import UserError
from metricjax.tasks.task import Task


# The Recall@K each benchmark's papers report (Musgrave et al. 2020, Table
# 1 and the works it compares): CUB and Cars196 at 1/2/4/8, SOP at
# 1/10/100/1000, In-Shop query -> gallery at 1/10/20/30/40/50.
RECALL_KS = {"cub": (1, 2, 4, 8), "cars196": (1, 2, 4, 8),
             "sop": (1, 10, 100, 1000), "inshop": (1, 10, 20, 30, 40, 50)}


def recall_ks(dataset: str) -> tuple[int, ...]:
  """The convention of a dataset name (csv: and others: CUB's)."""
  return RECALL_KS.get(dataset.strip().lower(), (1, 2, 4, 8))


@flax.struct.dataclass
class DeviceData:
  """A training split kept on the devices (replicated)."""
  images: jax.Array  # uint8 (N, H, W, C)
  labels: jax.Array  # int32 (N,)
  class_index: data_lib.ClassIndex


@dataclasses.dataclass(frozen=True)
class Meta:
  """The training data, as the checkpoint records it."""
  name: str
  source: str
  split: str
  size: int  # Training examples (held-out ones not counted).
  num_classes: int
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]
  val_size: int = 0  # Examples of `split` held out for validation.
  val_classes: int = 0  # Classes of `split` held out (all their examples).

  def to_dict(self) -> dict:
    return {"dataset": dataclasses.asdict(self)}

  @classmethod
  def from_dict(cls, d: dict) -> "Meta":
    ds = dict(d["dataset"])
    return cls(**dict(ds, class_names=tuple(ds["class_names"]),
                      image_shape=tuple(ds["image_shape"])))


def identity(config) -> dict:
  """What a resumed run must share with the checkpoint's (JSON-able)."""
  imbalance = config.get("imbalance")
  # A ConfigDict (configs/siamese.py's) is no JSON; compared as a dict.
  if hasattr(imbalance, "to_dict"):
    imbalance = imbalance.to_dict()
  return dict(dataset=config.dataset, model=config.model.to_dict(),
              classification_head=config.classification_head,
              imbalance=imbalance, held_out=_val_size(config),
              held_out_classes=_val_classes(config))


def _val_size(config) -> int:
  return config.val_size if config.get("eval_every") else 0


def _val_classes(config) -> float:
  """config.data.val_classes when validating (photo benchmarks), else 0."""
  data = config.get("data") or {}
  return data.get("val_classes", 0) if config.get("eval_every") else 0


def images_per_step(config) -> int:
  """Images a training step embeds: batch_size, or 3 per explicit triplet."""
  return config.batch_size * (3 if config.sampler == "triplets" else 1)


def make_model_and_init(config, meta: Meta, tx):
  model = models.create_model(
      config.model,
      num_classes=meta.num_classes if config.classification_head else None,
      compute_dtype=config.compute_dtype)
  image = jnp.zeros((1, *meta.image_shape), jnp.uint8)
  init_loss = _make_loss_init(config, meta)

  def init(rng):
    # The model keeps `rng` itself, so adding a loss changes no model init.
    return state_lib.init_state(
        model, tx, rng, image, train=False,
        loss_params=init_loss(jax.random.fold_in(rng, 1)),
        pretrained=lambda v: models.load_pretrained(model, v))
  return model, init


def _make_loss_init(config, meta: Meta):
  """rng -> the loss's initial learnable parameters ({} for most losses)."""
  loss = losses.get_loss(config.loss.name)
  kwargs = config.loss.kwargs.to_dict()
  if loss.init is None:
    return lambda rng: {}
  num_classes = kwargs.pop("num_classes", meta.num_classes)
  if num_classes is not None and num_classes != meta.num_classes:
    raise UserError(
        f"config.loss.kwargs.num_classes={num_classes}, but {meta.name} has "
        f"{meta.num_classes} classes: loss {config.loss.name!r} would learn "
        "parameters for classes that do not exist (or miss some). Drop "
        "num_classes from config.loss.kwargs: it comes from the data.")
  if config.sampler == "triplets":
    raise UserError(
        f"Loss {config.loss.name!r} learns per-class parameters and takes a "
        "labelled batch, not explicit triplets (config.sampler='triplets'); "
        "use sampler 'balanced' or 'uniform'.")
  dim = config.model.get("embedding_dim")
  return lambda rng: loss.init(rng, num_classes=num_classes,
                               embedding_dim=dim, **kwargs)


def _make_index_sampler(config, loss: losses.Loss, num_classes: int):
  """-> sample_indices(key, class_index): the step's example indices, the
  same function on the devices and (HostSampler) on the host."""
  if (loss.input == "triplets") != (config.sampler == "triplets"):
    raise UserError(
        f"config.sampler={config.sampler!r} does not fit loss "
        f"{config.loss.name!r}: explicit-triplet losses (*_explicit) need "
        "sampler 'triplets', the others 'balanced' or 'uniform'.")
  # batch_size counts triplets with sampler 'triplets': 3 x images a step.
  return data_lib.make_index_sampler(
      config.sampler, batch_size=config.batch_size, num_classes=num_classes,
      samples_per_class=(config.samples_per_class
                         if config.sampler == "balanced" else None))


def make_sample(config, loss: losses.Loss, mesh, num_classes: int):
  """(rng, data) -> {"images", "labels"}: the step's augmented batch, drawn
  from the dataset on the devices."""
  sample_indices = _make_index_sampler(config, loss, num_classes)
  batch_sharding = parallel.batch_sharding(mesh)

  def sample(rng, data: DeviceData):
    rng_sample, rng_augment = data_lib.batch_keys(rng)
    idx = sample_indices(rng_sample, data.class_index)
    # Sharding the indices makes each device gather only its own rows.
    idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
    return _augment(config, rng_augment,
                    {"images": data.images[idx], "labels": data.labels[idx]})
  return sample


def _augment(config, rng, batch):
  if config.augment:
    batch = dict(batch, images=data_lib.random_crop_flip(rng, batch["images"]))
  return batch


def make_stream_sample(config):
  """(rng, batch) -> the streamed batch, augmented as on the device path."""
  return lambda rng, batch: _augment(config, data_lib.batch_keys(rng)[1],
                                     batch)


def placement(config, ds) -> str:
  """"device" or "stream": config.data.placement, "auto" choosing by the
  split's size against config.data.device_budget_mb (the dataset is
  replicated, so it costs its size on every device)."""
  data = config.get("data") or {}
  chosen = data.get("placement", "auto")
  if chosen not in ("device", "stream", "auto"):
    raise UserError(f"config.data.placement={chosen!r}: use device, stream "
                    "or auto.")
  if isinstance(ds, PhotoDataset):
    if chosen == "device":
      raise UserError(f"{ds.name} is a photo collection decoded on the host "
                      "(variable sizes): config.data.placement must be "
                      "stream or auto.")
    return "stream"
  if chosen == "auto":
    budget = data.get("device_budget_mb", 1024) * 2**20
    chosen = "device" if ds.nbytes <= budget else "stream"
  return chosen


def make_loss(config, model, loss: losses.Loss):
  """(params, loss_params, batch_stats, batch) -> (loss, new batch_stats)."""
  if loss.input not in ("embedding", "logits", "triplets"):
    raise UserError(f"Loss {config.loss.name!r} takes {loss.input!r}, not a "
                    "labelled image batch; it belongs to another task.")
  if loss.input == "logits" and not config.classification_head:
    raise UserError(f"Loss {config.loss.name!r} needs logits: set "
                    "config.classification_head=True.")
  kwargs = config.loss.kwargs.to_dict()
  pieces = losses.composed_pieces(config.loss)
  if pieces or config.loss.name not in losses.REGISTRY:
    # config.loss.{distance,miner,reducer}: build checks the combination and
    # the keywords now, before anything compiles.
    loss = loss._replace(fn=losses.build(config.loss.name, **pieces, **kwargs))
    kwargs = {}
    if "miner" in pieces and losses.compose.make_miner(pieces["miner"]).random:
      raise UserError(
          f"The miner in config.loss.miner is random and the training step "
          "passes the loss no key yet; use a deterministic miner "
          "(multi_similarity, batch_hard, batch_easy_hard, triplet_margin, "
          "pair_margin, angular, hdc), or call losses.build(...) with "
          "key= in your own step.")
  else:
    losses.check_hyperparameters(config.loss.name, config.loss.kwargs)
  kwargs.pop("num_classes", None)  # Only sizes the loss's parameters.

  def loss_fn(params, loss_params, batch_stats, batch):
    outputs, updates = model.apply(
        {"params": params, "batch_stats": batch_stats}, batch["images"],
        train=True, mutable=["batch_stats"])
    # Losses reduce in float32 whatever the compute dtype.
    x = outputs[loss.input if loss.input != "triplets" else "embedding"]
    x = x.astype(jnp.float32)
    if loss.input == "triplets":
      value = loss.fn(*jnp.split(x, 3), **kwargs)
    else:
      value = loss.fn(x, batch["labels"], **kwargs, **loss_params)
    return value, updates.get("batch_stats", {})
  return loss_fn


def _routing(config) -> str:
  return xla_routing.check(config.xla_cpu_routing)


def _variables(state):
  return {"params": state.params, "batch_stats": state.batch_stats}


def _eval_apply(config, model):
  return inference.eval_apply(model, _routing(config))


def make_validation(config, model, held_out: data_lib.ArrayDataset, mesh):
  """Retrieval metrics of the held-out examples (querying each other)."""
  apply = _eval_apply(config, model)

  def validate(state):
    outputs = inference.batched_apply(
        apply, _variables(state), (held_out.images,), mesh=mesh,
        batch_size=config.eval.batch_size, desc="validate")
    return metrics_lib.retrieval_metrics(outputs["embedding"], held_out.labels,
                                         ks=tuple(config.eval.ks))
  return validate


def build(config, mesh, tx) -> Task:
  parallel.check_divisible(config.batch_size, mesh, "config.batch_size")
  loss = losses.get_loss(config.loss.name)
  ds = _load(config, config.train_split)
  photos = isinstance(ds, PhotoDataset)
  _check_hold_out(config, ds, photos)
  if config.get("imbalance") and config.imbalance.classes:
    ds = data_lib.imbalanced(ds, **config.imbalance.to_dict())
  held_out = None
  if _val_size(config):
    ds, held_out = data_lib.hold_out(ds, config.val_size)
  elif _val_classes(config):
    ds, held_out = hold_out_classes(ds, _val_classes(config))
  meta = Meta(name=ds.name, source=ds.source, split=ds.split, size=len(ds),
              num_classes=ds.num_classes, class_names=ds.class_names,
              image_shape=((config.image_size,) * 2 + (3,) if photos
                           else ds.image_shape),
              val_size=0 if held_out is None else len(held_out),
              val_classes=held_out.num_classes if _val_classes(config) else 0)
  model, init = make_model_and_init(config, meta, tx)
  validate = None
  if held_out is not None:
    validate = (make_photo_validation if photos else make_validation)(
        config, model, held_out, mesh)
  examples_per_step = images_per_step(config)
  common = dict(meta=meta, model=model, init=init, epoch_size=len(ds),
                loss=make_loss(config, model, loss), validate=validate,
                examples_per_step=examples_per_step)
  if placement(config, ds) == "stream":
    parallel.check_divisible(examples_per_step, mesh, "config.batch_size")
    # The device path's sampler, run on the host: the same batches.
    sample_indices = data_lib.HostSampler(
        _make_index_sampler(config, loss, ds.num_classes),
        data_lib.ClassIndex.from_labels(ds.labels, ds.num_classes))
    if photos:
      return _photo_task(config, ds, sample_indices, examples_per_step, mesh,
                         meta.image_shape, common)
    return Task(sample=make_stream_sample(config),
                data=stream_lib.abstract_batch(ds, examples_per_step, mesh),
                stream=lambda start: stream_lib.device_batches(
                    stream_lib.host_batches(
                        ds, sample_indices, seed=config.seed,
                        start_step=start, total_steps=config.total_steps),
                    mesh), **common)
  images = np.asarray(ds.images[:])  # A packed split, read whole.
  data = parallel.replicate(DeviceData(
      images=images, labels=ds.labels,
      class_index=data_lib.ClassIndex.from_labels(ds.labels, ds.num_classes)), mesh)
  return Task(sample=make_sample(config, loss, mesh, ds.num_classes),
              data=data, **common)


def _check_hold_out(config, ds, photos):
  """Photo benchmarks validate on held-out classes, the others on held-out
  examples; imbalance is for the packed datasets."""
  if not photos:
    if _val_classes(config):
      raise UserError(
          f"config.data.val_classes holds out classes of the photo "
          f"benchmarks; {ds.name} validates on config.val_size held-out "
          "examples: set config.data.val_classes=0.")
    return
  if config.get("imbalance"):
    raise UserError(f"{ds.name} is a photo benchmark: config.imbalance is "
                    "not available for it; drop config.imbalance.")
  if _val_size(config):
    raise UserError(
        f"{ds.name} is a photo benchmark, validated as the field does on "
        "classes held out of the training classes (config.data.val_classes), "
        "not on held-out images of the training classes: set "
        "config.val_size=0.")
  if config.get("eval_every") and not _val_classes(config):
    raise UserError(
        f"config.eval_every={config.eval_every} validates on held-out "
        f"training classes of {ds.name}: set config.data.val_classes (a "
        "fraction, e.g. 0.25 as the Reality Check's 4 folds, or a count), "
        "or config.eval_every=0.")


def _load(config, split):
  data = config.get("data") or {}
  return data_lib.load_dataset(config.dataset, split,
                               boxes=bool(data.get("boxes", False)))


def _photo_task(config, ds, sample_indices, examples_per_step, mesh,
                image_shape, common) -> Task:
  """Streams the host pipeline's training views (augmented there)."""
  if config.augment:
    raise UserError("config.augment (pad-crop-flip on the device) is for "
                    f"fixed-size images; {ds.name}'s views are augmented on "
                    "the host (RandomResizedCrop + flip): set "
                    "config.augment=False.")
  view = photo_pipeline.view_from_config(config, train=True)
  data = config.data

  def stream(start):
    return stream_lib.device_batches(photo_pipeline.train_batches(
        ds, sample_indices, view, seed=config.seed, start_step=start,
        total_steps=config.total_steps, batch_size=examples_per_step,
        skip_corrupt=bool(data.get("skip_corrupt", False)),
        num_threads=data.get("num_threads", 8),
        prefetch=data.get("prefetch", 256),
        workers=data.get("workers", 0)), mesh)
  return Task(sample=make_stream_sample(config), stream=stream,
              data=stream_lib.abstract_batch(ds, examples_per_step, mesh,
                                             image_shape), **common)


def _embed_photos(config, apply, state, ds, mesh):
  """Embeddings of the evaluation views (decoded batch by batch), and the
  rows kept (all but skipped corrupt images)."""
  data = config.data
  images = photo_pipeline.DecodedSplit(
      ds, photo_pipeline.view_from_config(config, train=False),
      batch_size=config.eval.batch_size,
      skip_corrupt=bool(data.get("skip_corrupt", False)),
      num_threads=data.get("num_threads", 8),
      prefetch=data.get("prefetch", 256))
  outputs = inference.batched_apply(
      apply, _variables(state), (images,), mesh=mesh,
      batch_size=config.eval.batch_size, desc=f"embed {ds.name}/{ds.split}")
  keep = np.ones(len(ds), bool)
  keep[images.skipped_rows] = False
  return outputs, keep


def make_photo_validation(config, model, held_out: PhotoDataset, mesh):
  """Retrieval metrics of the held-out classes' evaluation views (each
  image querying the others; no clustering, which the test split gets)."""
  apply = _eval_apply(config, model)

  def validate(state):
    outputs, keep = _embed_photos(config, apply, state, held_out, mesh)
    return metrics_lib.retrieval_metrics(
        outputs["embedding"][keep], held_out.labels[keep],
        ks=tuple(config.eval.ks))
  return validate


def _photo_metrics(config, ds, embedding, keep) -> dict:
  ks = tuple(config.eval.ks)
  labels = ds.labels
  if ds.is_query is not None:
    query, gallery = ds.is_query & keep, ds.is_gallery & keep
    metrics = metrics_lib.retrieval_metrics(
        embedding[query], labels[query], embedding[gallery], labels[gallery],
        ks=ks)
  else:
    metrics = metrics_lib.retrieval_metrics(embedding[keep], labels[keep],
                                            ks=ks)
  if config.eval.get("clustering", True):
    metrics.update(clustering.clustering_metrics(
        embedding[keep], labels[keep], seed=config.seed,
        max_iter=config.eval.get("kmeans_max_iter", 100)))
  metrics["num_skipped_corrupt"] = int(np.sum(~keep))
  return metrics


def evaluate(config, meta: Meta, model, state, split: str, mesh):
  ds = _load(config, split)
  if isinstance(ds, PhotoDataset):
    outputs, keep = _embed_photos(config, _eval_apply(config, model), state,
                                  ds, mesh)
    metrics = _photo_metrics(config, ds, outputs["embedding"], keep)
  else:
    outputs = inference.embed(model, _variables(state), ds.images,
                              batch_size=config.eval.batch_size, mesh=mesh,
                              desc=f"embed {ds.name}/{split}",
                              routing=_routing(config))
    metrics = metrics_lib.retrieval_metrics(
        outputs["embedding"], ds.labels, ks=tuple(config.eval.ks))
    if config.eval.get("clustering", False):
      metrics.update(clustering.clustering_metrics(
          outputs["embedding"], ds.labels, seed=config.seed))
  if "logits" in outputs and not isinstance(ds, PhotoDataset):
    metrics["accuracy"] = metrics_lib.accuracy(outputs["logits"], ds.labels)
  sizes = {meta.split: meta.size, split: len(ds)}
  if meta.val_classes:
    sizes[f"{meta.split} (held out for validation: {meta.val_classes} "
          "classes)"] = meta.val_size
  elif meta.val_size:
    sizes[f"{meta.split} (held out for validation)"] = meta.val_size
  dataset = dict(name=ds.name, source=ds.source, eval_split=split,
                 split_sizes=sizes)
  if isinstance(ds, PhotoDataset) and ds.is_query is not None:
    dataset.update(num_queries=int(ds.is_query.sum()),
                   num_gallery=int(ds.is_gallery.sum()))
  return metrics, dataset

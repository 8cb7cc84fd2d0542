"""Image retrieval: an embedding net trained on a labelled image dataset
(papers 1 and 2), evaluated by retrieval metrics on a held-out split.

The training split lives on the devices (replicated) and each step samples
and augments its batch there, from randomness derived from (seed, step);
or it is streamed from the host, batch by batch. With validation on
(config.eval_every > 0), part of the training split is held out of it:
config.val_size examples (stratified, the same for every seed), or on the
photo benchmarks config.data.val_classes of the training classes, as the
field validates. The test split is read only by `metricjax.evaluate`.

The task's other pieces: retrieval_inputs.py (how a split's images are
read: arrays, or photos decoded on the host), retrieval_model.py (model
and loss), retrieval_eval.py (metrics, with the dataset's convention).
"""

import dataclasses

import flax
import jax
import numpy as np

from metricjax import data as data_lib
from metricjax import losses
from metricjax import parallel
from metricjax.data import stream as stream_lib
from metricjax.tasks import retrieval_eval
from metricjax.tasks import retrieval_inputs as inputs
# The task's interface (tasks/__init__.py) and tools/, tasks/shapes.py's.
from metricjax.tasks.retrieval_eval import evaluate  # pylint: disable=unused-import
from metricjax.tasks.retrieval_model import make_loss
from metricjax.tasks.retrieval_model import make_model_and_init
from metricjax.tasks.task import Task


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
  return dict(dataset=config.dataset, model=config.model.to_dict(),
              classification_head=config.classification_head,
              imbalance=config.imbalance.to_dict(), held_out=_val_size(config),
              held_out_classes=_val_classes(config))


def _val_size(config) -> int:
  return config.val_size if config.eval_every else 0


def _val_classes(config) -> float:
  """config.data.val_classes when validating (photo benchmarks), else 0."""
  return config.data.val_classes if config.eval_every else 0


def images_per_step(config) -> int:
  """Images a training step draws: batch_size, or 3 per explicit triplet.
  A "views" loss embeds two augmentations of each (the sample's "views")."""
  return config.batch_size * (3 if config.sampler == "triplets" else 1)


def _make_index_sampler(config, loss: losses.Loss, num_classes: int):
  """-> sample_indices(key, class_index): the step's example indices, the
  same function on the devices and (HostSampler) on the host. The sampler
  fits the loss (metricjax.config_check.validate)."""
  del loss
  # batch_size counts triplets with sampler 'triplets': 3 x images a step.
  return data_lib.make_index_sampler(
      config.sampler, batch_size=config.batch_size, num_classes=num_classes,
      samples_per_class=(config.samples_per_class
                         if config.sampler == "balanced" else None))


def _takes_views(config) -> bool:
  """Whether config.loss takes two views of each image ("views", e.g.
  vicreg): the sample then holds a second augmentation of its images."""
  return losses.get_loss(config.loss.name).input == "views"


def make_sample(config, loss: losses.Loss, mesh, num_classes: int):
  """(rng, data) -> {"images", "labels"}: the step's augmented batch, drawn
  from the dataset on the devices; with a "views" loss also "views", a
  second augmentation of the same images."""
  sample_indices = _make_index_sampler(config, loss, num_classes)
  batch_sharding = parallel.batch_sharding(mesh)

  def sample(rng, data: DeviceData):
    rng_sample, rng_augment = data_lib.batch_keys(rng)
    idx = sample_indices(rng_sample, data.class_index)
    # Sharding the indices makes each device gather only its own rows.
    idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
    return _augment(config, rng_augment,
                    {"images": data.images[idx], "labels": data.labels[idx]},
                    views=loss.input == "views")
  return sample


def _augment(config, rng, batch, *, views: bool = False):
  """The batch augmented from the step's augmentation key `rng`; with
  `views`, "views" holds a second augmentation of the same images, drawn
  from fold_in(rng, 1) ("images" stays the one augmentation of the other
  losses). A "views" loss needs config.augment (config_check)."""
  if config.augment:
    images = batch["images"]
    batch = dict(batch, images=data_lib.random_crop_flip(rng, images))
    if views:
      batch["views"] = data_lib.random_crop_flip(jax.random.fold_in(rng, 1),
                                                 images)
  return batch


def make_stream_sample(config):
  """(rng, batch) -> the streamed batch, augmented as on the device path."""
  views = _takes_views(config)
  return lambda rng, batch: _augment(config, data_lib.batch_keys(rng)[1],
                                     batch, views=views)


def placement(config, ds) -> str:
  """"device" or "stream": config.data.placement, "auto" choosing by what
  the split's kind allows (retrieval_inputs)."""
  return inputs.of(ds).placement(config, ds)


def build(config, mesh, tx) -> Task:
  parallel.check_divisible(config.batch_size, mesh, "config.batch_size")
  loss = losses.get_loss(config.loss.name)
  ds = inputs.load(config, config.train_split)
  kind = inputs.of(ds)
  kind.check(config, ds, val_size=_val_size(config),
             val_classes=_val_classes(config))
  if config.imbalance.classes:
    ds = data_lib.imbalanced(ds, **config.imbalance.to_dict())
  held_out = None
  if _val_size(config):
    ds, held_out = data_lib.hold_out(ds, config.val_size)
  elif _val_classes(config):
    ds, held_out = data_lib.hold_out_classes(ds, _val_classes(config))
  meta = Meta(name=ds.name, source=ds.source, split=ds.split, size=len(ds),
              num_classes=ds.num_classes, class_names=ds.class_names,
              image_shape=kind.image_shape(config, ds),
              val_size=0 if held_out is None else len(held_out),
              val_classes=held_out.num_classes if _val_classes(config) else 0)
  model, init = make_model_and_init(config, meta, tx)
  validate = None
  if held_out is not None:
    validate = retrieval_eval.make_validation(config, model, held_out, mesh)
  examples_per_step = images_per_step(config)
  common = dict(meta=meta, model=model, init=init, epoch_size=len(ds),
                loss=make_loss(config, model, loss), validate=validate,
                examples_per_step=examples_per_step)
  if kind.placement(config, ds) == "stream":
    parallel.check_divisible(examples_per_step, mesh, "config.batch_size")
    # The device path's sampler, run on the host: the same batches.
    sample_indices = data_lib.HostSampler(
        _make_index_sampler(config, loss, ds.num_classes),
        data_lib.ClassIndex.from_labels(ds.labels, ds.num_classes))
    return Task(sample=make_stream_sample(config),
                data=stream_lib.abstract_batch(ds, examples_per_step, mesh,
                                               meta.image_shape),
                stream=lambda start: stream_lib.device_batches(
                    kind.train_batches(config, ds, sample_indices,
                                       start=start,
                                       batch_size=examples_per_step),
                    mesh), **common)
  images = np.asarray(ds.images[:])  # A packed split, read whole.
  data = parallel.replicate(DeviceData(
      images=images, labels=ds.labels,
      class_index=data_lib.ClassIndex.from_labels(ds.labels, ds.num_classes)), mesh)
  return Task(sample=make_sample(config, loss, mesh, ds.num_classes),
              data=data, **common)

"""Image retrieval: an embedding net trained on a labelled image dataset
(papers 1 and 2), evaluated by retrieval metrics on a held-out split.

The training split lives on the devices (replicated); each step samples and
augments its batch there, from randomness derived from (seed, step).
"""

import flax
import jax
import jax.numpy as jnp
import optax

from metricjax import data as data_lib
from metricjax import losses
from metricjax import metrics as metrics_lib
from metricjax import parallel
from metricjax import state as state_lib
from metricjax.errors import UserError
from metricjax.tasks import Task
from metricjax.tasks.embedding import embed


@flax.struct.dataclass
class DeviceData:
  """A training split kept on the devices (replicated)."""
  images: jax.Array  # uint8 (N, H, W, C)
  labels: jax.Array  # int32 (N,)
  class_index: data_lib.ClassIndex


def dataset_meta(ds: data_lib.ArrayDataset) -> dict:
  return dict(name=ds.name, source=ds.source, split=ds.split, size=len(ds),
              num_classes=ds.num_classes, class_names=list(ds.class_names),
              image_shape=list(ds.images.shape[1:]))


def make_sampler(config, loss: losses.Loss, num_classes: int):
  """-> sample(rng, data): the step's example indices, drawn on device."""
  if (loss.input == "triplets") != (config.sampler == "triplets"):
    raise UserError(
        f"config.sampler={config.sampler!r} does not fit loss "
        f"{config.loss.name!r}: explicit-triplet losses (*_explicit) need "
        "sampler 'triplets', the others 'balanced' or 'uniform'.")
  if config.sampler == "triplets":
    # batch_size counts triplets: a step embeds 3 * batch_size images.
    return lambda rng, data: jnp.concatenate(
        data_lib.random_triplets(rng, data.class_index, config.batch_size))
  if config.sampler == "balanced":
    p, k = data_lib.check_batch_shape(config.batch_size, config.samples_per_class,
                                      num_classes)
    return lambda rng, data: data_lib.class_balanced_batch(
        rng, data.class_index, classes_per_batch=p, samples_per_class=k)
  if config.sampler == "uniform":
    return lambda rng, data: data_lib.uniform_batch(
        rng, data.labels.shape[0], config.batch_size)
  raise UserError(f"config.sampler={config.sampler!r}: use 'balanced' (P classes "
                  "x K images), 'uniform', or 'triplets' (explicit triplets).")


def make_train_step(config, model, loss: losses.Loss, tx, mesh, num_classes):
  """The jitted-to-be step: sample, augment, forward, backward, update."""
  loss_kwargs = config.loss.kwargs.to_dict()
  if loss.input == "logits" and not config.classification_head:
    raise UserError(f"Loss {config.loss.name!r} needs logits: set "
                    "config.classification_head=True.")
  sample = make_sampler(config, loss, num_classes)
  batch_sharding = parallel.batch_sharding(mesh)
  seed_key = jax.random.key(config.seed)

  def train_step(state: state_lib.TrainState, data: DeviceData):
    rng_sample, rng_augment = jax.random.split(jax.random.fold_in(seed_key, state.step))
    idx = sample(rng_sample, data)
    # Sharding the indices makes each device gather only its own rows.
    idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
    images, labels = data.images[idx], data.labels[idx]
    if config.augment:
      images = data_lib.random_crop_flip(rng_augment, images)

    def loss_fn(params):
      outputs, updates = model.apply(
          {"params": params, "batch_stats": state.batch_stats}, images,
          train=True, mutable=["batch_stats"])
      if loss.input == "triplets":
        value = loss.fn(*jnp.split(outputs["embedding"], 3), **loss_kwargs)
      else:
        value = loss.fn(outputs[loss.input], labels, **loss_kwargs)
      return value, updates.get("batch_stats", {})

    (value, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1, params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats, opt_state=opt_state)
    return new_state, {"loss": value, "grad_norm": optax.tree.norm(grads)}

  return train_step


def make_validation(config, model, mesh):
  """Retrieval metrics of the first config.val_size eval-split images, every
  config.eval_every steps (0: never). For learning curves and steps-to-target,
  not for the reported test figures."""
  if not config.get("eval_every"):
    return None
  ds = data_lib.load_dataset(config.dataset, config.eval_split)
  images, labels = ds.images[:config.val_size], ds.labels[:config.val_size]

  def validate(state):
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    outputs = embed(model, variables, images, mesh=mesh,
                                 batch_size=config.eval.batch_size, desc="validate")
    return metrics_lib.retrieval_metrics(outputs["embedding"], labels,
                                         ks=tuple(config.eval.ks))
  return validate


def make_model_and_init(config, meta: dict, tx):
  model = state_lib.model_from_config(config, meta["dataset"]["num_classes"])
  image_shape = tuple(meta["dataset"]["image_shape"])
  return model, lambda rng: state_lib.init_state(model, tx, image_shape, rng)


def build(config, mesh, tx) -> Task:
  parallel.check_divisible(config.batch_size, mesh, "config.batch_size")
  ds = data_lib.load_dataset(config.dataset, config.train_split)
  if config.get("imbalance") and config.imbalance.classes:
    ds = data_lib.imbalanced(ds, **config.imbalance.to_dict())
  meta = dict(dataset=dataset_meta(ds))
  model, init = make_model_and_init(config, meta, tx)
  loss = losses.get_loss(config.loss.name)
  data = parallel.replicate(DeviceData(
      images=ds.images, labels=ds.labels,
      class_index=data_lib.ClassIndex.from_labels(ds.labels, ds.num_classes)), mesh)
  return Task(
      meta=meta, model=model, init=init,
      step=make_train_step(config, model, loss, tx, mesh, ds.num_classes),
      data=data, epoch_size=len(ds),
      examples_per_step=config.batch_size * (3 if config.sampler == "triplets" else 1),
      validate=make_validation(config, model, mesh))


def evaluate(config, meta: dict, model, state, split: str, mesh):
  ds = data_lib.load_dataset(config.dataset, split)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  outputs = embed(model, variables, ds.images, batch_size=config.eval.batch_size,
                  mesh=mesh, desc=f"embed {ds.name}/{split}")
  metrics = metrics_lib.retrieval_metrics(
      outputs["embedding"], ds.labels, ks=tuple(config.eval.ks))
  if "logits" in outputs:
    metrics["accuracy"] = metrics_lib.accuracy(outputs["logits"], ds.labels)
  train_meta = meta["dataset"]
  dataset = dict(name=ds.name, source=ds.source, eval_split=split,
                 split_sizes={train_meta["split"]: train_meta["size"], split: len(ds)})
  return metrics, dataset

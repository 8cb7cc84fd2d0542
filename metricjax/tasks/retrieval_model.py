"""The retrieval task's model and loss: the embedding net of config.model
(with a classification head when config.classification_head), the loss
of config.loss on its embeddings, logits or explicit triplets, and the
loss's learnable parameters (proxies, class weights) sized from the data.

`meta` is the task's Meta (tasks/retrieval.py): the training data's
num_classes, name and image_shape.
"""

import jax
import jax.numpy as jnp

from metricjax import losses
from metricjax import models
from metricjax import state as state_lib
from metricjax.errors import UserError


def make_model_and_init(config, meta, tx):
  model = models.create_model(
      config.model,
      num_classes=meta.num_classes if config.classification_head else None,
      compute_dtype=config.compute_dtype)
  image = jnp.zeros((1, *meta.image_shape), jnp.uint8)
  init_loss = _make_loss_init(config, meta,
                              getattr(model, "embedding_dim", None))

  def init(rng):
    # The model keeps `rng` itself, so adding a loss changes no model init.
    return state_lib.init_state(
        model, tx, rng, image, train=False,
        loss_params=init_loss(jax.random.fold_in(rng, 1)),
        pretrained=lambda v: models.load_pretrained(model, v))
  return model, init


def _make_loss_init(config, meta, dim: int | None):
  """rng -> the loss's initial learnable parameters ({} for most losses),
  for embeddings of `dim` features (the model's)."""
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
  return lambda rng: loss.init(rng, num_classes=num_classes,
                               embedding_dim=dim, **kwargs)


def make_loss(config, model, loss: losses.Loss):
  """(params, loss_params, batch_stats, batch) -> (loss, new batch_stats).
  The config is valid (metricjax.config_check.validate)."""
  kwargs = config.loss.kwargs.to_dict()
  pieces = losses.composed_pieces(config.loss)
  if pieces or config.loss.name not in losses.REGISTRY:
    # config.loss.{distance,miner,reducer,regularizer}.
    loss = loss._replace(fn=losses.build(config.loss.name, **pieces, **kwargs))
    kwargs = {}
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

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
    loss_params, loss_state = init_loss(jax.random.fold_in(rng, 1))
    return state_lib.init_state(
        model, tx, rng, image, train=False, loss_params=loss_params,
        loss_state=loss_state,
        pretrained=lambda v: models.load_pretrained(model, v))
  return model, init


def _make_loss_init(config, meta, dim: int | None):
  """rng -> the loss's initial learnable parameters ({} for most losses)
  and its state (a cross-batch memory's bank; {} without one), for
  embeddings of `dim` features (the model's)."""
  configured = losses.configured.from_config(config.loss)
  for t in (configured.main, *configured.extras):
    num_classes = t.init_kwargs.get("num_classes", meta.num_classes)
    if (t.loss.init is not None and num_classes is not None
        and num_classes != meta.num_classes):
      raise UserError(
          f"config.loss.kwargs.num_classes={num_classes}, but {meta.name} has "
          f"{meta.num_classes} classes: loss {t.name!r} would learn "
          "parameters for classes that do not exist (or miss some). Drop "
          "num_classes from config.loss.kwargs: it comes from the data.")
  return lambda rng: (
      configured.init_params(rng, num_classes=meta.num_classes,
                             embedding_dim=dim),
      configured.init_state(dim))


def make_loss(config, model, loss: losses.Loss):
  """The task's loss (metricjax/step.py's contract): config.loss on the
  model's outputs; a "views" loss (vicreg, self_supervised) on the
  embeddings of the batch's two augmentations ("images", "views"), without
  labels. The config is valid (metricjax.config_check.validate)."""
  configured = losses.configured.from_config(config.loss)
  views = loss.input == "views"

  def loss_fn(params, loss_params, batch_stats, batch, loss_state, key):
    images = batch["images"]
    if views:
      # One model call on both views, interleaved (rows 2i, 2i + 1: example
      # i's views) so each device's rows stay its own; batch norm sees both.
      images = jnp.stack([images, batch["views"]], axis=1).reshape(
          (-1, *images.shape[1:]))
    outputs, updates = model.apply(
        {"params": params, "batch_stats": batch_stats}, images,
        train=True, mutable=["batch_stats"])
    # Losses reduce in float32 whatever the compute dtype.
    outputs = {k: v.astype(jnp.float32) for k, v in outputs.items()
               if k in ("embedding", "logits")}
    if loss.input == "triplets":
      value = loss.fn(*jnp.split(outputs["embedding"], 3),
                      **configured.main.call_kwargs)
    elif views:  # Two views of each example, no labels (e.g. vicreg).
      pairs = outputs["embedding"].reshape(images.shape[0] // 2, 2, -1)
      # (The Term passes the second view where labels go, and the step's
      # loss key to a loss that takes one: self_supervised's random miner.)
      value = configured.main(pairs[:, 0], pairs[:, 1], {}, key=key)
    else:
      value, loss_state = configured.apply(outputs, batch["labels"],
                                           loss_params, loss_state, key)
    return value, (updates.get("batch_stats", {}), loss_state)
  return loss_fn

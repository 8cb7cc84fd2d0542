"""Visual-semantic embedding on frozen image features (paper 3: VSE / VSE++
with the Full-Network Embedding or fc7).

The backbone runs once per split (metricjax.fne.extract_features, cached on
disk); training reads only its features. The whole training split lives on
the devices: image features (int8 {-1, 0, 1} for FNE, float32 for fc7) and
every caption's word ids. Each step draws a batch of distinct images and
one random caption of each, inside the jitted step from (seed, step).

The vocabulary (training captions only) and the FNE statistics (training
images only) go into the checkpoint's meta, so evaluation needs no training
data: only the checkpoint, the backbone weights and the evaluated split.
Model selection: checkpoints at every validation (config.checkpoint_every
= config.eval_every) and `metricjax.evaluate --select=val_rsum`.
"""

import dataclasses
import hashlib
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np

from metricjax import data as data_lib
from metricjax import fne
from metricjax import inference
from metricjax import losses
from metricjax import metrics as metrics_lib
from metricjax import models
from metricjax import parallel
from metricjax import state as state_lib
from metricjax.data.image_folder import cache_dir
from metricjax.errors import UserError
from metricjax.models import convert
from metricjax.models import weights as weights_lib
from metricjax.tasks.task import Task
from metricjax.text import Vocabulary

FEATURES = ("fne", "fc7")


@flax.struct.dataclass
class DeviceData:
  """A training split kept on the devices (replicated)."""
  features: jax.Array  # (N, D) int8 (FNE) or float32 (fc7)
  ids: jax.Array  # int32 (N, captions_per_image, L), 0-padded
  lengths: jax.Array  # int32 (N, captions_per_image)


@dataclasses.dataclass(frozen=True)
class Meta:
  """What the model learned from its training split besides its weights."""
  dataset: dict  # name, source, split, size, captions_per_image
  backbone: dict  # Backbone.describe(): weights path and SHA-256, taps, ...
  features_kind: str  # "fne" or "fc7"
  features_dim: int
  vocabulary: Vocabulary
  fne_stats: fne.FNEStats | None  # For "fne": the training split's.

  def to_dict(self) -> dict:
    return dict(dataset=self.dataset, backbone=self.backbone,
                features=dict(kind=self.features_kind, dim=self.features_dim),
                vocabulary=self.vocabulary.to_dict(),
                fne_stats=self.fne_stats.to_dict() if self.fne_stats else None)

  @classmethod
  def from_dict(cls, d: dict) -> "Meta":
    return cls(dataset=d["dataset"], backbone=d["backbone"],
               features_kind=d["features"]["kind"],
               features_dim=int(d["features"]["dim"]),
               vocabulary=Vocabulary.from_dict(d["vocabulary"]),
               fne_stats=(fne.FNEStats.from_dict(d["fne_stats"])
                          if d["fne_stats"] else None))


def identity(config) -> dict:
  """What a resumed run must share with the checkpoint's."""
  return dict(dataset=config.dataset, model=config.model.to_dict(),
              image_features=config.image_features,
              backbone=config.backbone.to_dict())


def _weights_path(weights: str) -> str:
  path = os.path.abspath(os.path.expanduser(weights or ""))
  if not weights or not os.path.isfile(path):
    raise UserError(
        f"Backbone weights config.backbone.weights={weights!r}: no such file. "
        f"{convert.HOW_TO_GET_WEIGHTS} Then pass "
        "--config.backbone.weights=PATH.npz.")
  return path


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 24), b""):
      h.update(block)
  return h.hexdigest()


class Backbone:
  """The frozen CNN of config.backbone and the features of caption splits."""

  def __init__(self, config, mesh, weights: str | None = None):
    self.config, self.mesh = config, mesh
    self.path = _weights_path(weights or config.backbone.weights)
    name = config.backbone.name
    if name not in models.TAPPED:
      raise UserError(f"Unknown backbone {name!r} (config.backbone.name); "
                      f"known: {', '.join(models.TAPPED)}.")
    npz_meta = weights_lib.read_meta(self.path)
    if npz_meta.get("arch", name) != name:
      raise UserError(f"{self.path} holds a {npz_meta['arch']!r} backbone, "
                      f"not {name!r}; set config.backbone.name to match.")
    self.model, variables = models.load_backbone(self.path)
    self.params = variables["params"]
    # What the weights record unless the config overrides it.
    self.preprocess = (config.backbone.preprocess
                       or npz_meta.get("preprocess", "torch"))
    self.image_size = (config.backbone.image_size
                       or npz_meta.get("image_size", 224))

  def describe(self) -> dict:
    """What the features depend on, for the meta."""
    return dict(name=self.config.backbone.name, weights=self.path,
                sha256=_sha256(self.path), preprocess=self.preprocess,
                image_size=self.image_size, taps=list(self.model.fne_taps))

  def load_split(self, split: str) -> data_lib.CaptionSplit:
    return data_lib.load_captions(self.config.dataset, split,
                                  image_size=self.image_size)

  def features(self, split: data_lib.CaptionSplit, kind: str,
               stats: fne.FNEStats | None = None) -> np.ndarray:
    """(N, D) features of kind "fne_raw", "fne" or "fc7"; one backbone pass
    per split, cached, serves every kind."""
    root = self.config.features_cache_dir or os.path.join(
        cache_dir(), "features")
    tag = hashlib.sha256(f"{split.source}|{self.path}".encode()).hexdigest()[:12]
    cache = os.path.join(root, f"{split.name}-{split.split}-"
                         f"{self.image_size}px-{tag}.npy")
    return fne.extract_features(
        self.model, self.params, split.images, kind=kind, stats=stats,
        batch_size=self.config.backbone.batch_size, cache_path=cache,
        preprocess=self.preprocess, mesh=self.mesh,
        desc=f"features {split.name}/{split.split}")


def _encode_captions(config, vocab: Vocabulary, split: data_lib.CaptionSplit):
  return vocab.encode(split.captions, max_length=config.max_caption_length)


def make_model_and_init(config, meta: Meta, tx):
  model = models.create_model(
      dict(config.model.to_dict(), vocab_size=len(meta.vocabulary)),
      compute_dtype=config.compute_dtype)
  dtype = jnp.int8 if meta.features_kind == "fne" else jnp.float32
  inputs = (jnp.zeros((1, meta.features_dim), dtype),
            jnp.zeros((1, 1), jnp.int32), jnp.ones((1,), jnp.int32))
  return model, lambda rng: state_lib.init_state(model, tx, rng, *inputs)


def make_sample(config, mesh):
  """(rng, data) -> a batch of distinct images and one caption of each."""
  batch_sharding = parallel.batch_sharding(mesh)

  def sample(rng, data: DeviceData):
    rng_images, rng_captions = jax.random.split(rng)
    idx = data_lib.uniform_batch(rng_images, data.features.shape[0],
                                 config.batch_size)
    # One of each image's captions, as VSE++ does; sharding the indices
    # makes each device gather only its own rows.
    which = jax.random.randint(rng_captions, idx.shape, 0, data.ids.shape[1])
    idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
    which = jax.lax.with_sharding_constraint(which, batch_sharding)
    return {"features": data.features[idx], "ids": data.ids[idx, which],
            "lengths": data.lengths[idx, which]}
  return sample


def make_loss(config, model):
  """The task's loss (metricjax/step.py): the model has no batch
  statistics and the ranking loss no state, they pass through."""
  loss = losses.get_loss(config.loss.name)
  kwargs = config.loss.kwargs.to_dict()

  def loss_fn(params, loss_params, batch_stats, batch, loss_state, key):
    del loss_params, key  # The ranking loss learns nothing, draws nothing.
    image_emb, text_emb = model.apply({"params": params}, batch["features"],
                                      batch["ids"], batch["lengths"])
    # The loss reduces in float32 whatever the compute dtype.
    return loss.fn(image_emb.astype(jnp.float32), text_emb.astype(jnp.float32),
                   **kwargs), (batch_stats, loss_state)
  return loss_fn


def embed_split(config, model, state, features: np.ndarray, ids: np.ndarray,
                lengths: np.ndarray, mesh, *, encoders=None):
  """(image_emb, caption_emb) of a split, in sharded batches.

  encoders: jitted (encode_image, encode_text) to reuse across calls.
  """
  encode_image, encode_text = encoders or make_encoders(model)
  variables = {"params": state.params}
  kw = dict(batch_size=config.eval.batch_size, mesh=mesh)
  images = inference.batched_apply(encode_image, variables, (features,),
                                   desc="embed images", **kw)["x"]
  captions = inference.batched_apply(encode_text, variables, (ids, lengths),
                                     desc="embed captions", **kw)["x"]
  return images, captions


def make_encoders(model):
  return (jax.jit(lambda v, f: {"x": model.apply(v, f, method="encode_image")}),
          jax.jit(lambda v, i, n: {"x": model.apply(v, i, n,
                                                    method="encode_text")}))


def _eval_inputs(config, meta, backbone: Backbone, split: str, limit=None):
  """(CaptionSplit, features, ids, lengths) of a split, with the training
  split's statistics and vocabulary from `meta`."""
  ds = backbone.load_split(split)
  features = backbone.features(ds, meta.features_kind, meta.fne_stats)
  ids, lengths = _encode_captions(config, meta.vocabulary, ds)
  if limit:
    features = features[:limit]
    ids = ids[:limit * ds.captions_per_image]
    lengths = lengths[:limit * ds.captions_per_image]
  return ds, features, ids, lengths


def make_validation(config, meta, model, backbone, mesh):
  """Cross-modal metrics (rsum for model selection) of the first
  config.val_size images of config.val_split, every config.eval_every steps."""
  if not config.eval_every:
    return None
  ds, features, ids, lengths = _eval_inputs(config, meta, backbone,
                                            config.val_split, config.val_size)
  encoders = make_encoders(model)

  def validate(state):
    images, captions = embed_split(config, model, state, features, ids,
                                   lengths, mesh, encoders=encoders)
    return metrics_lib.crossmodal_metrics(
        images, captions, captions_per_image=ds.captions_per_image)
  return validate


def build(config, mesh, tx) -> Task:
  """The config is valid (metricjax.config_check.validate)."""
  parallel.check_divisible(config.batch_size, mesh, "config.batch_size")
  backbone = Backbone(config, mesh)
  train = backbone.load_split(config.train_split)
  n, per_image = len(train), train.captions_per_image
  if config.batch_size > n:
    raise UserError(f"config.batch_size={config.batch_size} is more than the "
                    f"{n} training images.")
  vocab = Vocabulary.build(train.captions, min_count=config.vocab_min_count)
  stats = None
  if config.image_features == "fne":
    stats = fne.fit_fne_stats(backbone.features(train, "fne_raw"))
  features = np.asarray(backbone.features(train, config.image_features, stats))
  meta = Meta(
      dataset=dict(name=train.name, source=train.source,
                   split=config.train_split, size=n,
                   captions_per_image=per_image),
      backbone=backbone.describe(), features_kind=config.image_features,
      features_dim=int(features.shape[1]), vocabulary=vocab, fne_stats=stats)
  model, init = make_model_and_init(config, meta, tx)
  ids, lengths = _encode_captions(config, vocab, train)
  data = parallel.replicate(DeviceData(
      features=features, ids=ids.reshape(n, per_image, -1),
      lengths=lengths.reshape(n, per_image)), mesh)
  return Task(meta=meta, model=model, init=init,
              sample=make_sample(config, mesh), loss=make_loss(config, model),
              data=data, examples_per_step=config.batch_size, epoch_size=n,
              validate=make_validation(config, meta, model, backbone, mesh))


def evaluate(config, meta: dict, model, state, split: str, mesh):
  # The absolute path recorded at training: the config's may be relative.
  backbone = Backbone(config, mesh, meta.backbone["weights"])
  if _sha256(backbone.path) != meta.backbone["sha256"]:
    raise UserError(f"{backbone.path} is not the backbone this model was "
                    "trained on (its contents changed); its features would "
                    "not match the model.")
  ds, features, ids, lengths = _eval_inputs(config, meta, backbone, split)
  images, captions = embed_split(config, model, state, features, ids, lengths,
                                 mesh)
  metrics = metrics_lib.crossmodal_metrics(
      images, captions, captions_per_image=ds.captions_per_image)
  if len(ds) == 5000:  # COCO 5K; "COCO 1K" averages its 5 folds.
    metrics.update({f"coco1k_{k}": v for k, v in metrics_lib.coco_1k_5fold(
        images, captions, captions_per_image=ds.captions_per_image).items()})
  dataset = dict(name=ds.name, source=ds.source, eval_split=split,
                 split_sizes={meta.dataset["split"]: meta.dataset["size"],
                              split: len(ds)},
                 captions_per_image=ds.captions_per_image,
                 image_features=meta.features_kind,
                 feature_dim=meta.features_dim,
                 vocabulary_size=len(meta.vocabulary))
  return metrics, dataset

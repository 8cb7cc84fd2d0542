"""A task from shapes alone, to compile its programs for a machine that is
not this one (metricjax.aot): the same model, loss, sampler and training
step as tasks/retrieval.build and tasks/vse.build, over abstract data (no
image read, no parameter allocated, no backbone run).

Retrieval: the training split's size, classes and image shape come from
DATASETS (the splits as the field distributes them); a photo benchmark's
images are streamed at config.image_size. VSE: CAPTION_DATASETS' Karpathy
training splits, VGG16's feature widths (FNE 12,416, fc7 4,096) and a
vocabulary of VOCABULARY_SIZE words (VSE++'s vocabularies are 8,481 words
for Flickr30k and 11,355 for COCO; the size only changes the word table,
300 floats a word).
"""

import dataclasses

import jax
import numpy as np

from metricjax import data as data_lib
from metricjax import losses
from metricjax import parallel
from metricjax import text
from metricjax.errors import UserError
from metricjax.tasks import retrieval
from metricjax.tasks import vse
from metricjax.tasks.task import Task


@dataclasses.dataclass(frozen=True)
class SplitShape:
  size: int  # Training examples.
  num_classes: int
  image_shape: tuple[int, int, int] | None  # None: a photo benchmark.


# The training splits: MNIST / Fashion-MNIST 60k 28x28 grey, CIFAR-10 50k
# 32x32 colour; the photo benchmarks' class-disjoint training halves (CUB
# 5,864 images of 100 classes, Cars196 8,054 of 98, SOP 59,551 of 11,318,
# In-Shop 25,882 of 3,997), their images decoded at config.image_size.
DATASETS = {
    "mnist": SplitShape(60000, 10, (28, 28, 1)),
    "fashion_mnist": SplitShape(60000, 10, (28, 28, 1)),
    "cifar10": SplitShape(50000, 10, (32, 32, 3)),
    "cub": SplitShape(5864, 100, None),
    "cars196": SplitShape(8054, 98, None),
    "sop": SplitShape(59551, 11318, None),
    "inshop": SplitShape(25882, 3997, None),
}


# Karpathy training splits: images, captions per image.
CAPTION_DATASETS = {"flickr8k": (6000, 5), "flickr30k": (29000, 5),
                    "coco": (113287, 5)}
VGG16_FEATURES = {"fne": 12416, "fc7": 4096}
VOCABULARY_SIZE = 10000


def split_shape(config) -> SplitShape:
  name = config.dataset.strip().lower().replace("-", "_")
  if name not in DATASETS:
    raise UserError(
        f"config.dataset={config.dataset!r}: compiling without the data "
        f"needs its shapes, known for {', '.join(DATASETS)}. Compile with "
        "one of those of the same image size and classes (only shapes "
        "matter), e.g. --config.dataset=cub for a photo collection.")
  return DATASETS[name]


def image_shape(config) -> tuple[int, int, int]:
  shape = split_shape(config)
  return shape.image_shape or (config.image_size, config.image_size, 3)


def build(config, mesh, tx) -> Task:
  """The Task of `config` over abstract data on `mesh`."""
  if config.task == "vse":
    return _build_vse(config, mesh, tx)
  if config.task != "retrieval":
    raise UserError(f"config.task={config.task!r}: compiling from shapes "
                    "alone is available for the retrieval and vse tasks.")
  parallel.check_divisible(config.batch_size, mesh, "config.batch_size")
  shape = split_shape(config)
  loss = losses.get_loss(config.loss.name)
  held_out = (config.val_size if config.eval_every
              and shape.image_shape else 0)
  size = shape.size - held_out
  meta = retrieval.Meta(
      name=config.dataset, source="shapes", split=config.train_split,
      size=size, num_classes=shape.num_classes,
      class_names=tuple(map(str, range(shape.num_classes))),
      image_shape=image_shape(config))
  model, init = retrieval.make_model_and_init(config, meta, tx)
  examples = retrieval.images_per_step(config)
  common = dict(meta=meta, model=model, init=init, epoch_size=size,
                loss=retrieval.make_loss(config, model, loss),
                examples_per_step=examples)
  retrieval._make_index_sampler(  # pylint: disable=protected-access
      config, loss, shape.num_classes)  # Checks the batch shape.
  if _streamed(config, shape, size):
    parallel.check_divisible(examples, mesh, "config.batch_size")
    batch = {"images": jax.ShapeDtypeStruct((examples, *meta.image_shape),
                                            np.uint8),
             "labels": jax.ShapeDtypeStruct((examples,), np.int32)}
    return Task(sample=retrieval.make_stream_sample(config),
                data=placed(batch, parallel.batch_sharding(mesh)),
                stream=lambda start: iter(()), **common)
  per_class = -(-size // shape.num_classes)
  data = retrieval.DeviceData(
      images=jax.ShapeDtypeStruct((size, *meta.image_shape), np.uint8),
      labels=jax.ShapeDtypeStruct((size,), np.int32),
      class_index=data_lib.ClassIndex(
          members=jax.ShapeDtypeStruct((shape.num_classes, per_class),
                                       np.int32),
          counts=jax.ShapeDtypeStruct((shape.num_classes,), np.int32),
          num_nonempty=shape.num_classes, num_examples=size))
  return Task(sample=retrieval.make_sample(config, loss, mesh,
                                           shape.num_classes),
              data=placed(data, parallel.replicated(mesh)), **common)


def _build_vse(config, mesh, tx) -> Task:
  parallel.check_divisible(config.batch_size, mesh, "config.batch_size")
  if config.dataset not in CAPTION_DATASETS:
    raise UserError(
        f"config.dataset={config.dataset!r}: compiling without the data "
        f"needs its shapes, known for {', '.join(CAPTION_DATASETS)}.")
  if config.backbone.name != "vgg16":
    raise UserError("Compiling from shapes alone knows VGG16's feature "
                    "widths; set config.backbone.name=vgg16.")
  size, per_image = CAPTION_DATASETS[config.dataset]
  words = (text.PAD, text.UNK) + tuple(
      f"w{i}" for i in range(VOCABULARY_SIZE - 2))
  meta = vse.Meta(
      dataset=dict(name=config.dataset, source="shapes",
                   split=config.train_split, size=size,
                   captions_per_image=per_image),
      backbone=dict(name="vgg16"), features_kind=config.image_features,
      features_dim=VGG16_FEATURES[config.image_features],
      vocabulary=text.Vocabulary(words), fne_stats=None)
  model, init = vse.make_model_and_init(config, meta, tx)
  length = config.max_caption_length
  data = vse.DeviceData(
      features=jax.ShapeDtypeStruct(
          (size, meta.features_dim),
          np.int8 if config.image_features == "fne" else np.float32),
      ids=jax.ShapeDtypeStruct((size, per_image, length), np.int32),
      lengths=jax.ShapeDtypeStruct((size, per_image), np.int32))
  return Task(meta=meta, model=model, init=init,
              sample=vse.make_sample(config, mesh),
              loss=vse.make_loss(config, model),
              data=placed(data, parallel.replicated(mesh)),
              examples_per_step=config.batch_size, epoch_size=size)


def _streamed(config, shape: SplitShape, size: int) -> bool:
  """retrieval.placement's choice, from the split's shape."""
  if shape.image_shape is None:
    return True
  chosen = config.data.placement
  if chosen == "auto":
    budget = config.data.device_budget_mb * 2**20
    return size * int(np.prod(shape.image_shape)) > budget
  return chosen == "stream"


def placed(tree, sharding):
  """Abstract arrays (anything with shape and dtype) carrying `sharding`."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)

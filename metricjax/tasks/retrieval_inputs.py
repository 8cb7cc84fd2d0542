"""How the retrieval task reads a split's images, by the split's kind
(its `pipeline`):

  arrays  ArrayDataset / PackedDataset: same-size uint8 rows, kept on the
          devices or streamed by rows (config.data.placement), validated
          on config.val_size held-out examples;
  photos  PhotoDataset (the photo benchmarks, csv:): files of any size,
          always streamed, decoded into views on the host
          (data/photo_pipeline.py: RandomResizedCrop + flip for training,
          resize + centre crop for evaluation), validated as the field
          does on held-out classes (config.data.val_classes).

tasks/retrieval.py asks the kind of its split (`of(ds)`) and never which
one it has.
"""

import numpy as np

from metricjax import data as data_lib
from metricjax import inference
from metricjax import losses
from metricjax.data import photo_pipeline
from metricjax.data import stream as stream_lib
from metricjax.errors import UserError


def load(config, split: str):
  """Split `split` of config.dataset."""
  return data_lib.load_dataset(config.dataset, split,
                               boxes=config.data.boxes)


class Arrays:
  """Same-size images read by rows."""
  counts_skipped = False  # Every row decodes (or the split failed to load).

  def check(self, config, ds, *, val_size, val_classes) -> None:
    del val_size
    if val_classes:
      raise UserError(
          f"config.data.val_classes holds out classes of the photo "
          f"benchmarks; {ds.name} validates on config.val_size held-out "
          "examples: set config.data.val_classes=0.")

  def placement(self, config, ds) -> str:
    """"auto" chooses by the split's size against
    config.data.device_budget_mb (the dataset is replicated, so it costs
    its size on every device)."""
    chosen = config.data.placement
    if chosen == "auto":
      budget = config.data.device_budget_mb * 2**20
      chosen = "device" if ds.nbytes <= budget else "stream"
    return chosen

  def image_shape(self, config, ds) -> tuple[int, int, int]:
    del config
    return ds.image_shape

  def train_batches(self, config, ds, sample_indices, *, start: int,
                    batch_size: int):
    """Host batches of the steps after `start` (stream.host_batches)."""
    del batch_size  # sample_indices draws it.
    return stream_lib.host_batches(
        ds, sample_indices, seed=config.seed, start_step=start,
        total_steps=config.total_steps)

  def embed(self, config, apply, variables, ds, mesh, desc: str):
    """(outputs, rows kept): every row's outputs."""
    outputs = inference.batched_apply(
        apply, variables, (ds.images,), mesh=mesh,
        batch_size=config.eval.batch_size, desc=desc)
    return outputs, np.ones(len(ds), bool)


class Photos:
  """Photos decoded into fixed-size views by the host pipeline."""
  counts_skipped = True  # config.data.skip_corrupt leaves rows out.

  def check(self, config, ds, *, val_size, val_classes) -> None:
    """Photo benchmarks validate on held-out classes; imbalance and the
    device's pad-crop-flip are for fixed-size images; the host pipeline
    makes one view per image (no "views" loss)."""
    if config.imbalance.classes:
      raise UserError(f"{ds.name} is a photo benchmark: config.imbalance is "
                      "not available for it; drop config.imbalance.")
    if val_size:
      raise UserError(
          f"{ds.name} is a photo benchmark, validated as the field does on "
          "classes held out of the training classes (config.data."
          "val_classes), not on held-out images of the training classes: "
          "set config.val_size=0.")
    if losses.get_loss(config.loss.name).input == "views":
      raise UserError(
          f"Loss {config.loss.name!r} (config.loss.name) trains on two "
          f"augmented views of each image; {ds.name}'s host pipeline decodes "
          "one view per image, so it cannot train this loss yet. Use a "
          "packed dataset (fixed-size images, config.augment=True) or "
          "another loss.")
    if config.augment:
      raise UserError("config.augment (pad-crop-flip on the device) is for "
                      f"fixed-size images; {ds.name}'s views are augmented "
                      "on the host (RandomResizedCrop + flip): set "
                      "config.augment=False.")

  def placement(self, config, ds) -> str:
    if config.data.placement == "device":
      raise UserError(f"{ds.name} is a photo collection decoded on the host "
                      "(variable sizes): config.data.placement must be "
                      "stream or auto.")
    return "stream"

  def image_shape(self, config, ds) -> tuple[int, int, int]:
    del ds
    return (config.image_size,) * 2 + (3,)

  def train_batches(self, config, ds, sample_indices, *, start: int,
                    batch_size: int):
    """The host pipeline's training views (augmented there)."""
    data = config.data
    return photo_pipeline.train_batches(
        ds, sample_indices, photo_pipeline.view_from_config(config, train=True),
        seed=config.seed, start_step=start, total_steps=config.total_steps,
        batch_size=batch_size, skip_corrupt=data.skip_corrupt,
        num_threads=data.num_threads, prefetch=data.prefetch,
        workers=data.workers)

  def embed(self, config, apply, variables, ds, mesh, desc: str):
    """(outputs, rows kept): the evaluation views' outputs (decoded batch
    by batch), and all rows but skipped corrupt images."""
    data = config.data
    images = photo_pipeline.DecodedSplit(
        ds, photo_pipeline.view_from_config(config, train=False),
        batch_size=config.eval.batch_size, skip_corrupt=data.skip_corrupt,
        num_threads=data.num_threads, prefetch=data.prefetch)
    outputs = inference.batched_apply(
        apply, variables, (images,), mesh=mesh,
        batch_size=config.eval.batch_size, desc=desc)
    keep = np.ones(len(ds), bool)
    keep[images.skipped_rows] = False
    return outputs, keep


KINDS = {"arrays": Arrays(), "photos": Photos()}


def of(ds):
  """The kind of split `ds` (a data.LabelledSplit)."""
  return KINDS[ds.pipeline]

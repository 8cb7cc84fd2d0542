"""The host pipeline of the photo benchmarks: bytes -> fixed-size uint8 views.

Training view: torchvision's RandomResizedCrop(size, scale, ratio) and a
horizontal flip, with the same sampling rule (10 tries of area and log
aspect ratio, then a centre crop at the nearest allowed ratio).
Evaluation view: resize the shorter side to `resize` and take the centre
`size` x `size` crop (224 / 256 by default). Both are one Pillow resize of a
box of the source image (bilinear, antialiased like torchvision's PIL
path), after an optional bounding-box crop. JPEGs are decoded at a reduced
DCT scale (Pillow's `draft`: 1/2, 1/4 or 1/8) whenever the box, so reduced,
still has at least `size` pixels each way: the resize would throw those
pixels away anyway (tools/bench_images.py measures what it saves).

Views stay uint8 on the host; normalisation happens on the device (the
model's first op), so a batch crosses to the devices at a quarter of the
float32 size.

Batches are grain pipelines over single images (grain's threads decode in
parallel: Pillow releases the GIL while it decodes and resamples), then
batched. The training stream is a pure function of (seed, step): step s's
example indices come from the training sampler of data/samplers.py run on
the host's CPU (HostSampler: the indices the on-device sampler draws for
that step), its crops from the numpy generator of (seed, s, 1), for the
global batch, so every process draws the same and reads only its own rows,
and a resumed run reads exactly the batches an uninterrupted one reads. At
most `prefetch` decoded images wait in the pipeline, whatever the split's
size.
"""

import dataclasses
import math
import threading

from absl import flags
from absl import logging
import jax
import numpy as np

from metricjax.data import decode
from metricjax.data.samplers import host_only_worker_init
from metricjax.errors import UserError

# (area scale, aspect ratio) uniforms drawn per example and try.
_TRIES = 10


@dataclasses.dataclass(frozen=True)
class View:
  """How an image becomes a (size, size, 3) uint8 array."""
  size: int = 224
  train: bool = False
  resize: int = 256  # Evaluation: the shorter side before the centre crop.
  scale: tuple[float, float] = (0.16, 1.0)
  ratio: tuple[float, float] = (3 / 4, 4 / 3)
  flip: bool = True
  draft: bool = True  # Reduced-DCT JPEG decoding when it loses nothing.


def view_from_config(config, *, train: bool) -> View:
  data = config.data
  size = int(config.image_size)
  return View(size=size, train=train,
              resize=int(data.eval_resize or round(size * 256 / 224)),
              scale=tuple(data.crop_scale), ratio=tuple(data.crop_ratio),
              flip=data.flip, draft=data.draft)


def crop_draws(rng: np.random.Generator, n: int) -> np.ndarray:
  """float64 (n, TRIES * 4 + 1): the uniforms of n training views."""
  return rng.random((n, _TRIES * 4 + 1))


def random_resized_crop(width: int, height: int, u: np.ndarray, scale,
                        ratio) -> tuple[int, int, int, int]:
  """(x, y, w, h) of torchvision's RandomResizedCrop.get_params, driven by
  the uniforms u (one row of crop_draws) instead of torch's generator."""
  area = width * height
  u = u[:_TRIES * 4].reshape(_TRIES, 4)
  target = area * (scale[0] + u[:, 0] * (scale[1] - scale[0]))
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  aspect = np.exp(log_lo + u[:, 1] * (log_hi - log_lo))
  ws = np.round(np.sqrt(target * aspect)).astype(np.int64)
  hs = np.round(np.sqrt(target / aspect)).astype(np.int64)
  fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
  if fits.any():
    t = int(np.argmax(fits))
    w, h = int(ws[t]), int(hs[t])
    y = int(u[t, 2] * (height - h + 1))
    x = int(u[t, 3] * (width - w + 1))
    return x, y, w, h
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    w, h = int(round(height * max(ratio))), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def centre_crop(width: int, height: int, view: View):
  """(x, y, w, h) of the source box that resize-shorter-side + centre crop
  maps onto the view."""
  side = min(width, height) * view.size / view.resize
  side = min(side, width, height)
  return (width - side) / 2, (height - side) / 2, side, side


def decode_view(data: bytes, view: View, *, box=None, draws=None,
                where: str = "image") -> np.ndarray:
  """Encoded image -> uint8 (size, size, 3) RGB view.

  Args:
    data: JPEG, PNG, ... bytes (grayscale, palette, CMYK, alpha: all RGB).
    view: the view's parameters.
    box: (x1, y1, x2, y2) region of the image the view is taken from.
    draws: one row of crop_draws (training views); the last value decides
      the flip.
    where: the file, for errors.
  """

  def region(width, height):
    x0, y0, x1, y1 = 0.0, 0.0, float(width), float(height)
    if box is not None:
      x0, y0 = max(0.0, float(box[0])), max(0.0, float(box[1]))
      x1, y1 = min(float(width), float(box[2])), min(float(height), float(box[3]))
      if x1 - x0 < 1 or y1 - y0 < 1:
        x0, y0, x1, y1 = 0.0, 0.0, float(width), float(height)
    rw, rh = int(round(x1 - x0)), int(round(y1 - y0))
    if view.train:
      x, y, w, h = random_resized_crop(rw, rh, draws, view.scale, view.ratio)
    else:
      x, y, w, h = centre_crop(rw, rh, view)
    return (x0 + x, y0 + y, x0 + x + w, y0 + y + h), (view.size, view.size)

  array = decode.decode_image(data, where, region=region, draft=view.draft,
                              advice=SKIP_ADVICE)
  if view.train and view.flip and draws[-1] < 0.5:
    array = array[:, ::-1]
  return array


SKIP_ADVICE = (
    "Replace or delete the file (and its line in the split file), or set "
    "config.data.skip_corrupt=True to skip such images and count them.")
# What a reader raises for an image it cannot decode (the file in `where`).
CorruptImage = decode.CorruptImage


class SkipCounter:
  """The corrupt images found so far (thread-safe), each logged once; a
  known one is skipped without decoding it again."""

  def __init__(self):
    self._lock, self.paths = threading.Lock(), set()

  def add(self, where: str) -> None:
    with self._lock:
      if where not in self.paths:
        self.paths.add(where)
        logging.warning("Skipping corrupt image %s (%d corrupt images so "
                        "far).", where, len(self.paths))

  def __getstate__(self):  # Sent to grain's worker processes.
    return {"paths": set(self.paths)}

  def __setstate__(self, state):
    self._lock, self.paths = threading.Lock(), state["paths"]

  def __contains__(self, where: str) -> bool:
    return where in self.paths

  def __len__(self) -> int:
    return len(self.paths)


def read_view(ds, i: int, view: View, draws=None) -> np.ndarray:
  return decode_view(ds.read(i), view, box=ds.box(i), draws=draws,
                     where=ds.path(i))


def train_batches(ds, sample_indices, view: View, *, seed: int,
                  start_step: int, total_steps: int, batch_size: int,
                  skip_corrupt: bool = False,
                  skipped: SkipCounter | None = None, num_threads: int = 8,
                  prefetch: int = 256, workers: int = 0):
  """Iterator of this process's rows of the batches of steps start_step + 1
  .. total_steps, as numpy {"images": uint8 (b, S, S, 3), "labels"}.

  sample_indices: (seed, step) -> the global batch's example indices
  (samplers.HostSampler), step counted from 0 as the train state does.

  A corrupt image, with skip_corrupt, is replaced by the next row of its
  batch with the same label (another view of the same class: the batch
  keeps its P x K shape) and counted in `skipped` (with workers > 0, in
  each worker's copy: only the log shows them).

  workers > 0 decodes whole batches in that many processes (grain's
  mp_prefetch) instead of images in num_threads threads of this one.
  """
  import grain  # pylint: disable=g-import-not-at-top
  num_processes, index = jax.process_count(), jax.process_index()
  if batch_size % num_processes:
    raise UserError(f"batch_size={batch_size} is not divisible by the "
                    f"{num_processes} processes.")
  local = batch_size // num_processes
  skipped = skipped if skipped is not None else SkipCounter()

  plans = {}  # step -> its rows and draws; a dict pickles (workers > 0).

  def plan(step):
    if step not in plans:
      rows = sample_indices(seed, step)
      draws = crop_draws(np.random.default_rng((seed, step + 1, 1)),
                         len(rows))
      part = slice(index * local, (index + 1) * local)
      if len(plans) > 64:
        plans.clear()
      plans[step] = rows[part], draws[part]
    return plans[step]

  def read(element):
    step, position = divmod(int(element), local)
    rows, draws = plan(step)
    label = ds.labels[rows[position]]
    order = [position] + [p for p in range(local) if p != position
                          and ds.labels[rows[p]] == label]
    for p in order if skip_corrupt else order[:1]:
      if skip_corrupt and ds.path(int(rows[p])) in skipped:
        continue
      try:
        image = read_view(ds, int(rows[p]), view, draws[position])
        break
      except CorruptImage as e:
        if not skip_corrupt:
          raise
        skipped.add(e.where)
    else:
      raise UserError(f"Every image of class {ds.class_names[label]!r} in the "
                      f"batch of step {step + 1} is corrupt (skip_corrupt "
                      "only replaces an image by another of its class).")
    return {"images": image, "labels": np.int32(label)}

  if workers:
    # Whole batches per element: grain shards a pipeline's elements over
    # its worker processes, and an image-level shard would mix steps.
    # grain's workers read absl flags; outside a CLI, take their defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    read_batch = lambda step: _stack([read(step * local + p)
                                      for p in range(local)])
    return grain.MapDataset.range(start_step, total_steps).map(
        read_batch).to_iter_dataset(grain.ReadOptions(
            num_threads=1, prefetch_buffer_size=1)).mp_prefetch(
                grain.MultiprocessingOptions(num_workers=workers),
                worker_init_fn=host_only_worker_init)
  batches = grain.MapDataset.range(
      start_step * local, total_steps * local).map(read).to_iter_dataset(
          grain.ReadOptions(num_threads=num_threads,
                            prefetch_buffer_size=prefetch)).batch(
                                local, drop_remainder=True)
  return batches


def _stack(examples):
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


class DecodedSplit:
  """The evaluation views of a PhotoDataset as a lazy array (N, S, S, 3):
  slices are decoded on demand, and consecutive slices of `batch_size`
  rows (what inference.iterate_batches asks for) come from a grain
  pipeline that decodes ahead. With skip_corrupt, a corrupt image is a
  black view whose row lands in `skipped_rows` (to drop from the metrics).
  """

  def __init__(self, ds, view: View, *, batch_size: int,
               skip_corrupt: bool = False, num_threads: int = 8,
               prefetch: int = 256):
    self._ds, self._view, self._batch_size = ds, view, batch_size
    self._skip = skip_corrupt
    self.shape = (len(ds), view.size, view.size, 3)
    self.dtype = np.dtype(np.uint8)
    self.skipped_rows: list[int] = []
    self._threads, self._prefetch = num_threads, prefetch
    self._iterator, self._next = None, None

  def __len__(self) -> int:
    return self.shape[0]

  def _one(self, i: int):
    try:
      return read_view(self._ds, i, self._view)
    except CorruptImage:
      if not self._skip:
        raise
      self.skipped_rows.append(i)
      logging.warning("Skipped corrupt image %s.", self._ds.path(i))
      return np.zeros(self.shape[1:], np.uint8)

  def _batches(self, start: int):
    import grain  # pylint: disable=g-import-not-at-top
    return iter(grain.MapDataset.range(start, len(self)).map(
        self._one).to_iter_dataset(grain.ReadOptions(
            num_threads=self._threads, prefetch_buffer_size=self._prefetch)
        ).batch(self._batch_size, drop_remainder=False))

  def __getitem__(self, index):
    if not isinstance(index, slice):
      return self._one(int(index))
    start, stop, stride = index.indices(len(self))
    if stride != 1:
      return np.stack([self._one(i) for i in range(start, stop, stride)])
    if stop - start == min(self._batch_size, len(self) - start):
      if self._next != start:
        self._iterator = self._batches(start)
      self._next = stop
      return next(self._iterator)
    return np.stack([self._one(i) for i in range(start, stop)])

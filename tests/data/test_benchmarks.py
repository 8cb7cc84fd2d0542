"""The photo benchmarks' readers on replicas of their official files, and
the host pipeline's views and batches."""

import io

import jax
import numpy as np
from PIL import Image
import pytest

import replicas
from metricjax import data as data_lib
from metricjax import losses
from metricjax import parallel
from metricjax.data import Dataset
from metricjax.data import LabelledSplit
from metricjax.data import load_dataset
from metricjax.data import photo_pipeline as pp
from metricjax.data.photos import PhotoDataset
from metricjax.data.samplers import HostSampler
from metricjax.errors import UserError
from metricjax.tasks import retrieval
from helpers import load_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("benchmarks"))
  replicas.make_cub(d)
  replicas.make_cars196(d)
  replicas.make_sop(d)
  replicas.make_inshop(d)
  replicas.make_csv(d)
  return d


def _both(name, data_dir, **kw):
  return [load_dataset(name, s, data_dir=data_dir, **kw)
          for s in ("train", "test")]


def _check_disjoint(train, test):
  assert isinstance(train, PhotoDataset)
  assert not set(train.class_names) & set(test.class_names)
  for ds in (train, test):
    assert ds.labels.dtype == np.int32
    assert set(np.unique(ds.labels)) == set(range(ds.num_classes))


def test_cub_class_halves_and_boxes(data_dir):
  train, test = _both("cub", data_dir, boxes=True)
  _check_disjoint(train, test)
  assert train.num_classes == test.num_classes == 100
  assert train.class_names[0] == "001.Bird_1"
  assert test.class_names[0] == "101.Bird_101"
  # Classes 3, 6, ... hold 3 images in the replica, the others 2.
  assert len(train) == len(test) == 100 * 2 + 33
  assert train.ids[0] == "images/001.Bird_1/Bird_1_0000_1.jpg"
  # bounding_boxes.txt is x y w h; boxes are x1 y1 x2 y2.
  with Image.open(train.path(0)) as im:
    w, h = im.size
  np.testing.assert_allclose(train.boxes[0],
                             [w * .1, h * .2, w * .8, h * .8], atol=0.06)
  assert load_dataset("cub", "train", data_dir=data_dir).boxes is None
  # A lazy split meets the protocol every source's split meets, without
  # images to read by rows.
  assert isinstance(train, LabelledSplit)
  assert not isinstance(train, Dataset)


def test_cars196_mat_struct(data_dir):
  train, test = _both("cars196", data_dir)
  _check_disjoint(train, test)
  assert train.num_classes == test.num_classes == 98
  assert test.class_names[0] == "Maker Model 99 2012"
  assert train.ids[0] == "car_ims/000001.jpg" and len(train) == 196
  boxed = load_dataset("cars196", "test", data_dir=data_dir, boxes=True)
  assert boxed.boxes.shape == (196, 4) and (boxed.boxes[:, 2] > 0).all()


def test_sop_split_files(data_dir):
  train, test = _both("sop", data_dir)
  _check_disjoint(train, test)
  assert train.num_classes == 6 and train.class_names[0] == "bicycle_final/1"
  assert train.ids[0] == "bicycle_final/100001_0.JPG"


def test_inshop_query_gallery(data_dir):
  train, test = _both("inshop", data_dir)
  _check_disjoint(train, test)
  assert train.is_query is None
  assert test.is_query.sum() == 5 and test.is_gallery.sum() == 10
  assert not (test.is_query & test.is_gallery).any()
  # Query and gallery share the item labels.
  assert set(test.labels[test.is_query]) == set(test.labels[test.is_gallery])


def test_csv_catalogue(data_dir):
  spec = f"csv:{data_dir}/catalogue.csv"
  train, test = _both(spec, data_dir)
  _check_disjoint(train, test)
  assert test.name == "catalogue" and test.class_names[0] == "class_3"
  assert test.is_query.sum() == 3 and test.boxes.shape == (9, 4)


def test_missing_benchmark_says_where_and_how(tmp_path):
  with pytest.raises(UserError) as e:
    load_dataset("sop", "train", data_dir=str(tmp_path))
  text = str(e.value)
  assert str(tmp_path / "Stanford_Online_Products" / "Ebay_train.txt") in text
  assert "cvgl.stanford.edu" in text


def _jpeg(array, mode="RGB", fmt="JPEG"):
  buf = io.BytesIO()
  Image.fromarray(array).convert(mode).save(buf, fmt)
  return buf.getvalue()


@pytest.mark.parametrize("mode,fmt", [("RGB", "JPEG"), ("L", "JPEG"),
                                      ("CMYK", "JPEG"), ("RGBA", "PNG"),
                                      ("P", "PNG")])
def test_every_mode_decodes_to_rgb(mode, fmt):
  rng = np.random.default_rng(0)
  data = _jpeg(rng.integers(0, 255, (50, 70, 3), np.uint8), mode, fmt)
  for view in (pp.View(size=16), pp.View(size=16, train=True)):
    out = pp.decode_view(data, view, draws=pp.crop_draws(rng, 1)[0])
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8


def test_eval_view_is_resize_then_centre_crop():
  rng = np.random.default_rng(1)
  array = rng.integers(0, 255, (60, 90, 3), np.uint8)
  array = np.asarray(Image.fromarray(array).resize((45, 30)).resize((90, 60)))
  data = _jpeg(array, fmt="PNG")
  view = pp.View(size=28, resize=32, draft=False)
  out = pp.decode_view(data, view).astype(float)
  # The reference: torchvision's Resize(32) + CenterCrop(28) on PIL.
  im = Image.open(io.BytesIO(data)).resize((48, 32), Image.BILINEAR)
  ref = np.asarray(im)[2:30, 10:38].astype(float)
  assert np.abs(out - ref).mean() < 6


def test_random_resized_crop_rule():
  rng = np.random.default_rng(2)
  for u in pp.crop_draws(rng, 500):
    x, y, w, h = pp.random_resized_crop(400, 300, u, (0.16, 1.0), (3 / 4, 4 / 3))
    assert 0 <= x and x + w <= 400 and 0 <= y and y + h <= 300
    assert 0.16 * 0.98 <= w * h / 120000 <= 1.0
    assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05
  # No try fits a 10:1 strip: the centre crop at the widest allowed ratio.
  x, y, w, h = pp.random_resized_crop(1000, 100, np.full(41, 0.999),
                                      (0.9, 1.0), (3 / 4, 4 / 3))
  assert (w, h) == (133, 100) and x == (1000 - 133) // 2


def test_draft_decoding_matches_full_decoding():
  rng = np.random.default_rng(3)
  yy, xx = np.mgrid[:480, :640]
  smooth = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8)
  data = _jpeg(smooth)
  draws = pp.crop_draws(rng, 1)[0]
  full = pp.decode_view(data, pp.View(size=64, draft=False))
  fast = pp.decode_view(data, pp.View(size=64, draft=True))
  assert np.abs(full.astype(float) - fast).mean() < 4
  full = pp.decode_view(data, pp.View(64, train=True, draft=False), draws=draws)
  fast = pp.decode_view(data, pp.View(64, train=True, draft=True), draws=draws)
  assert np.abs(full.astype(float) - fast).mean() < 4


def _sampler(ds, batch, k):
  return HostSampler.from_labels("balanced", ds.labels, ds.num_classes,
                                 batch_size=batch, samples_per_class=k)


def test_train_batches_are_p_by_k_and_a_function_of_seed_and_step(data_dir):
  ds = load_dataset("cub", "train", data_dir=data_dir)
  view = pp.View(size=16, train=True)
  run = lambda start: list(pp.train_batches(
      ds, _sampler(ds, 12, 4), view, seed=5, start_step=start,
      total_steps=4, batch_size=12, num_threads=2, prefetch=8))
  whole, resumed = run(0), run(2)
  assert len(whole) == 4 and len(resumed) == 2
  for a, b in zip(whole[2:], resumed):
    np.testing.assert_array_equal(a["images"], b["images"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
  batch = whole[0]
  assert batch["images"].shape == (12, 16, 16, 3)
  assert batch["images"].dtype == np.uint8
  labels = batch["labels"].reshape(3, 4)
  assert (labels == labels[:, :1]).all() and len(set(labels[:, 0])) == 3
  assert not np.array_equal(whole[0]["labels"], whole[1]["labels"])


class _NumberedPhotos:
  """Photos whose colour names them: image i is a flat (6 i, 0, 0)."""
  num_classes, size = 5, 40
  labels = np.arange(size, dtype=np.int32) % num_classes
  class_names = tuple("abcde")

  def read(self, i):
    buf = io.BytesIO()
    Image.fromarray(np.full((6, 9, 3), (6 * i, 0, 0), np.uint8)).save(buf, "PNG")
    return buf.getvalue()

  def box(self, i):
    return None

  def path(self, i):
    return f"{i}.png"


def test_train_batches_read_the_rows_the_device_sampler_draws():
  """The photo pipeline's index stream is the on-device sampler's: the
  batch of train state step s holds the rows tasks/retrieval.make_sample
  draws on the devices at step s (and so does a resumed stream)."""
  ds = _NumberedPhotos()
  config = load_config("compact_involution")
  config.update(batch_size=8, samples_per_class=2, augment=False, seed=3)
  mesh = parallel.create_mesh()
  sample = jax.jit(retrieval.make_sample(
      config, losses.get_loss(config.loss.name), mesh, ds.num_classes))
  device_data = parallel.replicate(retrieval.DeviceData(
      images=np.arange(ds.size, dtype=np.uint8).reshape(-1, 1, 1, 1),
      labels=ds.labels,
      class_index=data_lib.ClassIndex.from_labels(ds.labels, ds.num_classes)),
      mesh)
  seed_key = jax.random.key(config.seed)
  batches = list(pp.train_batches(
      ds, _sampler(ds, 8, 2), pp.View(size=4, train=True), seed=config.seed,
      start_step=1, total_steps=4, batch_size=8, num_threads=2, prefetch=8))
  assert len(batches) == 3
  for step, batch in zip((1, 2, 3), batches):
    on_devices = sample(data_lib.step_key(seed_key, step), device_data)
    rows = np.round(batch["images"][..., 0] / 6).astype(int)
    assert (rows == rows[:, :1, :1]).all()  # Flat views: one row each.
    np.testing.assert_array_equal(rows[:, 0, 0],
                                  np.asarray(on_devices["images"]).ravel())
    np.testing.assert_array_equal(batch["labels"], on_devices["labels"])


def test_decoded_split_serves_batches_in_order(data_dir):
  ds = load_dataset("sop", "test", data_dir=data_dir)
  images = pp.DecodedSplit(ds, pp.View(size=16), batch_size=8, num_threads=2)
  assert images.shape == (len(ds), 16, 16, 3)
  parts = [images[s:s + 8] for s in range(0, len(ds), 8)]
  direct = np.stack([pp.read_view(ds, i, pp.View(size=16))
                     for i in range(len(ds))])
  np.testing.assert_array_equal(np.concatenate(parts), direct)


@pytest.mark.slow  # Starts grain worker processes (~15 s).
def test_worker_processes_read_the_same_batches(data_dir):
  ds = load_dataset("sop", "train", data_dir=data_dir)
  run = lambda workers: list(pp.train_batches(
      ds, _sampler(ds, 8, 2), pp.View(size=16, train=True), seed=1,
      start_step=0, total_steps=3, batch_size=8, num_threads=2, prefetch=8,
      workers=workers))
  for a, b in zip(run(0), run(2), strict=True):
    np.testing.assert_array_equal(a["images"], b["images"])
    np.testing.assert_array_equal(a["labels"], b["labels"])

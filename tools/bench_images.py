r"""Training images/s of the photo pipeline against torchvision's DataLoader.

  PYTHONPATH=$PWD python tools/bench_images.py [--images=DIR] [--json]

On a folder DIR/CLASS/*.jpg (default: generated, --num_images JPEGs with
the entropy of real photographs: random crops, rescales to 300-500 px and
colour shifts of scikit-learn's two sample photographs, quality 90), in one
run, repetitions interleaved, medians:

  metricjax    data/photo_pipeline.train_batches (P x K batches,
               RandomResizedCrop + flip, uint8) through stream.device_batches
               onto the device, counted when the batch is ready there;
  torchvision  DataLoader(num_workers=2) of RandomResizedCrop +
               RandomHorizontalFlip + ToTensor + Normalize on PIL images
               (torchvision's own pure-Python transforms: its C++ ops do not
               load against torch's CPU build, so the package is entered
               without its __init__; torchvision.transforms needs none of
               them);
  limit        cores x the images/s of a bare single-core loop that only
               reads, decodes (full scale), crops and resizes the same files;
               the same loop with draft decoding is printed beside it.

--rss_sizes: peak RSS of a process that runs the pipeline over folders of
that many images (hard links to the generated files, so the disk holds one
copy; the pipeline opens each link as its own file).
"""

import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types

from absl import app
from absl import flags
import jax
import numpy as np
from PIL import Image

from metricjax import parallel
from metricjax.data import photo_pipeline as pp
from metricjax.data import stream
from metricjax.data.samplers import HostSampler
from metricjax.data.photos import photo_folder

flags.DEFINE_string("images", None, "DIR/CLASS/*.jpg (default: generated).")
flags.DEFINE_integer("num_images", 2000, "Images of the generated folder.")
flags.DEFINE_integer("classes", 100, "Classes of the generated folder.")
flags.DEFINE_integer("image_size", 224, "Training view size.")
flags.DEFINE_integer("batch_size", 64, "Images per batch (P x 4).")
flags.DEFINE_integer("batches", 15, "Batches per timed repetition.")
flags.DEFINE_integer("repeats", 3, "Interleaved repetitions (median).")
flags.DEFINE_integer("threads", 4, "grain decode threads.")
flags.DEFINE_list("rss_sizes", ["2000", "20000"], "Folder sizes for the "
                  "peak-RSS runs (empty: none).")
flags.DEFINE_integer("rss_child", 0, "Internal: run one RSS measurement.")
flags.DEFINE_bool("json", False, "Print one JSON line instead of the table.")
FLAGS = flags.FLAGS


def generate_folder(directory: str, n: int, classes: int, seed: int = 0):
  """n JPEGs (quality 90, 300-500 px) cut from the sample photographs."""
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  photos = [Image.fromarray(p) for p in load_sample_images().images]
  rng = np.random.default_rng(seed)
  for i in range(n):
    photo = photos[i % len(photos)]
    w, h = photo.size
    cw, ch = int(w * rng.uniform(0.4, 1)), int(h * rng.uniform(0.4, 1))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    side = int(rng.integers(300, 501))
    scale = side / max(cw, ch)
    im = photo.resize((max(1, round(cw * scale)), max(1, round(ch * scale))),
                      Image.BILINEAR, box=(x, y, x + cw, y + ch))
    gain = rng.uniform(0.7, 1.3, 3)
    pixels = np.clip(np.asarray(im, np.float32) * gain, 0, 255)
    path = os.path.join(directory, f"class_{i % classes:04d}", f"{i:06d}.jpg")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path, "JPEG", quality=90)


def link_folder(source_ds, directory: str, n: int):
  """n hard links cycling over source_ds's files, in its classes."""
  for i in range(n):
    src = source_ds.path(i % len(source_ds))
    rel = source_ds.ids[i % len(source_ds)]
    dst = os.path.join(directory, os.path.dirname(rel), f"{i:06d}.jpg")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    os.link(src, dst)


def metricjax_rate(ds, mesh, steps: int, start: int, workers: int = 0) -> float:
  sampler = HostSampler.from_labels(
      "balanced", ds.labels, ds.num_classes, batch_size=FLAGS.batch_size,
      samples_per_class=4)
  view = pp.View(size=FLAGS.image_size, train=True)
  batches = stream.device_batches(pp.train_batches(
      ds, sampler, view, seed=0, start_step=start,
      total_steps=start + steps + 2, batch_size=FLAGS.batch_size,
      num_threads=FLAGS.threads, prefetch=2 * FLAGS.batch_size,
      workers=workers), mesh)
  for _ in range(2):  # The pipeline's start-up is not its rate.
    jax.block_until_ready(next(batches))
  t = time.perf_counter()
  for batch in batches:
    jax.block_until_ready(batch)
  return steps * FLAGS.batch_size / (time.perf_counter() - t)


def import_torchvision_transforms():
  """torchvision.transforms without torchvision/__init__.py (which loads
  the C++ ops, absent here for torch's CPU build)."""
  spec = importlib.util.find_spec("torchvision")
  if spec is None:
    return None
  if "torchvision" not in sys.modules:
    package = types.ModuleType("torchvision")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["torchvision"] = package
  import torchvision.transforms as transforms  # pylint: disable=g-import-not-at-top
  return transforms


class _Files:
  """A torch map-style dataset of (transformed image, label)."""

  def __init__(self, ds, transform):
    self.ds, self.transform = ds, transform

  def __len__(self):
    return len(self.ds)

  def __getitem__(self, i):
    with Image.open(self.ds.path(i)) as im:
      return self.transform(im.convert("RGB")), int(self.ds.labels[i])


def torchvision_rate(ds, transforms, steps: int) -> float:
  import torch  # pylint: disable=g-import-not-at-top
  transform = transforms.Compose([
      transforms.RandomResizedCrop(FLAGS.image_size),
      transforms.RandomHorizontalFlip(), transforms.ToTensor(),
      transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
  files = _Files(ds, transform)
  # Shuffled, and as many batches as asked whatever the folder's size.
  sampler = torch.utils.data.RandomSampler(
      files, replacement=True, num_samples=(steps + 2) * FLAGS.batch_size)
  loader = torch.utils.data.DataLoader(
      files, batch_size=FLAGS.batch_size, sampler=sampler, num_workers=2,
      drop_last=True)
  it = iter(loader)
  for _ in range(2):
    next(it)
  t = time.perf_counter()
  for _ in range(steps):
    next(it)
  rate = steps * FLAGS.batch_size / (time.perf_counter() - t)
  del it
  return rate


def bare_rate(ds, n: int, draft: bool) -> float:
  """One core: read, decode, RandomResizedCrop box, resize; nothing else."""
  view = pp.View(size=FLAGS.image_size, train=True, flip=False, draft=draft)
  draws = pp.crop_draws(np.random.default_rng(1), n)
  rows = np.random.default_rng(2).choice(len(ds), n, replace=n > len(ds))
  t = time.perf_counter()
  for u, i in zip(draws, rows):
    pp.read_view(ds, int(i), view, u)
  return n / (time.perf_counter() - t)


def rss_child(images: str, n: int) -> None:
  with tempfile.TemporaryDirectory(dir=os.path.dirname(images)) as d:
    link_folder(photo_folder(images), d, n)
    ds = photo_folder(d)
    mesh = parallel.create_mesh(jax.devices()[:1])
    rate = metricjax_rate(ds, mesh, max(8, 2000 // FLAGS.batch_size), 0)
    print(json.dumps({"images": n, "images_per_sec": rate,
                      "peak_rss_mb": resource.getrusage(
                          resource.RUSAGE_SELF).ru_maxrss / 1024}))


def machine() -> str:
  model = next((line.split(":", 1)[1].strip() for line in subprocess.run(
      ["lscpu"], capture_output=True, text=True).stdout.splitlines()
                if line.startswith("Model name")), "unknown CPU")
  return f"{model}, {len(os.sched_getaffinity(0))} cores"


def main(argv):
  del argv
  images = FLAGS.images
  tmp = None
  if images is None:
    tmp = tempfile.mkdtemp(prefix="bench_images-")
    images = os.path.join(tmp, "photos")
    generate_folder(images, FLAGS.num_images, FLAGS.classes)
  if FLAGS.rss_child:
    return rss_child(images, FLAGS.rss_child)
  ds = photo_folder(images)
  mesh = parallel.create_mesh(jax.devices()[:1])
  transforms = import_torchvision_transforms()
  cores = len(os.sched_getaffinity(0))
  load_before = os.getloadavg()
  runs = {"metricjax": [], "metricjax_2_workers": [], "torchvision": [],
          "bare": [], "bare_draft": []}
  for r in range(FLAGS.repeats):
    runs["metricjax"].append(metricjax_rate(ds, mesh, FLAGS.batches,
                                            r * (FLAGS.batches + 2)))
    runs["metricjax_2_workers"].append(metricjax_rate(
        ds, mesh, FLAGS.batches, r * (FLAGS.batches + 2), workers=2))
    if transforms is not None:
      runs["torchvision"].append(torchvision_rate(ds, transforms,
                                                  FLAGS.batches))
    runs["bare"].append(bare_rate(ds, 200, draft=False))
    runs["bare_draft"].append(bare_rate(ds, 200, draft=True))
  med = {k: statistics.median(v) if v else float("nan")
         for k, v in runs.items()}
  rss = []
  for n in (int(s) for s in FLAGS.rss_sizes):
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), f"--images={images}",
         f"--rss_child={n}", f"--batch_size={FLAGS.batch_size}",
         f"--threads={FLAGS.threads}", f"--image_size={FLAGS.image_size}"],
        capture_output=True, text=True, check=True)
    rss.append(json.loads(out.stdout.strip().splitlines()[-1]))
  result = {
      "metricjax_images_per_sec": med["metricjax"],
      "torchvision_images_per_sec": med["torchvision"],
      "cores": cores,
      "metricjax_2_workers_images_per_sec": med["metricjax_2_workers"],
      "bare_core_images_per_sec": med["bare"],
      "bare_core_draft_images_per_sec": med["bare_draft"],
      "machine_limit_images_per_sec": cores * med["bare"],
      "vs_torchvision": med["metricjax"] / med["torchvision"],
      "of_machine_limit": med["metricjax"] / (cores * med["bare"]),
      "peak_rss": rss, "images": len(ds), "image_size": FLAGS.image_size,
      "batch_size": FLAGS.batch_size, "threads": FLAGS.threads,
      "machine": machine(),
      "load_average": [round(v, 2) for v in load_before + os.getloadavg()],
      "runs": runs}
  if FLAGS.json:
    print(json.dumps(result))
  else:
    print(f"{machine()}; load average {load_before[0]:.2f} -> "
          f"{os.getloadavg()[0]:.2f}; {len(ds)} images, view "
          f"{FLAGS.image_size}, batch {FLAGS.batch_size}")
    for k in runs:
      print(f"  {k:<20} {med[k]:8.1f} images/s  (runs "
            f"{', '.join(f'{v:.0f}' for v in runs[k])})")
    print(f"  metricjax / torchvision   {result['vs_torchvision']:.2f}x")
    print(f"  metricjax / ({cores} x bare)  {result['of_machine_limit']:.0%}")
    for row in rss:
      print(f"  {row['images']:>6} images: peak RSS {row['peak_rss_mb']:.0f} "
            f"MB ({row['images_per_sec']:.0f} images/s)")
  if tmp:
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)

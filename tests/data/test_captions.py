"""VSE pipeline parts: ranking loss, cross-modal metrics, caption data."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
from PIL import Image
import pytest

from metricjax import metrics
from metricjax.data import caption_demo
from metricjax.data import captions as captions_lib
from metricjax.data.dataset import ArrayDataset
from metricjax.errors import UserError
from metricjax.losses import vse_ranking_loss
from metricjax.models.vse import VSEModel

# --- Loss vs VSE++'s ContrastiveLoss -----------------------------------------


def vsepp_contrastive_loss(torch, im, s, margin, max_violation):
  """fartashf/vsepp model.py ContrastiveLoss.forward, transcribed."""
  scores = im.mm(s.t())
  diagonal = scores.diag().view(im.size(0), 1)
  d1 = diagonal.expand_as(scores)
  d2 = diagonal.t().expand_as(scores)
  cost_s = (margin + scores - d1).clamp(min=0)
  cost_im = (margin + scores - d2).clamp(min=0)
  mask = torch.eye(scores.size(0)) > .5
  cost_s = cost_s.masked_fill_(mask, 0)
  cost_im = cost_im.masked_fill_(mask, 0)
  if max_violation:
    cost_s = cost_s.max(1)[0]
    cost_im = cost_im.max(0)[0]
  return cost_s.sum() + cost_im.sum()


@pytest.mark.parametrize("max_violation", [False, True])
def test_loss_matches_vsepp(max_violation):
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(int(max_violation))
  im = rng.normal(size=(9, 6)).astype(np.float32)
  s = rng.normal(size=(9, 6)).astype(np.float32)
  im /= np.linalg.norm(im, axis=1, keepdims=True)
  s /= np.linalg.norm(s, axis=1, keepdims=True)
  t_im = torch.tensor(im, dtype=torch.float64, requires_grad=True)
  t_s = torch.tensor(s, dtype=torch.float64, requires_grad=True)
  want = vsepp_contrastive_loss(torch, t_im, t_s, 0.2, max_violation)
  want.backward()
  want = want.item()
  loss = jax.jit(jax.value_and_grad(
      lambda a, b: vse_ranking_loss(a, b, margin=0.2,
                                    max_violation=max_violation), (0, 1)))
  value, (g_im, g_s) = loss(im, s)
  assert want > 0
  np.testing.assert_allclose(float(value), float(want), rtol=1e-5)
  np.testing.assert_allclose(g_im, t_im.grad.numpy(), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(g_s, t_s.grad.numpy(), rtol=1e-4, atol=1e-6)
  mean = vse_ranking_loss(im, s, max_violation=max_violation, reduction="mean")
  np.testing.assert_allclose(float(mean), float(want) / 9, rtol=1e-5)


def test_loss_mask_drops_padded_rows():
  rng = np.random.default_rng(3)
  im, s = rng.normal(size=(2, 7, 5)).astype(np.float32)
  mask = np.array([1, 1, 1, 1, 1, 0, 0], bool)
  for mv in (False, True):
    for reduction in ("sum", "mean"):
      got = vse_ranking_loss(im, s, mask=mask, max_violation=mv,
                             reduction=reduction)
      want = vse_ranking_loss(im[:5], s[:5], max_violation=mv,
                              reduction=reduction)
      np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
  # A perfect batch (matching pairs far above negatives) costs nothing.
  eye = np.eye(4, dtype=np.float32)
  assert float(vse_ranking_loss(eye, eye, max_violation=True)) == 0.0


def test_vse_model_shapes_and_norms():
  model = VSEModel(vocab_size=12, embed_dim=8, word_dim=4)
  feats = np.array([[1, 0, -1, 1, 0, 0]] * 3, np.int8)
  ids = np.array([[2, 3, 0], [4, 0, 0], [5, 6, 7]], np.int32)
  lengths = np.array([2, 1, 3], np.int32)
  params = jax.jit(model.init)(jax.random.key(0), feats, ids, lengths)
  img, txt = jax.jit(model.apply)(params, feats, ids, lengths)
  assert img.shape == txt.shape == (3, 8)
  np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(
      model.apply(params, feats, method=VSEModel.encode_image), img, atol=1e-6)


# --- Cross-modal metrics vs VSE++'s evaluation.py -----------------------------


def vsepp_i2t(images, captions):
  """evaluation.i2t, transcribed (images repeated 5 times per image)."""
  npts = images.shape[0] // 5
  ranks = np.zeros(npts)
  for index in range(npts):
    im = images[5 * index].reshape(1, images.shape[1])
    d = np.dot(im, captions.T).flatten()
    inds = np.argsort(d)[::-1]
    rank = 1e20
    for i in range(5 * index, 5 * index + 5, 1):
      tmp = np.where(inds == i)[0][0]
      if tmp < rank:
        rank = tmp
    ranks[index] = rank
  r1 = 100.0 * len(np.where(ranks < 1)[0]) / len(ranks)
  r5 = 100.0 * len(np.where(ranks < 5)[0]) / len(ranks)
  r10 = 100.0 * len(np.where(ranks < 10)[0]) / len(ranks)
  medr = np.floor(np.median(ranks)) + 1
  return r1, r5, r10, medr


def vsepp_t2i(images, captions):
  """evaluation.t2i, transcribed."""
  npts = images.shape[0] // 5
  ims = np.array([images[i] for i in range(0, len(images), 5)])
  ranks = np.zeros(5 * npts)
  for index in range(npts):
    queries = captions[5 * index:5 * index + 5]
    d = np.dot(queries, ims.T)
    inds = np.zeros(d.shape)
    for i in range(len(inds)):
      inds[i] = np.argsort(d[i])[::-1]
      ranks[5 * index + i] = np.where(inds[i] == index)[0][0]
  r1 = 100.0 * len(np.where(ranks < 1)[0]) / len(ranks)
  r5 = 100.0 * len(np.where(ranks < 5)[0]) / len(ranks)
  r10 = 100.0 * len(np.where(ranks < 10)[0]) / len(ranks)
  medr = np.floor(np.median(ranks)) + 1
  return r1, r5, r10, medr


def correlated_embeddings(n_images, seed, noise):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(n_images, 16))
  caps = np.repeat(images, 5, axis=0) + noise * rng.normal(size=(5 * n_images,
                                                                 16))
  images /= np.linalg.norm(images, axis=1, keepdims=True)
  caps /= np.linalg.norm(caps, axis=1, keepdims=True)
  return images.astype(np.float32), caps.astype(np.float32)


@pytest.mark.parametrize("n_images, noise", [(40, 2.5), (40, 6.0), (37, 4.0)])
def test_crossmodal_metrics_match_vsepp(n_images, noise):
  images, caps = correlated_embeddings(n_images, n_images, noise)
  # Float64 scores of the float32 embeddings, as the metrics compute them.
  im64, cap64 = images.astype(np.float64), caps.astype(np.float64)
  sims = im64 @ cap64.T
  assert len(np.unique(sims)) == sims.size  # Ties-free: ranks are defined.
  got = metrics.crossmodal_metrics(images, caps)
  i2t = vsepp_i2t(np.repeat(im64, 5, axis=0), cap64)
  t2i = vsepp_t2i(np.repeat(im64, 5, axis=0), cap64)
  want = dict(zip(("i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr"), i2t))
  want.update(zip(("t2i_r1", "t2i_r5", "t2i_r10", "t2i_medr"), t2i))
  want["rsum"] = sum(i2t[:3]) + sum(t2i[:3])
  assert set(got) == set(want)
  for k in want:
    assert got[k] == pytest.approx(want[k], abs=1e-9), k
  assert all(isinstance(v, float) for v in got.values())
  # The cases are informative: neither perfect nor chance.
  assert 0 < got["t2i_r1"] < 100 and got["i2t_medr"] + got["t2i_medr"] > 2


def test_crossmodal_metrics_known_ranks_and_ties():
  # 2 images, 1 caption each, along the axes: caption 0 scores image 1 higher.
  images = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
  caps = np.array([[0.1, 0.9], [0.0, 1.0]], np.float32)
  got = metrics.crossmodal_metrics(images, caps, captions_per_image=1)
  # i2t: image 0 ranks caption 0 first (0.1 > 0.0); image 1 ranks caption 1
  # first (1.0 > 0.9). t2i: caption 0 ranks image 0 second.
  assert got["i2t_r1"] == 100.0 and got["t2i_r1"] == 50.0
  assert got["t2i_medr"] == 1.0  # floor(median(0, 1)) + 1
  # All scores equal (a collapsed model): ties count against the query.
  flat = metrics.crossmodal_metrics(np.ones((4, 3)), np.ones((20, 3)))
  assert flat["i2t_r1"] == 0.0 and flat["t2i_r1"] == 0.0
  assert flat["t2i_medr"] == 4.0
  with pytest.raises(ValueError, match="per image"):
    metrics.crossmodal_metrics(np.ones((4, 3)), np.ones((19, 3)))


def test_coco_1k_5fold_averages_folds():
  images, caps = correlated_embeddings(50, 7, 2.0)
  got = metrics.coco_1k_5fold(images, caps, fold_size=10)
  folds = [metrics.crossmodal_metrics(images[10 * f:10 * f + 10],
                                      caps[50 * f:50 * f + 50])
           for f in range(5)]
  for k in got:
    assert got[k] == pytest.approx(np.mean([m[k] for m in folds]))
  with pytest.raises(ValueError, match="5 x 10"):
    metrics.coco_1k_5fold(images[:40], caps[:200], fold_size=10)


# --- Caption data -------------------------------------------------------------


def write_karpathy_fixture(root, *, coco=False):
  """A 6-image Karpathy JSON + PNG folder; images have 5 to 7 captions."""
  splits = ["train", "train", "restval", "val", "test", "test"]
  entries = []
  for k, split in enumerate(splits):
    folder = ("train2014" if split == "train" else "val2014") if coco else ""
    os.makedirs(root / "images" / folder, exist_ok=True)
    filename = f"img{k}.png"
    Image.fromarray(np.full((8 + k, 10, 3), 20 * k, np.uint8)).save(
        root / "images" / folder / filename)
    sentences = [{"raw": f"Image {k}, caption {c}.",
                  "tokens": ["image", str(k), "caption", str(c)]}
                 for c in range(5 + k % 3)]
    entry = {"filename": filename, "split": split, "imgid": k,
             "sentences": sentences}
    if coco:
      entry["filepath"] = folder
    entries.append(entry)
  path = root / ("dataset_coco.json" if coco else "dataset_flickr8k.json")
  path.write_text(json.dumps({"dataset": "coco" if coco else "flickr8k",
                              "images": entries}))
  return path


@pytest.mark.parametrize("coco", [False, True])
def test_karpathy_loader(tmp_path, coco):
  path = write_karpathy_fixture(tmp_path, coco=coco)
  test = captions_lib.load_karpathy(path, "test", image_size=6)
  assert test.name == ("coco" if coco else "flickr8k") and len(test) == 2
  assert [os.path.basename(p) for p in test.image_names] == ["img4.png",
                                                             "img5.png"]
  # First 5 of 6 or 7 captions, caption j of image j // 5.
  assert len(test.captions) == 10
  assert test.captions[:2] == ("Image 4, caption 0.", "Image 4, caption 1.")
  assert test.captions[5] == "Image 5, caption 0."
  batch = test.images[0:2]
  assert batch.shape == (2, 6, 6, 3) and batch.dtype == np.uint8
  assert batch[1].max() == 100
  train = captions_lib.load_karpathy(path, "train+restval", image_size=None)
  assert len(train) == 3 and len(train.captions) == 15
  assert train.images[0].shape == (8, 10, 3)
  with pytest.raises(UserError, match="size"):
    train.images[0:2]  # Different sizes cannot stack without resizing.


def test_karpathy_loader_errors(tmp_path):
  path = write_karpathy_fixture(tmp_path)
  data = json.loads(path.read_text())
  data["images"][3]["sentences"] = data["images"][3]["sentences"][:4]
  path.write_text(json.dumps(data))
  with pytest.raises(UserError, match="img3.png has 4 captions"):
    captions_lib.load_karpathy(path, "val")
  with pytest.raises(UserError, match="Unknown caption split"):
    captions_lib.load_karpathy(path, "dev")
  os.remove(tmp_path / "images" / "img4.png")
  with pytest.raises(UserError, match="1 of the 2 test images"):
    captions_lib.load_karpathy(path, "test")


def test_load_captions_resolves_data_dir(tmp_path, monkeypatch):
  write_karpathy_fixture(tmp_path / "flickr8k")
  monkeypatch.setenv("METRICJAX_DATA_DIR", str(tmp_path))
  split = captions_lib.load_captions("flickr8k", "val", image_size=4)
  assert len(split) == 1 and split.name == "flickr8k"
  spec = captions_lib.load_captions(
      f"karpathy:{tmp_path}/flickr8k/dataset_flickr8k.json", "val")
  assert spec.captions == split.captions
  with pytest.raises(UserError, match="flickr30k"):
    captions_lib.load_captions("flickr30k", "test")


def test_coco_builder_still_needs_the_int64_patch():
  """Fails when TFDS builds coco_captions without TensorFlow by itself: then
  captions._let_coco_builder_run_without_tensorflow can go."""
  pytest.importorskip("tensorflow_datasets")
  if importlib.util.find_spec("tensorflow") is not None:
    pytest.skip("TensorFlow is installed: the patch is not used")
  code = textwrap.dedent("""
      import tensorflow_datasets as tfds
      with tfds.testing.mock_data(num_examples=2):
        try:
          tfds.data_source("coco_captions", split="test")
        except Exception as e:
          print("needs tensorflow" if "tensorflow" in str(e) else repr(e))
        else:
          print("builds without tensorflow")
  """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=120, check=False)
  assert out.stdout.split()[-2:] == ["needs", "tensorflow"], (
      out.stdout + out.stderr[-2000:])


def test_tfds_coco_captions_mock():
  tfds = pytest.importorskip("tensorflow_datasets")
  # Without TensorFlow, TFDS's coco builder needs the loader's tf.int64
  # stand-in (captions._let_coco_builder_run_without_tensorflow).
  captions_lib._let_coco_builder_run_without_tensorflow()
  with tfds.testing.mock_data(num_examples=6):
    source = tfds.data_source("coco_captions", split="test")
    counts = [len(source[i]["captions"]["text"]) for i in range(len(source))]
    texts = [str(source[i]["captions"]["text"][0]) for i in range(2)]
    # The mock draws 5 or more captions per image (seeded); more than the
    # shortest image has must be refused.
    with pytest.raises(UserError, match=f"fewer than {min(counts) + 1}"):
      captions_lib.load_coco_captions_tfds(
          "test", image_size=5, captions_per_image=min(counts) + 1)
    cpi = min(5, min(counts))
    split = captions_lib.load_coco_captions_tfds("test", image_size=5,
                                                 captions_per_image=cpi)
    batch = split.images[0:3]
  assert len(split) == 6 and len(split.captions) == 6 * cpi
  assert split.captions[0] == texts[0] and split.captions[cpi] == texts[1]
  assert batch.shape == (3, 5, 5, 3) and batch.dtype == np.uint8


# --- Synthetic demo dataset ---------------------------------------------------


def tiny_array_dataset(n, split, seed):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 60, (n, 12, 12, 3), np.uint8)
  labels = (np.arange(n) % 3).astype(np.int32)
  for i in range(n):
    images[i, :4, -4:] = 250  # Bright top right corner...
    images[i, ..., i % 3] += 120  # ... in a per-image hue.
  return ArrayDataset(images, labels, 3, ("airplane", "cat", "T-shirt/top"),
                      "tiny", split, "test")


def test_describe_image():
  image = np.zeros((9, 9, 3), np.uint8)
  image[..., 2] = 200
  image[6:, :3] = 255
  got = caption_demo.describe_image(image)
  assert got == {"colour": "blue", "brightness": "dark",
                 "position": "bottom left"}
  assert caption_demo.colour_name((250, 250, 250)) == "white"
  assert caption_demo.colour_name((200, 30, 30)) == "red"
  assert caption_demo.colour_name((128, 128, 128)) == "gray"


def test_caption_demo_round_trip(tmp_path):
  train, test = tiny_array_dataset(30, "train", 0), tiny_array_dataset(
      8, "test", 1)
  out = tmp_path / "caption_demo"
  path = caption_demo.write_caption_demo(out, train, test, sizes=(20, 5, 5),
                                         seed=3)
  data = json.loads(open(path).read())
  assert data["synthetic"] and "SYNTHETIC" in data["description"]
  assert (out / "README.txt").exists()
  sizes = {s: sum(e["split"] == s for e in data["images"])
           for s in ("train", "val", "test")}
  assert sizes == {"train": 20, "val": 5, "test": 5}
  sources = [e["source"] for e in data["images"] if e["split"] != "test"]
  assert len(set(sources)) == 25  # train and val do not overlap
  for e in data["images"]:
    raws = [s["raw"] for s in e["sentences"]]
    assert len(raws) == 5 and len(set(raws)) == 5  # 5 different phrasings
    assert e["attributes"]["position"] == "top right"
    assert all(e["attributes"]["colour"] in r for r in raws[:5]
               if "tones" in r)
  val = captions_lib.load_karpathy(path, "val", image_size=None)
  assert val.images[0:5].shape == (5, 12, 12, 3) and len(val.captions) == 25
  first = data["images"][20]
  index = int(first["source"].split("[")[1].rstrip("]"))
  np.testing.assert_array_equal(val.images[0], train.images[index])
  # Seeded: the same call writes the same captions.
  again = caption_demo.write_caption_demo(tmp_path / "again", train, test,
                                          sizes=(20, 5, 5), seed=3)
  assert json.loads(open(again).read())["images"] == data["images"]
  with pytest.raises(UserError, match="fewer than"):
    caption_demo.write_caption_demo(tmp_path / "big", train, test,
                                    sizes=(29, 5, 5))

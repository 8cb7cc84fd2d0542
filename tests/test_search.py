"""metricjax.search: index files, the query CLI, bad input."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from metricjax import search
from metricjax.errors import UserError
from helpers import make_separable_images
from helpers import REPO
from helpers import xla_flags



def make_index(n=50, dim=8, metric="cosine"):
  rng = np.random.default_rng(4)
  return search.Index(
      rng.normal(size=(n, dim)).astype(np.float32), np.arange(n) % 3,
      [f"img/{i}.png" for i in range(n)], ("a", "b", "c"), metric,
      dict(workdir="/w", step=1, fingerprint="sha256:" + "0" * 64,
           image_shape=[28, 28, 1], embedding_dim=dim),
      dict(name="toy", split="test", source="memory"))


def test_index_round_trip(tmp_path):
  index = make_index()
  path = str(tmp_path / "gallery.npz")
  index.save(path)
  assert os.listdir(tmp_path) == ["gallery.npz"]  # No temporary left over.
  loaded = search.Index.load(path)
  np.testing.assert_array_equal(loaded.embeddings, index.embeddings)
  np.testing.assert_array_equal(loaded.labels, index.labels)
  assert list(loaded.ids) == list(index.ids)
  assert (loaded.class_names, loaded.metric, loaded.model, loaded.dataset) == (
      index.class_names, index.metric, index.model, index.dataset)
  scores, indices = loaded.search(index.embeddings[:3], k=4)
  np.testing.assert_array_equal(indices[:, 0], [0, 1, 2])
  rows = loaded.neighbours(scores, indices)
  assert rows[1][0] == dict(rank=1, id="img/1.png", label=1, class_name="b",
                            score=pytest.approx(1.0, abs=1e-6))


def test_faiss_backend_finds_the_same_neighbours():
  pytest.importorskip("faiss")
  index = make_index(n=2000, dim=16, metric="l2")
  queries = index.embeddings[:20] + 0.01
  exact = index.search(queries, 5)[1]
  approximate = index.search(queries, 5, backend="faiss")[1]
  assert np.mean(exact == approximate) > 0.9


def test_index_bad_input(tmp_path, monkeypatch):
  index = make_index()
  with pytest.raises(UserError, match="k=51 but the index has 50"):
    index.search(index.embeddings[:1], k=51)
  with pytest.raises(UserError, match="8-d"):
    index.search(np.zeros((1, 5)), k=1)
  with pytest.raises(UserError, match="no embeddings"):
    search.Index(np.zeros((0, 8)), [], [], ("a",), "cosine", {},
                 dict(name="toy", split="test"))
  path = tmp_path / "index.npz"
  index.save(str(path))
  data = path.read_bytes()
  for cut in (10, len(data) // 2, len(data) - 30):
    path.write_bytes(data[:cut])
    with pytest.raises(UserError, match="truncated or corrupt"):
      search.Index.load(str(path))
  with pytest.raises(UserError, match="No index file"):
    search.Index.load(str(tmp_path / "missing.npz"))
  # A save that fails half-way leaves neither a partial file nor a temporary.
  def fail_half_way(f, **arrays):
    f.write(b"PK partial")
    raise OSError("disk full")
  monkeypatch.setattr(np, "savez", fail_half_way)
  with pytest.raises(UserError, match="disk full"):
    index.save(str(tmp_path / "new.npz"))
  assert sorted(os.listdir(tmp_path)) == ["index.npz"]


def test_ids_are_paths_for_image_folders(tmp_path, monkeypatch):
  from metricjax import data
  monkeypatch.setenv("METRICJAX_CACHE_DIR", str(tmp_path / "cache"))
  root = tmp_path / "ds"
  for name in ("b", "a"):
    (root / "test" / name).mkdir(parents=True)
    for i in range(2):
      _png(root / "test" / name / f"{i}.png", np.full((8, 8), i, np.uint8))
  ds = data.load_dataset(f"folder:{root}", "test")
  assert list(ds.ids) == [
      "test/a/0.png", "test/a/1.png", "test/b/0.png", "test/b/1.png"]


# --- With a trained model ----------------------------------------------------


def _cli(*args, cwd=REPO):
  env = dict(os.environ, XLA_FLAGS=xla_flags())
  return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=180)


def _png(path, array):
  Image.fromarray(array.squeeze()).save(path)
  return str(path)


def test_build_and_query_cli(tiny_workdir, tiny_idx_dir, tmp_path):
  out = str(tmp_path / "gallery.npz")
  proc = _cli("metricjax.search", "build", f"--workdir={tiny_workdir}",
              f"--dataset=idx:{tiny_idx_dir}", "--split=test", f"--out={out}")
  assert proc.returncode == 0, proc.stderr
  index = search.Index.load(out)
  assert len(index) == 32 and index.ids[0] == "test/0"
  assert index.model["step"] == 6

  images, labels = make_separable_images(4, 4, seed=9)
  queries = tmp_path / "queries"
  queries.mkdir()
  paths = [_png(queries / f"q{i}.png", im) for i, im in enumerate(images)]
  proc = _cli("metricjax.search", "query", f"--index={out}",
              f"--images={queries}", "--k=3", "--json")
  assert proc.returncode == 0, proc.stderr
  results = json.loads(proc.stdout)
  assert [r["query"] for r in results] == paths
  assert set(results[0]["neighbours"][0]) == {"rank", "id", "label",
                                              "class_name", "score"}

  # The Python API gives the same neighbours, and the same table.
  model = search.Model.from_checkpoint(str(tiny_workdir))
  scores, indices = index.search_images(list(images[..., None]), model, k=3)
  rows = index.neighbours(scores, indices)
  for got, want in zip(results, rows):
    assert [n["id"] for n in got["neighbours"]] == [n["id"] for n in want]
    np.testing.assert_allclose([n["score"] for n in got["neighbours"]],
                               [n["score"] for n in want], rtol=1e-5)
  table = search.format_results(paths, rows).splitlines()
  assert table[0] == f"query {paths[0]}" and table[1].split() == [
      "rank", "score", "label", "id"]
  assert table[2].split()[-1] == rows[0][0]["id"]
  # The tiny model separates the 4 classes: neighbours share the label.
  assert (index.labels[indices[:, 0]] == labels).all()


def test_query_bad_input_in_process(tiny_workdir, tiny_idx_dir, tmp_path,
                                    monkeypatch):
  monkeypatch.setenv("METRICJAX_CACHE_DIR", str(tmp_path / "cache"))
  index = search.Index.build(str(tiny_workdir), f"idx:{tiny_idx_dir}", "test")
  model = search.Model.from_checkpoint(str(tiny_workdir))
  rgb = np.zeros((28, 28, 3), np.uint8)
  with pytest.raises(UserError, match="rgb.png is 28x28 pixels with 3 "
                     "channels.*28x28 pixels with 1 channel"):
    index.search_images([rgb], model, k=1, names=["rgb.png"])
  big = _png(tmp_path / "big.png", np.zeros((32, 32), np.uint8))
  with pytest.raises(UserError, match="big.png is 32x32 pixels"):
    index.search_images(search.read_images([big]), model, k=1, names=[big])
  with pytest.raises(UserError, match="k=33"):
    index.search_images([rgb[..., :1]], model, k=33)
  other = search.Model.from_checkpoint(str(tiny_workdir), step=3)
  with pytest.raises(UserError, match="another model"):
    index.search_images([rgb[..., :1]], other, k=1)
  # The gallery's images must fit the model.
  colour = tmp_path / "colour"
  (colour / "test" / "a").mkdir(parents=True)
  _png(colour / "test" / "a" / "x.png", np.full((28, 28, 3), 90, np.uint8))
  with pytest.raises(UserError, match="3 channels"):
    search.Index.build(str(tiny_workdir), f"folder:{colour}", "test")

"""Bad input, end to end: each case is a one-paragraph UserError (exit 2
from the CLIs), and leaves no partial result and the last good checkpoint
intact.

The loaders' own checks are unit-tested where they live (tests/data:
test_idx.py every IDX corruption, test_sources.py missing data listing
every place, test_captions.py Karpathy captions; test_train.py: evaluate
without a checkpoint, P x K shapes, a resumed run of another model). Here the user's entry points
(train, evaluate, the CLIs) meet them. Disk full while checkpointing:
test_reliability.py.
"""

import errno
import gzip
import io as io_lib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import numpy as np
from PIL import Image
import pytest

from metricjax import checkpoint
from metricjax import evaluate as evaluate_lib
from metricjax import files as files_lib
from metricjax import train as train_lib
from metricjax.data import captions as captions_lib
from metricjax.data import sources
from metricjax.data import tfds_source
from metricjax.errors import UserError
from helpers import make_separable_images, write_idx
from helpers import tiny_config
from helpers import REPO
from helpers import xla_flags



def assert_one_paragraph(message: str):
  assert message and "\n" not in message.strip() and "Traceback" not in message


# --- Bad datasets, met by train() ----------------------------------------------


def _idx_dir(root, labels_hook=None):
  root.mkdir(parents=True, exist_ok=True)
  for prefix, num in (("train", 64), ("t10k", 32)):
    images, labels = make_separable_images(num, 4, 0)
    if labels_hook:
      labels = labels_hook(labels)
    write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
  return root


def _png(array):
  buf = io_lib.BytesIO()
  Image.fromarray(array).save(buf, "PNG")
  return buf.getvalue()


def _jpeg(seed=0, size=16):
  rng = np.random.default_rng(seed)
  buf = io_lib.BytesIO()
  Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(
      buf, "JPEG")
  return buf.getvalue()


def _folder_files():
  """{member: bytes}: 4 classes x 8 JPEGs per split."""
  return {f"{split}/c{c}/{i}.jpg": _jpeg(100 * c + i)
          for split in ("train", "test") for c in range(4) for i in range(8)}


def _write_dir(root, files, dirs=()):
  for member, data in files.items():
    (root / member).parent.mkdir(parents=True, exist_ok=True)
    (root / member).write_bytes(data)
  for d in dirs:
    (root / d).mkdir(parents=True, exist_ok=True)
  return root


def _write_zip(path, files, dirs=()):
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
    for d in dirs:
      zf.writestr(d + "/", b"")
    for member, data in files.items():
      zf.writestr(member, data)
  return path


def corrupt_idx(tmp):
  root = _idx_dir(tmp / "idx")
  (root / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bnot gzip at all")
  return f"idx:{root}"


def truncated_idx(tmp):
  root = _idx_dir(tmp / "idx")
  path = root / "train-images-idx3-ubyte.gz"
  # A complete gzip stream of a cut payload: the IDX header promises more.
  data = gzip.decompress(path.read_bytes())
  path.write_bytes(gzip.compress(data[:len(data) // 2]))
  return f"idx:{root}"


def labels_out_of_range(tmp):
  # A directory named like a known dataset gets its 10 class names.
  root = _idx_dir(tmp / "fashion-mnist", lambda l: np.where(l == 3, 12, l))
  return f"idx:{root}"


def corrupt_zip(tmp):
  (tmp / "data.zip").write_bytes(b"PK\x03\x04 and then nothing of a zip")
  return f"folder:{tmp / 'data.zip'}"


def truncated_zip(tmp):
  path = _write_zip(tmp / "data.zip", _folder_files())
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
  return f"folder:{path}"


def corrupt_zip_member(tmp):
  files = _folder_files()
  path = _write_zip(tmp / "data.zip", files)
  data = bytearray(path.read_bytes())
  # A flipped byte inside the first image (the first local header is 30
  # bytes + its name): the zip's directory is fine, that member's CRC is not.
  data[30 + len("train/c0/0.jpg") + 200] ^= 0xFF
  path.write_bytes(bytes(data))
  return f"folder:{path}"


def corrupt_jpeg(tmp):
  files = _folder_files()
  files["train/c1/3.jpg"] = b"\xff\xd8\xff\xe0 not really a jpeg"
  return f"folder:{_write_dir(tmp / 'data', files)}"


def truncated_jpeg(tmp):
  files = _folder_files()
  files["train/c1/3.jpg"] = files["train/c1/3.jpg"][:300]
  return f"folder:{_write_dir(tmp / 'data', files)}"


def wrong_size_image(tmp):
  files = _folder_files()
  files["train/c2/5.jpg"] = _jpeg(7, size=20)
  return f"folder:{_write_dir(tmp / 'data', files)}"


def wrong_mode_image(tmp):
  files = _folder_files()
  files["train/c2/5.png"] = _png(np.full((16, 16), 40000, np.uint16))
  return f"folder:{_write_dir(tmp / 'data', files)}"


def empty_class_dir(tmp):
  return f"folder:{_write_dir(tmp / 'data', _folder_files(), ['train/c9'])}"


def empty_class_zip(tmp):
  return f"folder:{_write_zip(tmp / 'data.zip', _folder_files(), ['train/c9'])}"


@pytest.mark.parametrize("make, match", [
    (corrupt_idx, "gzip stream is corrupt or truncated"),
    (truncated_idx, r"need 50176 payload bytes .* \(it is truncated\)"),
    (labels_out_of_range, r"labels in \[0, 12\], outside \[0, 10\)"),
    (corrupt_zip, "not a zip archive, or a truncated one"),
    (truncated_zip, "not a zip archive, or a truncated one"),
    (corrupt_zip_member, "Cannot read train/c0/0.jpg from .*Bad CRC-32"),
    (corrupt_jpeg, "Cannot decode image .*train/c1/3.jpg"),
    (truncated_jpeg, "Cannot decode image .*train/c1/3.jpg.*[Tt]runcated"),
    (wrong_size_image, "5.jpg is 20x20 pixels but .* every image of a split "
                       "must have the same size"),
    (wrong_mode_image, "5.png has pixel mode 'I;16'"),
    (empty_class_dir, "class folder train/c9/ holds no images"),
    (empty_class_zip, "class folder train/c9/ holds no images"),
], ids=lambda x: getattr(x, "__name__", None))
def test_bad_dataset(tmp_path, monkeypatch, make, match):
  monkeypatch.setenv("METRICJAX_CACHE_DIR", str(tmp_path / "cache"))
  config = tiny_config(tmp_path, total_steps=1)
  config.dataset = make(tmp_path)
  workdir = tmp_path / "run"
  with pytest.raises(UserError, match=match) as e:
    train_lib.train(config, str(workdir))
  assert_one_paragraph(str(e.value))
  assert not workdir.exists()  # Nothing started, nothing half-written.
  assert not (tmp_path / "cache").exists() or not os.listdir(tmp_path / "cache")


def test_missing_dataset_says_where_and_how(tmp_path, monkeypatch):
  monkeypatch.setenv("METRICJAX_DATA_DIR", str(tmp_path / "data"))
  monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", (str(tmp_path / "system"),))
  monkeypatch.setattr(sources, "load_tfds", lambda *a, **k: (_ for _ in ()).throw(
      tfds_source.TfdsUnavailableError("not prepared", "not prepared")))
  config = tiny_config(tmp_path)
  config.dataset = "mnist"
  with pytest.raises(UserError) as e:
    train_lib.train(config, str(tmp_path / "run"))
  message = str(e.value)
  assert_one_paragraph(message)
  for text in (str(tmp_path / "data" / "mnist"), str(tmp_path / "system"),
               "TFDS 'mnist'", "To get it", "tfds build mnist"):
    assert text in message
  assert not (tmp_path / "run").exists()


# --- Bad config, workdir or checkpoint ----------------------------------------


@pytest.fixture
def trained(tiny_run):
  """A workdir with good checkpoints (steps 3 and 6) to be copied."""
  return pathlib.Path(tiny_run[0])


def _intact(workdir, steps=(3, 6)):
  """The checkpoints are those of before, and restorable; no result file
  or temporary file appeared."""
  mngr = checkpoint.manager(str(workdir), create=False)
  assert sorted(mngr.all_steps()) == list(steps)
  assert checkpoint.restore_meta(mngr, max(steps))["config"]
  mngr.close()
  assert not (workdir / "eval").exists()
  assert not [n for n in os.listdir(workdir) if n.startswith(".tmp")]


def test_checkpoint_of_another_config(trained, tiny_idx_dir, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir, ignore=shutil.ignore_patterns("eval"))
  # Same task identity, other optimiser state: a shape/structure mismatch.
  config = tiny_config(tiny_idx_dir, total_steps=9, grad_clip_norm=1.0)
  with pytest.raises(UserError, match="does not fit this config's model and "
                     "optimiser.*resume with that config") as e:
    train_lib.train(config, str(workdir))
  assert_one_paragraph(str(e.value))
  _intact(workdir)


def test_batch_that_cannot_hold_p_by_k(trained, tiny_idx_dir, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir, ignore=shutil.ignore_patterns("eval"))
  config = tiny_config(tiny_idx_dir, total_steps=9, batch_size=32)
  with pytest.raises(UserError, match="asks for 8 distinct classes per batch, "
                     "but the dataset has only 4") as e:
    train_lib.train(config, str(workdir))
  assert_one_paragraph(str(e.value))
  _intact(workdir)


def test_unwritable_workdir(tiny_idx_dir, tmp_path):
  (tmp_path / "a_file").write_text("")
  with pytest.raises(UserError, match="Cannot create the workdir .*a_file/run"
                     ) as e:
    train_lib.train(tiny_config(tiny_idx_dir, total_steps=1),
                    str(tmp_path / "a_file" / "run"))
  assert_one_paragraph(str(e.value))


def test_evaluate_cannot_write_its_result(trained, tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir, ignore=shutil.ignore_patterns("eval"))

  def disk_full(fd):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(files_lib.os, "fsync", disk_full)
  with pytest.raises(UserError, match="Could not write .*step_6.json: No space "
                     "left on device") as e:
    evaluate_lib.evaluate(str(workdir))
  assert_one_paragraph(str(e.value))
  # No eval JSON, complete or partial, and no temporary file left behind.
  assert os.listdir(workdir / "eval") == []
  shutil.rmtree(workdir / "eval")
  _intact(workdir)


def test_evaluate_without_checkpoint(tmp_path):
  (tmp_path / "checkpoints").mkdir()
  with pytest.raises(UserError, match="No checkpoint found .* Train first") as e:
    evaluate_lib.evaluate(str(tmp_path))
  assert_one_paragraph(str(e.value))
  assert not (tmp_path / "eval").exists()


# --- Karpathy caption JSON ----------------------------------------------------


def _karpathy(tmp, change):
  (tmp / "images").mkdir()
  entries = []
  for k, split in enumerate(["train", "test"]):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp / "images" / f"{k}.png")
    entries.append({"filename": f"{k}.png", "split": split, "sentences": [
        {"raw": f"caption {c}", "tokens": ["caption", str(c)]} for c in range(5)]})
  change(entries)
  path = tmp / "dataset_x.json"
  path.write_text(json.dumps({"images": entries}))
  return path


@pytest.mark.parametrize("change, match", [
    (lambda e: e[1].pop("split"), r"images\[1\] has no 'split'"),
    (lambda e: e[1].pop("filename"), r"images\[1\] has no 'filename'"),
    (lambda e: e[1].pop("sentences"), r"images\[1\] has no 'sentences'"),
    (lambda e: [s.pop("raw") and s.pop("tokens") for s in e[1]["sentences"]],
     "a sentence of image 1.png has neither 'raw' nor 'tokens'"),
    (lambda e: e[1].update(filename="gone.png"),
     "1 of the 1 test images .* are not in .*gone.png"),
], ids=["no_split", "no_filename", "no_sentences", "no_text", "missing_image"])
def test_karpathy_json(tmp_path, change, match):
  path = _karpathy(tmp_path, change)
  with pytest.raises(UserError, match=match) as e:
    captions_lib.load_captions(f"karpathy:{path}", "test")
  assert_one_paragraph(str(e.value))


# --- Through the CLIs: exit code 2, one paragraph, no traceback --------------


def _cli(*args):
  env = dict(os.environ, XLA_FLAGS=xla_flags())
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("flags, match", [
    (["--config.total_steps=many"], "total_steps"),
    (["--config.learning_rate=[1]"], "learning_rate"),
    # A corrupt file is the same path (test_bad_dataset: every kind).
    (["--config.dataset=idx:{tmp}/nowhere"], "is not a directory"),
    (["--config.dataset=idx:{good}", "--config.batch_size=16",
      "--config.samples_per_class=4", "--workdir={tmp}/a_file/run"], "Cannot create the workdir"),
], ids=["wrong_type", "wrong_type_list", "missing_dir",
        "unwritable_workdir"])
def test_cli(tmp_path, tiny_idx_dir, flags, match):
  (tmp_path / "a_file").write_text("")
  flags = [f.format(tmp=tmp_path, good=tiny_idx_dir) for f in flags]
  if not any(f.startswith("--workdir") for f in flags):
    flags.append(f"--workdir={tmp_path}/run")
  proc = _cli("metricjax.train", "--config=configs/compact_involution.py",
              *flags)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  error = proc.stderr.strip().split("\n\n")[-1]
  assert error.startswith("Error") and match in error
  assert "\n\n" not in error.strip()  # One paragraph: its lines are adjacent.
  assert not (tmp_path / "run" / "checkpoints").exists()

"""Bad input to the photo benchmarks: each is one UserError that says what
and where; corrupt images can be skipped and counted instead."""

import os
import subprocess
import sys

import numpy as np
import pytest

import replicas
from metricjax.data import load_dataset
from metricjax.data import photo_pipeline as pp
from metricjax.data.samplers import HostSampler
from metricjax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))


def _lines(path):
  with open(path) as f:
    return f.read().splitlines()


def _write(path, lines):
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


@pytest.fixture
def cub(tmp_path):
  return replicas.make_cub(str(tmp_path), per_class=1)


def _load_cub(cub):
  return load_dataset("cub", "train", data_dir=os.path.dirname(cub))


def test_missing_image_is_named(cub):
  first = _lines(os.path.join(cub, "images.txt"))[0].split()[1]
  os.remove(os.path.join(cub, "images", first))
  with pytest.raises(UserError, match="1 image.*missing.*" + first):
    _load_cub(cub)


def test_unparsable_line_gives_its_number(cub):
  path = os.path.join(cub, "image_class_labels.txt")
  lines = _lines(path)
  lines[6] = "7"
  _write(path, lines)
  with pytest.raises(UserError, match="image_class_labels.txt line 7"):
    _load_cub(cub)


def test_class_id_out_of_range(cub):
  path = os.path.join(cub, "image_class_labels.txt")
  lines = _lines(path)
  lines[3] = "4 201"
  _write(path, lines)
  with pytest.raises(UserError, match="class id 201.*outside.*1..200"):
    _load_cub(cub)


def test_class_with_no_images(cub):
  path = os.path.join(cub, "image_class_labels.txt")
  lines = _lines(path)
  lines[1] = "2 1"  # Class 2's only image now says class 1.
  _write(path, lines)
  with pytest.raises(UserError, match="002.Bird_2 but no image has"):
    _load_cub(cub)


def test_cars196_class_out_of_range(tmp_path):
  import scipy.io
  root = replicas.make_cars196(str(tmp_path), per_class=1)
  mat = scipy.io.loadmat(os.path.join(root, "cars_annos.mat"))
  mat["annotations"][0, 5]["class"] = np.uint8(197)
  scipy.io.savemat(os.path.join(root, "cars_annos.mat"),
                   {k: mat[k] for k in ("annotations", "class_names")})
  with pytest.raises(UserError, match="class 197 .*outside.*1..196"):
    load_dataset("cars196", "test", data_dir=str(tmp_path))


def test_csv_without_required_columns(tmp_path):
  path = replicas.make_csv(str(tmp_path), roles=False, boxes=False)
  lines = _lines(path)
  _write(path, [lines[0].replace("label", "class")] + lines[1:])
  with pytest.raises(UserError, match="lacks label.*path,label,split"):
    load_dataset(f"csv:{path}", "train")


def test_inshop_bad_status_line(tmp_path):
  root = replicas.make_inshop(str(tmp_path))
  path = os.path.join(root, "list_eval_partition.txt")
  lines = _lines(path)
  lines[4] = lines[4].replace("train", "val")
  _write(path, lines)
  with pytest.raises(UserError, match="line 5: evaluation_status 'val'"):
    load_dataset("inshop", "train", data_dir=str(tmp_path))


def _corrupt(ds, i, how):
  with open(ds.path(i), "rb") as f:
    data = f.read()
  with open(ds.path(i), "wb") as f:
    f.write(data[:len(data) // 2] if how == "truncated" else b"not a jpeg" * 9)


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_corrupt_image_named_or_skipped_and_counted(tmp_path, how):
  replicas.make_sop(str(tmp_path))
  ds = load_dataset("sop", "train", data_dir=str(tmp_path))
  _corrupt(ds, 0, how)
  sampler = HostSampler.from_labels("balanced", ds.labels, ds.num_classes,
                                    batch_size=12, samples_per_class=2)
  run = lambda **kw: list(pp.train_batches(
      ds, sampler, pp.View(16, train=True), seed=0, start_step=0,
      total_steps=10, batch_size=12, num_threads=2, prefetch=4, **kw))
  with pytest.raises(UserError, match="Cannot decode image .*"
                     + os.path.basename(ds.path(0)) + ".*skip_corrupt"):
    run()
  skipped = pp.SkipCounter()
  batches = run(skip_corrupt=True, skipped=skipped)
  assert len(batches) == 10 and len(skipped) == 1
  # Evaluation drops the row and counts it.
  images = pp.DecodedSplit(ds, pp.View(16), batch_size=8, skip_corrupt=True,
                           num_threads=2)
  _ = [images[s:s + 8] for s in range(0, len(ds), 8)]
  assert images.skipped_rows == [0]


def _cli(*args, env_extra):
  env = dict(os.environ, **env_extra)
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # Two CLI subprocesses (~20 s on 2 loaded cores).
def test_cli_exits_2_and_writes_nothing(tmp_path):
  path = replicas.make_csv(str(tmp_path), roles=False, boxes=False)
  lines = _lines(path)
  _write(path, [lines[0].replace("split", "subset")] + lines[1:])
  workdir = tmp_path / "run"
  out = _cli("metricjax.train",
             f"--config=configs/dml_benchmark.py:dataset=csv:{path}",
             f"--workdir={workdir}", env_extra={})
  assert out.returncode == 2, out.stderr[-2000:]
  assert "lacks split" in out.stderr and "Traceback" not in out.stderr
  assert not workdir.exists()
  missing = _cli("metricjax.train",
                 "--config=configs/dml_benchmark.py:dataset=cub",
                 f"--workdir={workdir}",
                 env_extra={"METRICJAX_DATA_DIR": str(tmp_path)})
  assert missing.returncode == 2
  assert "CUB_200_2011/images.txt" in missing.stderr
  assert "data.caltech.edu" in missing.stderr and not workdir.exists()

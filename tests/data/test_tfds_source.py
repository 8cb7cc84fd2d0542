"""metricjax.data.tfds_source: TFDS datasets (mocked), with and without
TensorFlow, and the message when one is not prepared."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from metricjax.data import load_dataset
from metricjax.data import tfds_source


@pytest.mark.parametrize("name, shape, first_class", [
    ("mnist", (28, 28, 1), "0"), ("cifar10", (32, 32, 3), "airplane")])
def test_tfds_mock(name, shape, first_class):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):
    explicit = load_dataset(f"tfds:{name}", "train")
    # With no offline copy anywhere, the known name falls back to TFDS.
    implicit = load_dataset(name, "test")
  for ds in (explicit, implicit):
    assert ds.name == name and len(ds) == 12
    assert ds.images.shape == (12,) + shape and ds.images.dtype == np.uint8
    assert ds.num_classes == 10 and ds.class_names[0] == first_class
    assert "TFDS" in ds.source


def test_tfds_mock_without_tensorflow():
  """tfds.data_source and mock_data work with TensorFlow hidden."""
  code = textwrap.dedent("""
      import sys

      class HideTensorFlow:  # The usual finders, as if TF were not installed.

        def __init__(self, finders):
          self.finders = finders

        def find_spec(self, name, path=None, target=None):
          if name.partition(".")[0] == "tensorflow":
            return None
          for finder in self.finders:
            spec = finder.find_spec(name, path, target)
            if spec is not None:
              return spec
          return None

      sys.meta_path[:] = [HideTensorFlow(list(sys.meta_path))]
      import tensorflow_datasets as tfds
      from metricjax.data import load_dataset
      with tfds.testing.mock_data(num_examples=3):
        print(load_dataset("tfds:cifar10", "test").images.shape)
      assert "tensorflow" not in sys.modules
  """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=120, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "(3, 32, 32, 3)" in out.stdout


def test_tfds_not_prepared(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(tfds_source.TfdsUnavailableError) as e:
    tfds_source.load_tfds("mnist", "train", data_dir=str(tmp_path),
                          download=False)
  assert str(tmp_path) in str(e.value) and "tfds build mnist" in str(e.value)

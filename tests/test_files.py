"""metricjax.files: a write is atomic, the old file or the new one."""

import json
import os

import pytest

from metricjax import files


def test_atomic_write_gives_the_old_file_or_the_new_one(tmp_path):
  # Every result, cache and table goes through it (eval JSON on a full
  # disk: test_bad_input.py).
  path = tmp_path / "eval" / "step_6.json"
  files.write_json(path, {"old": True})
  with pytest.raises(RuntimeError):
    with files.atomic_write(path) as f:
      f.write('{"new": tr')
      raise RuntimeError("killed half-way")
  assert json.loads(path.read_text()) == {"old": True}
  assert os.listdir(path.parent) == ["step_6.json"]

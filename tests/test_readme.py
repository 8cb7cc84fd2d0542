"""README's library example runs as written."""

import pathlib
import re

from helpers import REPO


def test_library_example_runs():
  readme = (pathlib.Path(REPO) / "README.md").read_text()
  code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
  scope = {}
  exec(compile(code, "README.md", "exec"), scope)  # pylint: disable=exec-used
  assert float(scope["value"]) > 0 and set(scope["scores"]) >= {"map_at_r"}
  assert scope["rows"].shape == (4, 5)

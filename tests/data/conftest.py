"""Fixtures of the data tests."""

import pytest

from metricjax.data import sources


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
  """No test sees the real cache, the real env data dir or /usr/share."""
  monkeypatch.setenv("METRICJAX_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.delenv("METRICJAX_DATA_DIR", raising=False)
  monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", (str(tmp_path / "system"),))

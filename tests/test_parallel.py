"""metricjax.parallel: the multi-host arguments are checked before JAX is
asked to join a job (through the CLIs, and a coordinator that does not
answer: tests/e2e/test_multihost.py)."""

import pytest

from metricjax import parallel
from metricjax.errors import UserError


def test_bad_distributed_arguments():
  with pytest.raises(UserError, match="out of range"):
    parallel.initialize_distributed("127.0.0.1:1", 2, 2)
  with pytest.raises(UserError, match="go together"):
    parallel.initialize_distributed(None, 2, None)
  with pytest.raises(UserError, match="must be >= 1"):
    parallel.initialize_distributed("127.0.0.1:1", 0, 0)
  with pytest.raises(UserError, match="is not HOST:PORT"):
    parallel.initialize_distributed("localhost", 2, 1)


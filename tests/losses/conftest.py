"""Loss tests: modules marked `eager` check values and gradients against
pytorch-metric-learning op by op. Each of their few hundred cases would
otherwise compile its own tiny program (a loss x miner grid of distinct
functions), which costs about three times the suite's CPU of running them
eagerly; the numbers are checked all the same. Their tests of the compiled
path are marked `compiled` and run jitted, as training runs them."""

import jax
import pytest


@pytest.fixture(autouse=True)
def _eager_reference_checks(request):
  if (request.node.get_closest_marker("eager")
      and not request.node.get_closest_marker("compiled")):
    with jax.disable_jit():
      yield
  else:
    yield

"""XLA:CPU routing: the training step's convolutions off YNNPACK, same losses."""

import jax
import numpy as np
import pytest

from metricjax import parallel
from metricjax import state as state_lib
from metricjax import step as step_lib
from metricjax import tasks
from metricjax import train as train_lib
from metricjax import xla_routing
from metricjax.errors import UserError
from helpers import load_config

needs_option = pytest.mark.skipif(
    jax.default_backend() != "cpu" or not xla_routing.option_supported(),
    reason="a CPU jaxlib with xla_cpu_experimental_ynn_fusion_type")


def _compiled_steps(data_dir, routing, num_steps=2):
  config = load_config("compact_involution")
  config.dataset = f"idx:{data_dir}"
  # The model's own widths: jaxlib gives YNN only convolutions of more
  # than a few channels (here 32 -> 64 and up).
  config.batch_size, config.samples_per_class = 16, 4
  mesh = parallel.create_mesh()
  tx = state_lib.create_optimizer(config)
  task = tasks.of(config).build(config, mesh, tx)
  state = jax.jit(task.init)(jax.random.key(0))
  train_step = step_lib.make_train_step(task.sample, task.loss, tx)
  seed_key = jax.random.key(0)
  compiled = train_lib.compile_steps(train_step, state, task.data, seed_key,
                                     num_steps, streamed=False, mesh=mesh,
                                     routing=routing)
  _, metrics = compiled(state, task.data, seed_key)
  return compiled.as_text(), np.asarray(metrics["loss"])


@pytest.mark.slow  # Two compilations of the real model's step: ~1 min.
@needs_option
def test_training_step_convolutions_leave_ynn(tiny_idx_dir):
  text_on, losses_on = _compiled_steps(tiny_idx_dir, "conv_eigen")
  text_off, losses_off = _compiled_steps(tiny_idx_dir, "jaxlib_default")
  on = xla_routing.convolution_kernels(text_on)
  off = xla_routing.convolution_kernels(text_off)
  # Forward, input and weight gradients of every conv layer.
  assert on["ynn"] == 0 and on["xla"] >= 6, on
  assert off["ynn"] > 0, off
  assert on["xla"] + on["ynn"] == off["xla"] + off["ynn"]
  # Another kernel, the same function: float32 rounding apart.
  np.testing.assert_allclose(losses_on, losses_off, rtol=1e-5)


def test_options_only_on_cpu_with_the_option(monkeypatch):
  assert xla_routing.compiler_options("jaxlib_default", "cpu") == {}
  assert xla_routing.compiler_options("conv_eigen", "gpu") == {}
  assert xla_routing.compiler_options("conv_eigen", "tpu") == {}
  # A jaxlib whose compiler does not know the option: no options, no error.
  monkeypatch.setattr(xla_routing, "YNN_OPTION", "xla_cpu_no_such_option_x")
  assert not xla_routing.option_supported("xla_cpu_no_such_option_x")
  assert xla_routing.compiler_options("conv_eigen", "cpu") == {}
  jitted = xla_routing.jit(lambda x: x * 2, routing="conv_eigen")
  assert float(jitted(2.0)) == 4.0


@needs_option
def test_detects_the_option():
  assert xla_routing.compiler_options("conv_eigen", "cpu") == {
      xla_routing.YNN_OPTION: xla_routing._CONV_EIGEN}


def test_unknown_routing_is_a_user_error():
  with pytest.raises(UserError, match="xla_cpu_routing"):
    xla_routing.compiler_options("fastest")

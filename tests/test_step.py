"""metricjax.step: the train step flags a non-finite update and, when asked,
skips it."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metricjax import state as state_lib
from metricjax import step as step_lib


def test_step_flags_and_skips_nonfinite_updates():
  params = {"w": jnp.ones(3)}
  tx = optax.adam(0.1)
  state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               batch_stats={}, opt_state=None)
  state = state.replace(opt_state=tx.init(state_lib.trainable(state)))
  # The data scales the loss: NaN data, NaN loss and gradients.
  loss = lambda p, loss_p, bs, scale, ls, key: (scale * jnp.sum(p["w"] ** 2),
                                               (bs, ls))
  sample = lambda rng, data: data
  for skip in (False, True):
    step = jax.jit(step_lib.make_train_step(sample, loss, tx,
                                            skip_nonfinite=skip))
    step = functools.partial(step, seed_key=jax.random.key(0))
    good, metrics = step(state, jnp.float32(1.0))
    assert bool(metrics["finite"]) and good.step == 1
    assert not np.allclose(good.params["w"], 1.0)
    bad, metrics = step(good, jnp.float32(np.nan))
    assert not bool(metrics["finite"]) and bad.step == 2
    if skip:  # Nothing but the step counter moved.
      jax.tree.map(np.testing.assert_array_equal,
                   (bad.params, bad.opt_state), (good.params, good.opt_state))
    else:
      assert np.isnan(bad.params["w"]).all()

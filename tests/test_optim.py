"""The optimizer: warmup + cosine schedule, decoupled weight decay, gradient clipping."""

import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from flam_jax.lib import optim


def _config(**overrides):
  config = ConfigDict(dict(learning_rate=1e-2, warmup_steps=10, final_lr_fraction=0.1,
                           grad_clip_norm=1.0, b1=0.9, b2=0.99, weight_decay=0.5))
  config.update(overrides)
  return config


def test_schedule_warms_up_then_decays_to_the_final_fraction():
  schedule = optim.make_schedule(_config(), num_train_steps=100)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(5)), 5e-3, rtol=1e-5)
  np.testing.assert_allclose(float(schedule(10)), 1e-2, rtol=1e-5)
  assert float(schedule(50)) < 1e-2
  np.testing.assert_allclose(float(schedule(100)), 1e-3, rtol=1e-5)


def test_warmup_longer_than_the_run_is_cut():
  schedule = optim.make_schedule(_config(warmup_steps=50), num_train_steps=3)
  np.testing.assert_allclose(float(schedule(2)), 1e-2, rtol=1e-5)  # Peak at the last step.


def test_weight_decay_is_decoupled_and_gradients_are_clipped():
  tx = optim.make_optimizer(_config(warmup_steps=0), num_train_steps=100)
  params = {"w": jnp.array([2.0, -2.0])}
  state = tx.init(params)
  # Zero gradient: only the decay moves the parameters, by lr * weight_decay * w.
  updates, _ = tx.update({"w": jnp.zeros(2)}, state, params)
  np.testing.assert_allclose(updates["w"], -1e-2 * 0.5 * params["w"], rtol=1e-5)
  # Clipping: the chain's first stage bounds the global norm at grad_clip_norm.
  clip = optax.clip_by_global_norm(1.0)
  clipped, _ = clip.update({"w": jnp.array([30.0, 40.0])}, clip.init(params))
  np.testing.assert_allclose(float(optax.tree.norm(clipped)), 1.0, rtol=1e-5)
  big, _ = tx.update({"w": jnp.array([30.0, 40.0])}, state, params)
  small, _ = tx.update(clipped, state, params)
  np.testing.assert_allclose(big["w"], small["w"], rtol=1e-5)

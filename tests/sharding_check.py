"""Run as a script under XLA_FLAGS=--xla_force_host_platform_device_count=8 by test_sharding.py.

Trains a few steps of a stage on a 1-device mesh and on an 8-device data-parallel mesh
from the same initial state and batches, and checks that losses and parameters agree.
"""

import sys

import jax
import numpy as np

from flam_jax.lib import optim, sharding, trainer
from tests import stage_fixtures


def run(stage_name: str, num_steps: int = 3) -> None:
  assert jax.device_count() == 8, jax.devices()
  config, stage, batches = stage_fixtures.make(stage_name, batch_size=8, num_batches=num_steps)
  results = {}
  for num_devices in (1, 8):
    mesh = sharding.make_mesh(1, devices=jax.devices()[:num_devices])
    tx = optim.make_optimizer(config.optim, config.num_train_steps)
    state = trainer.create_train_state(stage, config, batches[0], mesh, tx)
    step = trainer.jit_train_step(stage, config, mesh, tx)
    losses = []
    for batch in batches:
      state, metrics = step(state, sharding.to_global_batch(batch, mesh))
      losses.append(float(metrics["loss"]))
    results[num_devices] = (np.array(losses), jax.device_get(state.params))
  (loss1, params1), (loss8, params8) = results[1], results[8]
  np.testing.assert_allclose(loss8, loss1, rtol=2e-5, atol=1e-6)
  # Reduction order differs across devices; Adam turns float noise in near-zero gradients
  # into updates of up to ~lr, so parameters agree to ~1e-5 rather than bitwise.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), params8, params1)
  print(f"{stage_name}: losses 1 device {loss1}, 8 devices {loss8}: equal")


if __name__ == "__main__":
  for name in sys.argv[1:]:
    run(name)

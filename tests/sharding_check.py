"""Run as a script under XLA_FLAGS=--xla_force_host_platform_device_count=8 by test_sharding.py.

    python -m tests.sharding_check STAGE MODEL_AXIS_SIZE

Trains a few steps of a stage on a 1-device mesh and on an 8-device [8 / MODEL_AXIS_SIZE,
MODEL_AXIS_SIZE] mesh (data parallel for 1, FSDP over the model axis otherwise) from the
same initial state and batches, checks that losses and parameters agree and that FSDP
shards the state, and prints the per-device state memory.
"""

import sys

import jax
import numpy as np

from flam_jax.lib import optim, sharding, trainer
from tests import stage_fixtures


def run(stage_name: str, model_axis_size: int, remat_chunks: int = 0, num_steps: int = 3) -> None:
  """remat_chunks > 0: lam.remat on, each block recomputing that many slices of its batch."""
  assert jax.device_count() == 8, jax.devices()
  config, stage, batches = stage_fixtures.make(stage_name, batch_size=8, num_batches=num_steps)
  if remat_chunks:
    config.lam.remat, config.lam.remat_chunks = True, remat_chunks
    stage = stage_fixtures.make_lam_stage(config)
  results, memory = {}, {}
  for num_devices, axis in ((1, 1), (8, model_axis_size)):
    mesh = sharding.make_mesh(axis, devices=jax.devices()[:num_devices])
    tx = optim.make_optimizer(config.optim, config.num_train_steps)
    state = trainer.create_train_state(stage, config, batches[0], mesh, tx)
    step = trainer.jit_train_step(stage, config, mesh, tx)
    losses = []
    for batch in batches:
      state, metrics = step(state, sharding.to_global_batch(batch, mesh))
      losses.append(float(metrics["loss"]))
    memory[num_devices] = (sharding.bytes_per_device(state.params),
                           sharding.bytes_per_device(state.opt_state))
    results[num_devices] = (np.array(losses), jax.device_get(state.params))
  (loss1, params1), (loss8, params8) = results[1], results[8]
  np.testing.assert_allclose(loss8, loss1, rtol=2e-5, atol=1e-6)
  # Reduction order differs across devices; Adam turns float noise in near-zero gradients
  # into updates of up to ~lr, so parameters agree to ~1e-5 rather than bitwise.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), params8, params1)
  (p1, o1), (p8, o8) = memory[1], memory[8]
  if model_axis_size > 1:  # Small arrays (biases of odd size) may stay replicated.
    assert p8 < 1.5 * p1 / model_axis_size and o8 < 1.5 * o1 / model_axis_size, memory
  else:
    assert (p8, o8) == (p1, o1), memory
  print(f"{stage_name}, model axis {model_axis_size}, remat chunks {remat_chunks}: losses 1 device {loss1}, 8 devices "
        f"{loss8}: equal; per-device params {p1 / 2**10:.1f} -> {p8 / 2**10:.1f} KiB, "
        f"optimizer state {o1 / 2**10:.1f} -> {o8 / 2**10:.1f} KiB")


if __name__ == "__main__":
  run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)

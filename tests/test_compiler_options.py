"""The configs' XLA:CPU options (`trainer.compiler_options`): they reach XLA and change the
kernels of the train step, not its results."""

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from configs import multigrid as multigrid_config
from flam_jax.lib import optim, sharding, trainer
from tests import stage_fixtures

YNN = "xla_cpu_experimental_ynn_fusion_type"


def test_shipped_configs_set_the_option_for_the_cpu_tokenizer_step_only():
  config = multigrid_config.get_config("tokenizer")
  assert trainer.compiler_options(config) == {YNN: "LIBRARY_FUSION_TYPE_DOT"}
  config.cpu_compiler_options.tokenizer[YNN] = ""  # "" leaves the option to XLA.
  assert trainer.compiler_options(config) is None
  assert trainer.compiler_options(multigrid_config.get_config("flam")) is None


def _two_steps(stage_name: str, fusion_types: str):
  """Losses, final params and the compiled step's HLO text of two train steps."""
  config, stage, batches = stage_fixtures.make(stage_name, batch_size=4, num_batches=2)
  config.cpu_compiler_options[stage_name] = ConfigDict({YNN: fusion_types})
  mesh = sharding.make_mesh(1, devices=jax.devices()[:1])
  tx = optim.make_optimizer(config.optim, config.num_train_steps)
  state = trainer.create_train_state(stage, config, batches[0], mesh, tx)
  step = trainer.jit_train_step(stage, config, mesh, tx)
  # Compiled once: its HLO is read and the same executable runs the steps.
  compiled = step.lower(state, sharding.to_global_batch(batches[0], mesh)).compile()
  hlo = compiled.as_text()
  losses = []
  for batch in batches:
    state, metrics = compiled(state, sharding.to_global_batch(batch, mesh))
    losses.append(float(metrics["loss"]))
  return np.array(losses), jax.device_get(state.params), hlo


@pytest.mark.parametrize("stage_name", ["tokenizer", "lam"])
def test_ynnpack_fusion_keeps_the_step_numerics(stage_name):
  loss_xla, params_xla, hlo_xla = _two_steps(stage_name, "")
  loss_ynn, params_ynn, hlo_ynn = _two_steps(stage_name, "LIBRARY_FUSION_TYPE_DOT")
  # XLA's default hands single dots, convolutions and reductions to YNNPACK; DOT dots only.
  assert hlo_ynn.count("__ynn_fusion") != hlo_xla.count("__ynn_fusion"), "the option did not reach XLA"
  np.testing.assert_allclose(loss_ynn, loss_xla, rtol=2e-5, atol=1e-6)
  # Other summation orders; Adam turns float noise in near-zero gradients into ~lr updates.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
               params_ynn, params_xla)

"""per_stage overrides: applied to their stage, unknown keys rejected."""

import pytest

from configs import quickstart
from flam_jax.errors import ConfigError
from flam_jax.lib.config_utils import stage_config


def test_per_stage_overrides_apply_and_reject_unknown_keys():
  config = quickstart.get_config()
  tok = stage_config(config, "tokenizer")
  assert tok.stage == "tokenizer" and tok.num_train_steps == 1500
  assert tok.data.window_length == 1
  assert stage_config(config, "lam").num_train_steps == config.num_train_steps
  config.per_stage.tokenizer.num_train_stepz = 5
  with pytest.raises(ConfigError, match="num_train_stepz"):
    stage_config(config, "tokenizer")

"""Tiny configs and random batches for stage-level tests (no dataset on disk needed)."""

import numpy as np

from configs import quickstart


def tiny_config(stage: str = "tokenizer"):
  config = quickstart.get_config()
  config.stage = stage
  config.num_train_steps = 10
  config.data.image_size = 16
  config.data.window_length = 1
  config.tokenizer.encoder_channels = (8, 8)
  config.tokenizer.z_channels = 8
  config.tokenizer.codebook_dim = 8
  config.tokenizer.levels = (4, 4, 2)
  config.optim.warmup_steps = 2
  return config


def random_batches(config, batch_size: int, num_batches: int, num_agents: int = 2, seed: int = 0):
  rng = np.random.default_rng(seed)
  t, s = config.data.window_length, config.data.image_size
  return [dict(
      frames=rng.integers(0, 256, (batch_size, t, s, s, 3), dtype=np.uint8),
      actions=rng.integers(0, 4, (batch_size, t - 1, num_agents), dtype=np.int32),
  ) for _ in range(num_batches)]


def make(stage_name: str, batch_size: int, num_batches: int):
  """(config, stage, list of numpy batches with just the stage's fields)."""
  config = tiny_config(stage_name)
  if stage_name == "tokenizer":
    from flam_jax.stages.tokenizer import TokenizerStage  # pylint: disable=g-import-not-at-top
    stage = TokenizerStage(config)
  else:
    raise ValueError(stage_name)
  batches = [{k: b[k] for k in stage.data_fields}
             for b in random_batches(config, batch_size, num_batches)]
  return config, stage, batches

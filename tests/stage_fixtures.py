"""Tiny configs, stages and random batches for stage-level tests (no dataset on disk needed)."""

import jax
import jax.numpy as jnp
import numpy as np

from configs import quickstart

GRID = (4, 4)  # 16x16 frames through a stride-4 tokenizer.
NUM_AGENTS = 2


def tiny_config(stage: str = "tokenizer", variant: str = "flam"):
  config = quickstart.get_config(variant)
  config.stage = stage
  config.num_train_steps = 10
  config.data.image_size = 16
  config.data.window_length = 1 if stage == "tokenizer" else 4
  config.tokenizer.encoder_channels = (8, 8)
  config.tokenizer.z_channels = 8
  config.tokenizer.codebook_dim = 8
  config.tokenizer.levels = (4, 4, 2)  # 32 codes.
  config.optim.warmup_steps = 2
  lam = config.lam
  lam.d_model, lam.num_heads, lam.num_blocks, lam.aggregator_blocks = 16, 2, 1, 1
  lam.num_slots, lam.slot_iterations, lam.prediction_steps = 2, 1, 2
  lam.subtoken_sizes = (4, 8)
  lam.scene_action_levels = (4, 4)
  return config


def random_batches(config, batch_size: int, num_batches: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  t, s = config.data.window_length, config.data.image_size
  codes = int(np.prod(config.tokenizer.levels))
  return [dict(
      frames=rng.integers(0, 256, (batch_size, t, s, s, 3), dtype=np.uint8),
      tokens=rng.integers(0, codes, (batch_size, t) + GRID, dtype=np.int32),
      actions=rng.integers(0, 4, (batch_size, t - 1, NUM_AGENTS), dtype=np.int32),
  ) for _ in range(num_batches)]


def make_lam_stage(config, seed: int = 0):
  """A LatentActionStage on a randomly initialised (frozen) tokenizer."""
  from flam_jax.stages.lam import LatentActionStage  # pylint: disable=g-import-not-at-top
  from flam_jax.lib.models import make_tokenizer  # pylint: disable=g-import-not-at-top
  tokenizer = make_tokenizer(config)
  s = config.data.image_size
  params = tokenizer.init(jax.random.PRNGKey(seed), jnp.zeros((1, s, s, 3)))["params"]
  LatentActionStage.check_config(config)
  return LatentActionStage(config, tokenizer, params, grid=GRID, num_agents=NUM_AGENTS)


def make(stage_name: str, batch_size: int, num_batches: int, variant: str = "flam"):
  """(config, stage, list of numpy batches with just the stage's fields)."""
  config = tiny_config(stage_name, variant)
  if stage_name == "tokenizer":
    from flam_jax.stages.tokenizer import TokenizerStage  # pylint: disable=g-import-not-at-top
    stage = TokenizerStage(config)
  elif stage_name == "lam":
    stage = make_lam_stage(config)
  else:
    raise ValueError(stage_name)
  batches = [{k: b[k] for k in stage.data_fields}
             for b in random_batches(config, batch_size, num_batches)]
  return config, stage, batches

"""Multigrid at the paper's scale (Table 4, Appendix B): 128x128 frames, 32x32 grid, 4 agents.

Usage: python train.py --config=configs/multigrid.py --workdir=W [--config.key=value ...]
"""

from ml_collections import ConfigDict


def get_config(arg: str = "tokenizer") -> ConfigDict:
  config = ConfigDict()
  config.stage = "tokenizer"
  config.seed = 0
  config.num_train_steps = 50_000
  config.batch_size = 64  # Global, over all devices and processes: windows per step.
  config.log_every_steps = 100
  config.image_every_steps = 2_000
  config.checkpoint_every_steps = 2_000
  config.keep_checkpoints = 3
  config.progress_bar = True
  config.compute_dtype = "float32"  # or "bfloat16": bf16 compute, float32 params and losses.

  config.data = ConfigDict()
  config.data.dir = ""  # Empty: <workdir>/data, generated there if missing (see data.generate).
  config.data.image_size = 128
  config.data.window_length = 1  # Frames per example; the tokenizer trains on single frames.
  config.data.window_stride = 1
  config.data.num_workers = 4
  config.data.prefetch_buffer_size = 4
  config.data.generate = ConfigDict(dict(
      enabled=True, num_agents=4, grid_size=32, episodes=2_000, episode_length=32,
      sticky_prob=0.5, wall_density=0.05, seed=0))

  config.tokenizer = ConfigDict()
  config.tokenizer.encoder_channels = (64, 128, 128)  # IMPALA stages: 128 px -> 16x16 patches.
  config.tokenizer.z_channels = 128
  config.tokenizer.codebook_dim = 128
  config.tokenizer.levels = (4, 4, 4, 4, 4)  # FSQ: 1024 implicit codes.

  config.optim = ConfigDict(dict(
      learning_rate=3e-4, warmup_steps=1_000, final_lr_fraction=0.1, weight_decay=1e-4,
      grad_clip_norm=1.0, b1=0.9, b2=0.99))

  config.mesh = ConfigDict(dict(model_axis_size=1))

  if arg not in ("tokenizer",):
    raise ValueError(f"unknown variant {arg!r} of configs/multigrid.py; use :tokenizer")
  return config

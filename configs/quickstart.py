"""The embedded default: a small generated Multigrid, trained end to end on a laptop CPU.

    python train.py --config=configs/quickstart.py --workdir=workdirs/quickstart

64x64 frames of an 8x8 grid with 2 agents; a small IMPALA tokenizer (8x8 patches).
Finishes in about 10 minutes on 2 CPU cores.
"""

from configs import multigrid


def get_config(arg: str = "tokenizer"):
  config = multigrid.get_config(arg)
  config.num_train_steps = 600
  config.batch_size = 16
  config.log_every_steps = 50
  config.image_every_steps = 200
  config.checkpoint_every_steps = 200

  config.data.image_size = 64
  config.data.num_workers = 0
  config.data.prefetch_buffer_size = 2
  config.data.generate.update(dict(num_agents=2, grid_size=8, episodes=100, episode_length=16))

  config.tokenizer.encoder_channels = (16, 32, 32)
  config.tokenizer.z_channels = 32
  config.tokenizer.codebook_dim = 32

  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 50
  return config

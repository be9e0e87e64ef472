"""AdamW with linear warmup, cosine decay and global-norm gradient clipping."""

import optax
from ml_collections import ConfigDict


def make_schedule(optim: ConfigDict, num_train_steps: int) -> optax.Schedule:
  warmup = min(optim.warmup_steps, max(num_train_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=optim.learning_rate,
      warmup_steps=warmup,
      decay_steps=max(num_train_steps, warmup + 1),
      end_value=optim.learning_rate * optim.final_lr_fraction)


def make_optimizer(optim: ConfigDict, num_train_steps: int) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(optim.grad_clip_norm),
      optax.adamw(make_schedule(optim, num_train_steps), b1=optim.b1, b2=optim.b2,
                  weight_decay=optim.weight_decay))

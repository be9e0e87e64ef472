"""Trained models from a workdir: the frozen tokenizer and the latent action world model.

    <workdir>/tokenizer/checkpoints   stage 1 (or config.lam.tokenizer_checkpoint)
    <workdir>/lam/checkpoints         stage 2, with the run's config

Used by the lam stage (its frozen tokenizer), evaluation and generation.
"""

import os
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from flam_jax.data import pipeline
from flam_jax.data import tokens as tokens_lib
from flam_jax.errors import CheckpointError, ConfigError
from flam_jax.lib import checkpointing, models
from flam_jax.modules.tokenizer import Tokenizer


def tokenizer_checkpoint_dir(config: ConfigDict, workdir: str) -> str:
  """config.lam.tokenizer_checkpoint (a stage dir or its checkpoints/), or the workdir's."""
  path = config.lam.tokenizer_checkpoint or os.path.join(workdir, "tokenizer", "checkpoints")
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  return os.path.abspath(path)


def tokenizer_cache_tag(checkpoint_dir: str, step: int, params) -> dict:
  """What names a token cache (`tokens.cache_tokens`): the tokenizer's checkpoint, step and
  exact parameters, so every stage that shares a cache builds the same tag."""
  return dict(checkpoint=checkpoint_dir, step=int(step),
              params=checkpointing.tree_fingerprint(params))


def cache_frozen_tokens(tokenizer: Tokenizer, params, tag: dict, data_dir: str,
                        tokens_dir: str, progress: bool = True) -> dict:
  """Encodes every frame of `data_dir` with the frozen tokenizer into `tokens_dir` (one jit
  of Tokenizer.encode on uint8 frames) unless a cache with the same `tag`
  (`tokenizer_cache_tag`) and data is there; returns the token dataset's metadata. The one
  way the latent action and policy stages (and the benchmarks) make tokens."""
  encode = jax.jit(lambda p, f: tokenizer.apply(
      {"params": p}, f.astype(jnp.float32) / 255.0, method=Tokenizer.encode)[1])
  return tokens_lib.cache_tokens(data_dir, tokens_dir, lambda f: encode(params, f),
                                 tag=tag, progress=progress)


def load_frozen_tokenizer(config: ConfigDict, workdir: str):
  """(Tokenizer module, params, checkpoint dir, step) of the tokenizer the lam stage builds on."""
  path = tokenizer_checkpoint_dir(config, workdir)
  fix = (f"train one with `python train.py --config=<config>:tokenizer --workdir={workdir}` "
         "or set --config.lam.tokenizer_checkpoint")
  if not os.path.isdir(path):
    raise CheckpointError(f"no tokenizer checkpoint at {path}; {fix}")
  ckpt = checkpointing.Checkpointer(path, async_save=False)
  step = ckpt.latest_good_step()  # Falls back past damaged steps, with a warning.
  if step is None:
    raise CheckpointError(f"no complete tokenizer checkpoint in {path}; {fix}")
  saved = ckpt.restore_config(step)
  if saved.get("stage") != "tokenizer":
    raise CheckpointError(f"{path} holds a {saved.get('stage')!r} checkpoint, not a tokenizer; "
                          "point --config.lam.tokenizer_checkpoint at a tokenizer stage")
  checkpointing.check_compatible(saved, config, ("tokenizer", "data.image_size"), path)
  params = ckpt.restore_params(step)
  ckpt.close()
  tokenizer = models.make_tokenizer(config)
  check_tokenizer_params(tokenizer, params, config.data.image_size, path, fix)
  return tokenizer, params, path, step


def check_tokenizer_params(tokenizer, params, image_size: int, path: str, fix: str) -> None:
  """CheckpointError naming the first parameter whose shape the current code does not make
  (a tokenizer saved by an older version of the architecture), before any training step."""
  frames = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  expected = jax.eval_shape(tokenizer.init, jax.random.PRNGKey(0), frames)["params"]
  want = {checkpointing.leaf_name(k): v.shape
          for k, v in jax.tree_util.tree_leaves_with_path(expected)}
  have = {checkpointing.leaf_name(k): tuple(np.shape(v))
          for k, v in jax.tree_util.tree_leaves_with_path(params)}
  for name in sorted(set(want) | set(have)):
    if want.get(name) != have.get(name):
      raise CheckpointError(
          f"the tokenizer checkpoint in {path} does not fit this version's tokenizer "
          f"(parameter {name}: saved {have.get(name)}, expected {want.get(name)}); it was "
          f"trained by an older architecture: {fix}")


def load_trained(workdir: str, step: Optional[int] = None,
                 init_slot_iterations: int = 0) -> Tuple[models.LoadedWorldModel, dict, int]:
  """(loaded world model, its params, step) trained in `workdir` (latest step by default).

  The loaded model carries the run's saved config, the frozen tokenizer and its parameters.
  `init_slot_iterations` > 0 replaces the saved lam.init_slot_iterations: the slot-attention
  iterations share their parameters, so frame 0 can be given more at evaluation only.
  """
  workdir = os.path.abspath(workdir)
  path = os.path.join(workdir, "lam", "checkpoints")
  ckpt = checkpointing.Checkpointer(path, async_save=False) if os.path.isdir(path) else None
  step = ckpt.latest_good_step() if (ckpt and step is None) else step
  if ckpt is None or step is None:
    raise CheckpointError(f"no latent action model checkpoint in {path}; train one with "
                          f"`python train.py --config=<config> --workdir={workdir}`")
  config = ConfigDict(ckpt.restore_config(step))
  params = ckpt.restore_params(step)
  ckpt.close()
  if init_slot_iterations:
    if init_slot_iterations < config.lam.slot_iterations:
      raise ConfigError(f"eval.init_slot_iterations={init_slot_iterations} is below the run's "
                        f"lam.slot_iterations={config.lam.slot_iterations} ({workdir}); use at "
                        "least that many, or 0 for what the run was trained with")
    config.lam.init_slot_iterations = int(init_slot_iterations)
  tokenizer, tokenizer_params, _, _ = load_frozen_tokenizer(config, workdir)
  meta = pipeline.load_metadata(config.data.dir)
  grid = (config.data.image_size // tokenizer.stride,) * 2
  loaded = models.assemble(config, tokenizer, tokenizer_params, grid=grid,
                           num_agents=meta["config"].get("num_agents", 0),
                           num_actions=meta["config"].get("num_actions", 4))
  return loaded, params, step

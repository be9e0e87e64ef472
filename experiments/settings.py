"""Experimental settings: overrides of configs/multigrid.py (Table 4) and the configs they give.

`tiny` (tests), `small` (a CPU) and `paper` (Table 4, a GPU/TPU); `tokenizer_config` and
`lam_config` build a run's configs, `settings_summary` lists a setting's hyperparameters.
"""

import dataclasses
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np
from ml_collections import ConfigDict

from configs import multigrid as multigrid_config
from flam_jax.errors import ConfigError

SETTINGS = ("tiny", "small", "cpu", "cpu_long", "paper")
VARIANT_TITLES = dict(wm="WM", lam="LAM", oc_lam="OC+LAM", flam="FLAM",
                      lam_joint="LAM (4^n codes)", flam_v2="FLAM (later version)")
ACTIONS_PER_AGENT = 4  # Multigrid: turn left / turn right / forward / stay.
MAX_SCENE_FACTORS = 4  # LAM's joint scene codebook: 4 levels per agent, at most 4^4 = 256 codes.
PAPER_ACTION_LEVELS = (2, 2)  # Table 4, Multigrid: 4 action codes (LAM's scene action too).


@dataclasses.dataclass(frozen=True)
class Setting:
  """Overrides of configs/multigrid.py (Table 4) for one experimental setting.

  Attributes:
    name: tiny | small | paper.
    common: flattened config keys set in both stages.
    tokenizer: keys of the tokenizer stage (Sec 4.1).
    lam: keys of the latent action stage (Sec 4.2).
    eval: keys of the evaluator's settings (flam_jax/lib/evaluator.py EVAL_DEFAULTS).
    table1_agents: agents of Table 1's Multigrid (4 in the paper).
    entities: Table 2's numbers of moving entities.
  """

  name: str
  common: Dict[str, Any]
  tokenizer: Dict[str, Any]
  lam: Dict[str, Any]
  eval: Dict[str, Any]
  table1_agents: int = 4
  entities: Tuple[int, ...] = (1, 2, 4, 8, 16)


_SETTINGS = {
    # Table 4: 128 px frames of a 32x32 grid, 16x16 patches, d_model 256, 10-frame
    # windows, 5 prediction steps, 50k steps each; for a GPU/TPU.
    "paper": Setting(
        name="paper", common={"data.generate.episodes": 2000},
        tokenizer={}, lam={}, eval={"batch_size": 64}),
    # A CPU-sized Multigrid: 32 px frames of an 8x8 grid, a 2-stage tokenizer giving one
    # token per 4x4-pixel cell (8x8 patches, 1024 codes), a d_model 64 world model
    # (configs/quickstart.py's), 6-frame windows, 2 prediction steps.
    "small": Setting(
        name="small",
        common={
            "data.image_size": 32, "data.num_workers": 0, "data.prefetch_buffer_size": 2,
            "data.generate.grid_size": 8, "data.generate.episodes": 300,
            "data.generate.episode_length": 16,
            "tokenizer.encoder_channels": (16, 32), "tokenizer.z_channels": 32,
            "tokenizer.codebook_dim": 32, "log_every_steps": 50, "image_every_steps": 1000,
            "checkpoint_every_steps": 500, "optim.warmup_steps": 50,
        },
        tokenizer={"num_train_steps": 1000, "batch_size": 32, "optim.learning_rate": 1e-3},
        lam={
            "num_train_steps": 600, "batch_size": 8, "optim.learning_rate": 1e-3,
            "data.window_length": 6, "lam.d_model": 64, "lam.num_heads": 4,
            "lam.num_blocks": 1, "lam.aggregator_blocks": 1, "lam.slot_iterations": 2,
            "lam.prediction_steps": 2, "lam.remat": False,
        },
        eval={"batch_size": 32, "probe_steps": 300}),
    # The quickstart's recipe (configs/quickstart.py, the first size at which FLAM beat copy
    # on a CPU) with 4 agents: 64 px frames of an 8x8 grid, one token per cell (8x8
    # patches, 1024 codes), a 1500-step tokenizer at lr 2e-3 (its codes then show the
    # headings), world models of d_model 64 for 6000 steps (3000 until 2026-12-06: with
    # grid positions FLAM's slots bind by step ~2500 and its action gain keeps rising to
    # step 6000; experiments/README.md, Table 1); 15-25 minutes a world model on 2 CPU
    # cores.
    "cpu": Setting(
        name="cpu",
        common={
            "data.image_size": 64, "data.num_workers": 0, "data.prefetch_buffer_size": 2,
            "data.generate.grid_size": 8, "data.generate.episodes": 400,
            "data.generate.episode_length": 16,
            "tokenizer.encoder_channels": (16, 32, 32), "tokenizer.z_channels": 32,
            "tokenizer.codebook_dim": 32, "log_every_steps": 100, "image_every_steps": 1000,
            "checkpoint_every_steps": 500, "optim.warmup_steps": 50, "progress_bar": False,
        },
        tokenizer={"num_train_steps": 1500, "batch_size": 16, "optim.learning_rate": 2e-3},
        lam={
            "num_train_steps": 6000, "batch_size": 8, "optim.learning_rate": 1e-3,
            "data.window_length": 6, "lam.d_model": 64, "lam.num_heads": 4,
            "lam.num_blocks": 1, "lam.aggregator_blocks": 1, "lam.slot_iterations": 2,
            "lam.prediction_steps": 2, "lam.remat": False,
        },
        eval={"batch_size": 32, "probe_steps": 300, "window_stride": 2}),
    # Test-only: 16 px frames of a 4x4 grid, a handful of episodes, 2-3 steps a stage.
    "tiny": Setting(
        name="tiny",
        common={
            "data.image_size": 16, "data.num_workers": 0, "data.prefetch_buffer_size": 2,
            "data.generate.grid_size": 4, "data.generate.episodes": 12,
            "data.generate.episode_length": 8, "data.generate.wall_density": 0.0,
            "tokenizer.encoder_channels": (8, 8), "tokenizer.z_channels": 8,
            "tokenizer.codebook_dim": 8, "tokenizer.levels": (4, 4, 2),
            "log_every_steps": 1000, "image_every_steps": 1000, "checkpoint_every_steps": 1000,
            "optim.warmup_steps": 1, "progress_bar": False,
        },
        tokenizer={"num_train_steps": 3, "batch_size": 4},
        lam={
            "num_train_steps": 2, "batch_size": 4, "data.window_length": 4,
            "lam.d_model": 16, "lam.num_heads": 2, "lam.num_blocks": 1,
            "lam.aggregator_blocks": 1, "lam.slot_iterations": 1, "lam.prediction_steps": 2, "lam.remat": False,
            "lam.subtoken_sizes": (4, 8),
        },
        eval={"batch_size": 4, "max_batches": 1, "probe_steps": 10},
        table1_agents=2, entities=(1, 2)),
}


def _cpu_long() -> Setting:
  """The cpu setting with 5x the episodes and 9000 steps: what FLAM needed with 4 agents
  before slot attention took grid positions.

  Measured 2026-11-29 (experiments/README.md): at 3000 steps the slots had not bound before
  the learning rate decayed; at 9000 steps on 400 episodes FLAM memorised them (train token
  accuracy 0.983, test 0.948 against copy's 0.950). About 20-30 minutes a world model on
  2 CPU cores. It keeps the free per-patch position vectors its runs were made with
  (configs/multigrid.py's default became grid positions on 2026-12-06), so its results
  and the policy evaluations kept from it (experiments/results/policy/cpu_long) stay
  what this setting reproduces.
  """
  cpu = _SETTINGS["cpu"]
  return dataclasses.replace(
      cpu, name="cpu_long", common={**cpu.common, "data.generate.episodes": 2000},
      tokenizer={**cpu.tokenizer, "num_train_steps": 3 * cpu.tokenizer["num_train_steps"]},
      lam={**cpu.lam, "num_train_steps": 9000, "lam.slot_position_embedding": "learned"})


_SETTINGS["cpu_long"] = _cpu_long()


def get_setting(name: str) -> Setting:
  if name not in _SETTINGS:
    raise ConfigError(f"--setting={name!r} is not one of {SETTINGS}")
  return _SETTINGS[name]


def scaled(steps: int, scale: float) -> int:
  """Training steps times --steps_scale, at least 1."""
  return max(1, int(round(steps * scale)))


def _update(config: ConfigDict, overrides: Dict[str, Any], where: str) -> None:
  """Sets dotted keys, refusing unknown ones (update_from_flattened_dict would add them)."""
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node.get(part) if isinstance(node, ConfigDict) else None
    if not isinstance(node, ConfigDict) or leaf not in node:
      raise ConfigError(f"{where} names an unknown config key {key!r}; check it against "
                        "configs/multigrid.py")
    node[leaf] = value


def scene_action_levels(num_agents: int, joint: bool = False) -> Tuple[int, ...]:
  """LAM / OC+LAM's scene codebook.

  joint=False: Table 4's action codebook for Multigrid, FSQ levels [2, 2] (4 codes), the
  same size as FLAM's per-slot codebook, whatever the number of agents (the paper's
  setting: one scene action must summarise every agent's move). joint=True: 4 levels per
  agent, one code per joint action of up to 4 agents (4^n, capped at 256 codes: 4^16 for
  16 agents would not train), the larger codebook Table 1 reports beside it.
  """
  if not joint:
    return PAPER_ACTION_LEVELS
  return (ACTIONS_PER_AGENT,) * max(1, min(num_agents, MAX_SCENE_FACTORS))


def tokenizer_config(setting: Setting, num_agents: int, data_dir: str,
                     steps_scale: float = 1.0) -> ConfigDict:
  """The tokenizer stage's config for `num_agents`' dataset (seed 0)."""
  config = multigrid_config.get_config("tokenizer")
  _update(config, setting.common, f"setting {setting.name}")
  _update(config, setting.tokenizer, f"setting {setting.name} (tokenizer)")
  config.stage = "tokenizer"
  config.data.window_length = 1
  config.data.dir = os.path.abspath(data_dir)
  config.data.generate.num_agents = num_agents
  config.num_train_steps = scaled(config.num_train_steps, steps_scale)
  return config


def lam_config(setting: Setting, variant: str, num_agents: int, seed: int, data_dir: str,
               tokenizer_dir: str, steps_scale: float = 1.0,
               overrides: Optional[Dict[str, Any]] = None) -> ConfigDict:
  """A latent action stage config: variant of configs/multigrid.py, setting, overrides.

  K (lam.num_slots) is the number of agents plus one for the slot variants (one factor per
  moving entity, Table 2, and one for the background and walls: with K = agents, slot
  attention's softmax over slots makes one agent share its slot with the background; on
  the toy of tests/test_learning.py K = 2 for 2 entities gave action gain 0.19 against 0.43
  with K = 3); LAM's scene codebook is `scene_action_levels(num_agents)`.
  """
  config = multigrid_config.get_config(variant)
  _update(config, setting.common, f"setting {setting.name}")
  _update(config, setting.lam, f"setting {setting.name} (lam)")
  config.stage = "lam"
  config.seed = seed
  config.data.dir = os.path.abspath(data_dir)
  config.data.generate.num_agents = num_agents
  config.lam.tokenizer_checkpoint = os.path.join(os.path.abspath(tokenizer_dir), "tokenizer")
  # Every variant and seed on this dataset reads the same tokens: encode them once.
  config.lam.token_cache_dir = os.path.join(os.path.abspath(tokenizer_dir), "tokens")
  config.lam.num_slots = num_agents + 1
  config.lam.scene_action_levels = scene_action_levels(num_agents)
  _update(config, overrides or {}, f"overrides of {variant}")
  config.num_train_steps = scaled(config.num_train_steps, steps_scale)
  return config


def settings_summary(setting: Setting, steps_scale: float = 1.0) -> Dict[str, Any]:
  """The main hyperparameters of a setting (for results.md and results.json)."""
  tok = tokenizer_config(setting, setting.table1_agents, "/")
  lam = lam_config(setting, "flam", setting.table1_agents, 0, "/", "/", steps_scale)
  grid = tok.data.image_size // 2 ** len(tok.tokenizer.encoder_channels)
  return {
      "image_size": tok.data.image_size, "grid_cells": tok.data.generate.grid_size,
      "token_grid": f"{grid}x{grid}", "tokenizer_codes": int(np.prod(tok.tokenizer.levels)),
      "episodes": tok.data.generate.episodes,
      "episode_length": tok.data.generate.episode_length,
      "tokenizer_steps": scaled(tok.num_train_steps, steps_scale),
      "tokenizer_batch": tok.batch_size, "lam_steps": lam.num_train_steps,
      "lam_batch": lam.batch_size, "d_model": lam.lam.d_model, "blocks": lam.lam.num_blocks,
      "window_length": lam.data.window_length, "prediction_steps": lam.lam.prediction_steps,
      "action_levels": list(lam.lam.action_levels), "eval": dict(setting.eval),
  }


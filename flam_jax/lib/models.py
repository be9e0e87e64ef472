"""Models built from a config: the tokenizer and the latent action world model, in one place.

`make_tokenizer` and `build_world_model` are what the training stages, evaluation,
generation and benchmarks call (SAVi's `build_model_from_config`); `LoadedWorldModel`
holds a world model with the frozen tokenizer it was trained on, which is all the
rollout API (`flam_jax.lib.rollout`) needs.
"""

import dataclasses
from typing import Any, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from flam_jax.errors import ConfigError
from flam_jax.modules import fsq
from flam_jax.modules.tokenizer import KINDS, Tokenizer
from flam_jax.modules.world_model import FACTORED_ENTITIES, LatentActionWorldModel

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# lam keys added after runs were saved, and the value those runs were trained with: the
# world model is built with it where a saved config lacks the key, and such a checkpoint
# resumes under a config that holds it (LatentActionStage.checkpoint_key_defaults).
LAM_KEY_DEFAULTS = {"lam.slot_init": "learned", "lam.init_slot_iterations": 0,
                    "lam.slot_position_embedding": "learned",
                    "lam.slot_decoder_position_embedding": "learned",
                    "lam.slot_reconstruction_changed_weight": 1.0,
                    "lam.rollout_starts": "full"}


def compute_dtype(config: ConfigDict):
  """config.compute_dtype as a jnp dtype; one-line error for anything else."""
  if config.compute_dtype not in COMPUTE_DTYPES:
    raise ConfigError(f"config.compute_dtype={config.compute_dtype!r} is not one of "
                      f"{sorted(COMPUTE_DTYPES)}; set --config.compute_dtype=float32 or bfloat16")
  return COMPUTE_DTYPES[config.compute_dtype]


def make_tokenizer(config: ConfigDict) -> Tokenizer:
  """The tokenizer declared by `config.tokenizer`, checked against `config.data.image_size`."""
  tok = config.tokenizer
  kind = tok.get("kind", "impala")  # Configs saved before the key existed: IMPALA.
  if kind not in KINDS:
    raise ConfigError(f"config.tokenizer.kind={kind!r} is not one of {KINDS}; set "
                      "--config.tokenizer.kind accordingly")
  stride = 2 ** len(tok.encoder_channels)
  if config.data.image_size % stride:
    raise ConfigError(
        f"config.data.image_size={config.data.image_size} is not divisible by the tokenizer "
        f"stride {stride} (2^len(tokenizer.encoder_channels)); use a multiple of {stride}")
  return Tokenizer(encoder_channels=tuple(tok.encoder_channels), z_channels=tok.z_channels,
                   codebook_dim=tok.codebook_dim, levels=tuple(tok.levels),
                   patch_local=bool(tok.get("patch_local", False)),
                   dtype=compute_dtype(config), kind=kind)


def build_world_model(config: ConfigDict, *, num_patches: int, num_agents: int,
                      feature_dim: int, num_actions: int = 4) -> LatentActionWorldModel:
  """The world model declared by `config.lam` on `num_patches` tokens of `feature_dim`.

  num_actions: discrete actions per agent, for WM's one-hot (Multigrid 4, Procgen 15).
  """
  lam = config.lam
  return LatentActionWorldModel(
      variant=lam.variant, num_patches=num_patches,
      codebook_size=fsq.codebook_size(config.tokenizer.levels),
      d_model=lam.d_model, num_heads=lam.num_heads, num_blocks=lam.num_blocks,
      num_slots=lam.num_slots, slot_iterations=lam.slot_iterations,
      recursive_init=lam.recursive_init, temporal_attention=lam.temporal_attention,
      slot_init=str(lam.get("slot_init", LAM_KEY_DEFAULTS["lam.slot_init"])),
      init_slot_iterations=int(lam.get("init_slot_iterations",
                                       LAM_KEY_DEFAULTS["lam.init_slot_iterations"])),
      slot_position_embedding=str(lam.get(
          "slot_position_embedding", LAM_KEY_DEFAULTS["lam.slot_position_embedding"])),
      slot_decoder_position_embedding=str(lam.get(
          "slot_decoder_position_embedding",
          LAM_KEY_DEFAULTS["lam.slot_decoder_position_embedding"])),
      action_kind=lam.action_kind, action_levels=tuple(lam.action_levels),
      action_latent_dim=lam.action_latent_dim,
      scene_action_levels=tuple(lam.scene_action_levels), num_agents=num_agents,
      num_agent_actions=int(num_actions),
      aggregator_mode=lam.aggregator_mode, subtoken_sizes=tuple(lam.subtoken_sizes),
      aggregator_blocks=lam.aggregator_blocks, feature_dim=feature_dim,
      # Keys newer than some saved configs default to the behaviour those runs had.
      aggregator_residual=bool(lam.get("aggregator_residual", False)),
      aggregator_context_dropout=float(lam.get("aggregator_context_dropout", 0.0)),
      aggregator_parallel=bool(lam.get("aggregator_parallel", False)),
      slot_reconstruction=lam.variant in FACTORED_ENTITIES and bool(
          lam.get("slot_reconstruction_weight", 0.0)),
      # Validation (`config_validation`) refuses this weight without the slot decoder.
      predicted_slot_reconstruction=lam.variant in FACTORED_ENTITIES and bool(
          lam.get("predicted_slot_reconstruction_weight", 0.0)),
      fdm_additive_actions=bool(lam.get("fdm_additive_actions", False)),
      fdm_zero_init_actions=bool(lam.get("fdm_zero_init_actions", True)),
      dtype=compute_dtype(config),
      remat=bool(lam.get("remat", False)),  # Older runs' saved configs lack the key.
      remat_chunks=int(lam.get("remat_chunks", 1)),
      unroll_rollout=not lam.get("remat", False),
      rollout_starts=str(lam.get("rollout_starts", LAM_KEY_DEFAULTS["lam.rollout_starts"])))


def tokenizer_codebook(tokenizer: Tokenizer, tokenizer_params) -> np.ndarray:
  """The frozen codebook, index -> z_q ("ExtractCode", Sec 4.2): [C, Dz], computed once."""
  return np.asarray(jax.jit(lambda p: tokenizer.apply(
      {"params": p}, jnp.arange(tokenizer.codebook_size),
      method=Tokenizer.indices_to_features))(tokenizer_params))


@dataclasses.dataclass(eq=False)
class LoadedWorldModel:
  """A world model on its frozen tokenizer (parameters of the world model kept apart).

  Attributes: config (the run's), model, tokenizer, tokenizer_params, grid (h, w) of
  token patches, num_agents of the dataset, codebook [C, Dz] of the tokenizer.
  """

  config: ConfigDict
  model: LatentActionWorldModel
  tokenizer: Tokenizer
  tokenizer_params: Any
  grid: Tuple[int, int]
  num_agents: int
  codebook: np.ndarray

  @property
  def num_patches(self) -> int:
    return int(np.prod(self.grid))


def assemble(config: ConfigDict, tokenizer: Tokenizer, tokenizer_params, *, grid,
             num_agents: int, num_actions: int = 4) -> LoadedWorldModel:
  """The world model declared by `config` on a given frozen tokenizer."""
  grid = tuple(int(g) for g in grid)
  codebook = tokenizer_codebook(tokenizer, tokenizer_params)
  model = build_world_model(config, num_patches=int(np.prod(grid)), num_agents=int(num_agents),
                            feature_dim=codebook.shape[-1], num_actions=num_actions)
  return LoadedWorldModel(config=config, model=model, tokenizer=tokenizer,
                          tokenizer_params=tokenizer_params, grid=grid,
                          num_agents=int(num_agents), codebook=codebook)

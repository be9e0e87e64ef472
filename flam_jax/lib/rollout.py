"""The rollout API: one path from frames to predicted frames over a loaded world model.

    pixels --encode--> tokens --features (codebook)--> z_q --entities--> s_t (+ slot masks)
    s_t, s_t+1 --infer_actions--> a_t        (or given / sample_actions / ground truth)
    s_0, a_1..P --predict--> s_1..P --aggregator (greedy tokens or regression)--> z_q_1..P
    z_q --decode_pixels--> frames in [0, 1]

The pieces are pure functions of (modules, parameters, arrays), traced inside the
caller's one jit (evaluation's metrics step, the lam stage's training pictures);
`rollout_from_frame` and `infer_clip` are the same pieces jit-compiled over a
`models.LoadedWorldModel` for host callers (generation). The codebook is computed once
per tokenizer (`flam_jax.lib.models.tokenizer_codebook`) and passed in.

Dimension keys: B batch, T frames, P rollout steps, N = h*w token patches, Dz token
feature width, K entities (K slots, or N patches for lam/wm), D entity width, U control
units (`VariantSpec.num_units`), A action width (K|1: per entity or one for the scene),
C codes, M a flattened batch of states, H x W pixels (in generation's `_bhka`/`_hka`
names, h is the number of rollout steps).
"""

import functools
from typing import Dict, Optional, Sequence, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from flam_jax.errors import ConfigError, DataError
from flam_jax.lib import variants
from flam_jax.modules import fsq, latent_action
from flam_jax.modules.tokenizer import Tokenizer
from flam_jax.modules.world_model import LatentActionWorldModel

WorldModel = LatentActionWorldModel


# ---- Tokens and pixels (the frozen tokenizer). ----
def encode(tokenizer: Tokenizer, tokenizer_params, pixels_mHWc) -> jax.Array:
  """Frames [M, H, W, 3] float in [0, 1] -> token indices int32 [M, N]."""
  chex.assert_rank(pixels_mHWc, 4)
  _, tokens_mhw = tokenizer.apply({"params": tokenizer_params}, pixels_mHWc,
                                  method=Tokenizer.encode)
  return tokens_mhw.reshape(pixels_mHWc.shape[0], -1).astype(jnp.int32)


def features(codebook_cd, tokens) -> jax.Array:
  """Token indices [...] -> their z_q [..., Dz] (the codebook lookup training uses too)."""
  return jnp.asarray(codebook_cd)[tokens]


def decode_pixels(tokenizer: Tokenizer, tokenizer_params, features_mnd,
                  grid: Tuple[int, int]) -> jax.Array:
  """z_q [M, N, Dz] -> frames [M, H, W, 3], clipped to [0, 1]."""
  z_q = features_mnd.reshape((features_mnd.shape[0],) + tuple(grid) + (-1,))
  pixels = tokenizer.apply({"params": tokenizer_params}, z_q, method=Tokenizer.decode)
  return jnp.clip(pixels, 0.0, 1.0)


# ---- The world model. ----
def entities(model: WorldModel, params, features_btnd):
  """z_q [B, T, N, Dz] -> (entities [B, T, K, D], slot masks [B, T, K, N] or None)."""
  return model.apply({"params": params}, features_btnd, method=WorldModel.entities)


def infer_actions(model: WorldModel, params, entities_btkd, gt_actions_btm=None, *,
                  deterministic: bool = True) -> Dict[str, Optional[jax.Array]]:
  """The IDM's actions of the T-1 transitions: dict(actions [B, T-1, K|1, A], indices, kl).

  wm returns the one-hot ground-truth actions `gt_actions_btm` [B, T-1, agents] instead.
  """
  return model.apply({"params": params}, entities_btkd, gt_actions_btm,
                     deterministic=deterministic, method=WorldModel.infer_actions)


def predict(model: WorldModel, params, codebook_cd, start_bkd, actions_bpka, start_tokens_bn):
  """The FDM rolled P steps from `start_bkd` with `actions_bpka`, aggregated into tokens.

  `start_tokens_bn` are the start frame's tokens [B, N]: with `aggregator_residual` every
  step is predicted as a change of that frame (classification: its tokens condition the
  decoder; regression: its features are the residual's base), as in training.
  Returns (tokens int32 [B, P, N] or None for regression, z_q [B, P, N, Dz]): greedy
  autoregressive tokens and their codebook features (classification) or the regressed
  features.
  """
  b, p = actions_bpka.shape[:2]
  chex.assert_rank(start_tokens_bn, 2)
  variables = {"params": params}
  predicted = model.apply(variables, start_bkd, actions_bpka, method=WorldModel.rollout)
  predicted_mkd = predicted.reshape((b * p,) + predicted.shape[2:])
  anchor_mn = jnp.repeat(start_tokens_bn, p, axis=0)  # Rows (b, p) like the predictions.
  if model.aggregator_mode == "classification":
    tokens_mn = model.apply(variables, predicted_mkd, anchor_mn, method=WorldModel.decode_tokens)
    features_mnd = features(codebook_cd, tokens_mn)
    return tokens_mn.reshape(b, p, -1), features_mnd.reshape((b, p) + features_mnd.shape[1:])
  features_mnd = model.apply(variables, predicted_mkd, None, features(codebook_cd, anchor_mn),
                             method=WorldModel.aggregate)
  return None, features_mnd.reshape((b, p) + features_mnd.shape[1:])


# ---- Actions. ----
def num_units(model: WorldModel) -> int:
  """Actions chosen per step (see flam_jax.lib.variants)."""
  return variants.variant_spec(model.variant).num_units(model.num_slots, model.num_agents)


def sample_actions(model: WorldModel, rng: jax.Array, shape_hu: Sequence[int]):
  """Random actions of the model's kind: (actions [..., H, K|1, A], indices [..., H, U] or None).

  `shape_hu` is (..., H, U) with U = `num_units(model)`. FSQ latent actions: uniform
  over the codebook; Gaussian: the N(0, I) prior (no indices); wm: uniform over each
  agent's ground-truth actions, one-hot and concatenated into one scene action. Used by
  Delta PSNR (Sec 5.6) and generation's --sample.
  """
  shape_hu = tuple(shape_hu)
  if not variants.variant_spec(model.variant).latent_actions:
    indices = jax.random.randint(rng, shape_hu, 0, model.num_agent_actions)
    onehot = jax.nn.one_hot(indices, model.num_agent_actions, dtype=jnp.float32)
    return onehot.reshape(shape_hu[:-1] + (1, -1)), indices
  if model.action_kind == "fsq":
    levels = model.action_bottleneck_levels
    codes = latent_action.sample_random_actions("fsq", rng, shape_hu, levels)
    return codes, fsq.codes_to_indices(codes, levels).astype(jnp.int32)
  return latent_action.sample_random_actions("gaussian", rng, shape_hu, model.action_width), None


# ---- Host entry points over a loaded model (generation, pictures, policies). ----
def as_frames(loaded, frames) -> np.ndarray:
  """uint8 [0, 255] or float [0, 1] frames [..., S, S, 3] -> float32 in [0, 1]; checks the size."""
  frames = np.asarray(frames)
  size = loaded.config.data.image_size
  if frames.shape[-3:] != (size, size, 3):
    raise DataError(f"frames are {frames.shape[-3:]} but the model was trained on "
                    f"{size}x{size} RGB frames; resize them to ({size}, {size}, 3)")
  if frames.dtype == np.uint8:
    return frames.astype(np.float32) / 255.0
  return frames.astype(np.float32)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _from_frame(model, tokenizer, grid, params, tok_params, codebook_cd, start_HWc, actions_bhka):
  b = actions_bhka.shape[0]
  tokens_1n = encode(tokenizer, tok_params, start_HWc[None])
  z_q_1nd = features(codebook_cd, tokens_1n)
  entities_11kd, masks_11kn = entities(model, params, z_q_1nd[None])
  start_bkd = jnp.broadcast_to(entities_11kd[:, 0], (b,) + entities_11kd.shape[2:])
  tokens_bhn, features_bhnd = predict(model, params, codebook_cd, start_bkd, actions_bhka,
                                      jnp.broadcast_to(tokens_1n, (b, tokens_1n.shape[1])))
  n, dz = features_bhnd.shape[2:]
  pixels = decode_pixels(tokenizer, tok_params, jnp.concatenate(
      [z_q_1nd, features_bhnd.reshape(-1, n, dz).astype(z_q_1nd.dtype)]), grid)
  first = jnp.broadcast_to(pixels[:1][None], (b, 1) + pixels.shape[1:])
  frames = jnp.concatenate([first, pixels[1:].reshape((b, -1) + pixels.shape[1:])], axis=1)
  return dict(frames=frames, tokens=tokens_bhn, features=features_bhnd,
              masks=None if masks_11kn is None else masks_11kn[0, 0])


def rollout_from_frame(loaded, params, start_frame_HWc, actions_bhka) -> Dict[str, np.ndarray]:
  """B rollouts of H steps from one start frame, in one compiled call.

  Returns numpy dict(frames [B, H+1, H_px, W_px, 3] in [0, 1] (frame 0 is the tokenizer's
  reconstruction of the start frame), tokens [B, H, N] (classification; else None),
  features [B, H, N, Dz], masks [K, N] of the start frame (slot variants; else None)).
  """
  actions = jnp.asarray(actions_bhka, jnp.float32)
  if actions.ndim != 4:
    raise ValueError(f"actions must be [B, H, K|1, A], got {actions.shape}")
  out = _from_frame(loaded.model, loaded.tokenizer, tuple(loaded.grid), params,
                    loaded.tokenizer_params, loaded.codebook,
                    jnp.asarray(as_frames(loaded, start_frame_HWc)), actions)
  return jax.tree.map(np.asarray, out)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _infer_clip(model, tokenizer, grid, params, tok_params, codebook_cd, frames_tHWc, gt_tm):
  tokens_tn = encode(tokenizer, tok_params, frames_tHWc)
  z_q_tnd = features(codebook_cd, tokens_tn)
  entities_1tkd, masks_1tkn = entities(model, params, z_q_tnd[None])
  acts = infer_actions(model, params, entities_1tkd, None if gt_tm is None else gt_tm[None])
  return dict(actions=acts["actions"][0],
              indices=None if acts["indices"] is None else acts["indices"][0],
              masks=None if masks_1tkn is None else masks_1tkn[0],
              reconstruction=decode_pixels(tokenizer, tok_params, z_q_tnd, grid),
              tokens=tokens_tn)


def infer_clip(loaded, params, frames_tHWc, gt_actions=None) -> Dict[str, np.ndarray]:
  """The IDM on a real clip: numpy dict(actions [T-1, K|1, A], indices [T-1, U] or None,
  masks [T, K, N] or None, reconstruction [T, H, W, 3], tokens [T, N]).

  Ground-truth-action variants (wm) need the clip's `gt_actions` [T-1, agents] and
  return them as the indices.
  """
  given = not variants.variant_spec(loaded.model.variant).latent_actions
  if given and gt_actions is None:
    raise ConfigError("the wm variant is driven by ground-truth actions; pass the clip's "
                      "actions [T-1, agents]")
  gt = jnp.asarray(gt_actions, jnp.int32) if given else None
  out = _infer_clip(loaded.model, loaded.tokenizer, tuple(loaded.grid), params,
                    loaded.tokenizer_params, loaded.codebook,
                    jnp.asarray(as_frames(loaded, frames_tHWc)), gt)
  out = jax.tree.map(np.asarray, out)
  if given:
    out["indices"] = np.asarray(gt)
  return out


def rollout_frames(loaded, params, start_frame_HWc, actions_hka) -> np.ndarray:
  """One H-step rollout: start frame (uint8 or [0, 1]), actions [H, K|1, A] -> [H+1, H, W, 3]."""
  return rollout_from_frame(loaded, params, start_frame_HWc,
                            np.asarray(actions_hka)[None])["frames"][0]

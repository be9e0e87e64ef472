"""The latent action world model (Algorithm 1) and its baselines, in one composition.

Every variant maps a window of tokenized frames to "entities", infers an action per
transition, rolls the forward dynamics model forward on its own predictions, and maps
predicted entities back to the next frame's tokens with the aggregator:

| variant  | entities                      | action per transition                     |
|----------|-------------------------------|-------------------------------------------|
| `flam`   | K slots (Factorizer, Eq. 2)   | one latent action per slot (IDM, Eq. 3)   |
| `lam`    | N patch tokens                | one scene latent action (IDM + pooling)   |
| `oc_lam` | K slots, + reconstruction loss| one scene latent action (IDM + pooling)   |
| `wm`     | N patch tokens                | ground-truth actions of all agents        |

The IDM, FDM (Eq. 4) and aggregator are shared by all entities (no per-slot
parameters; entities are folded into the batch). Multi-step training (Table 4): for
each start t in [0, T-P), the FDM predicts entities t+1..t+P from its own previous
prediction, with actions inferred from ground-truth frames; one `nn.scan` over the P
steps, all starts in parallel.

With `aggregator_residual` the aggregator predicts frame t+j as a change of the start
frame t (the later version's residual, z_hat = z_t + Aggregator(s_hat)): classification
sees the start frame's token at each patch, regression adds its output to the start
frame's features. Copying the start frame is then the model's easy default, and the
slots and latent actions are needed only for what moves. The anchor is the start frame
of the rollout in training and in evaluation alike (no teacher forcing across steps).
"""

from typing import Optional, Sequence, Tuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flam_jax.modules import aggregator as aggregator_lib
from flam_jax.modules import latent_action
from flam_jax.modules.dynamics import ForwardDynamics, InverseDynamics, SceneActionPool
from flam_jax.modules.slot_attention import Factorizer
from flam_jax.modules.slot_decoder import SpatialBroadcastDecoder

VARIANTS = ("flam", "lam", "oc_lam", "wm")
FACTORED_ENTITIES = ("flam", "oc_lam")   # Entities are slots.
SCENE_ACTIONS = ("lam", "oc_lam")        # One latent action for the whole scene.


def rollout_indices(window_length: int, prediction_steps: int) -> np.ndarray:
  """[P, S] transition index s + j for start s in [0, T-P) and step j in [0, P)."""
  num_starts = window_length - prediction_steps
  if num_starts < 1:
    raise ValueError(f"window_length={window_length} must exceed prediction_steps="
                     f"{prediction_steps}")
  return np.arange(prediction_steps)[:, None] + np.arange(num_starts)[None, :]


ROLLOUT_STARTS = ("full", "every")


def training_pairs(window_length: int, prediction_steps: int,
                   starts: str = "full") -> Tuple[np.ndarray, np.ndarray]:
  """(start s [V], step j [V]) of the predictions the training loss makes, frame s + j + 1
  from frame s, in row order (s, then j).

  "full": the starts with P full steps, s in [0, T-P) (`rollout_indices`; (T-P)*P rows).
  "every": every start s in [0, T-1), rolled until the window ends, j < min(P, T-1-s)
  (T=10, P=5: 9 + 8 + 7 + 6 + 5 = 35 rows against 25): more predictions per window for
  the per-window work (slots, IDM), the most at short horizons.
  """
  if starts not in ROLLOUT_STARTS:
    raise ValueError(f"unknown rollout starts {starts!r}; use one of {ROLLOUT_STARTS}")
  if starts == "full":
    num_starts = rollout_indices(window_length, prediction_steps).shape[1]
    return (np.repeat(np.arange(num_starts), prediction_steps),
            np.tile(np.arange(prediction_steps), num_starts))
  pairs = [(s, j) for s in range(window_length - 1) for j in range(prediction_steps)
           if s + j < window_length - 1]
  return np.array([s for s, _ in pairs]), np.array([j for _, j in pairs])


class _FDMStep(nn.Module):
  """One FDM step as a scan body: carry = entities, x = actions."""

  num_blocks: int
  num_heads: int
  dtype: jnp.dtype
  remat: bool = False
  additive_actions: bool = False
  zero_init_actions: bool = True
  remat_chunks: int = 1

  @nn.compact
  def __call__(self, entities_bkd, actions_bka):
    nxt = ForwardDynamics(self.num_blocks, self.num_heads, self.dtype, remat=self.remat,
                          remat_chunks=self.remat_chunks,
                          additive_actions=self.additive_actions,
                          zero_init_actions=self.zero_init_actions, name="fdm")(
        entities_bkd, actions_bka)
    return nxt, nxt


class LatentActionWorldModel(nn.Module):
  """FLAM and its baselines. Inputs are tokenizer features and indices, never pixels."""

  variant: str = "flam"
  num_patches: int = 256
  codebook_size: int = 1024
  d_model: int = 256
  num_heads: int = 8
  num_blocks: int = 2
  # Factorizer (flam, oc_lam).
  num_slots: int = 4
  slot_iterations: int = 3
  init_slot_iterations: int = 0  # Frames starting from the initial slots; 0: slot_iterations.
  recursive_init: bool = True
  slot_init: str = "learned"  # or "sampled" (see slot_attention.Factorizer).
  slot_position_embedding: str = "learned"  # or "grid" (see slot_attention.Factorizer).
  temporal_attention: bool = False
  # Latent action bottleneck.
  action_kind: str = "fsq"            # "fsq" or "gaussian".
  action_levels: Sequence[int] = (2, 2)
  action_latent_dim: int = 0          # Gaussian; 0 means d_model // num_slots (flam) or d_model.
  scene_action_levels: Sequence[int] = (4, 4, 4, 4)
  # Ground-truth actions (wm).
  num_agents: int = 4
  num_agent_actions: int = 4
  # Aggregator.
  aggregator_mode: str = "classification"  # or "regression".
  subtoken_sizes: Sequence[int] = (32, 32)
  aggregator_blocks: int = 2
  feature_dim: int = 128
  aggregator_residual: bool = False
  aggregator_context_dropout: float = 0.0  # Classification; see ClassificationAggregator.
  aggregator_parallel: bool = False  # Classification; see ClassificationAggregator.parallel.
  # Slot variants: also reconstruct each frame's features from its own slots through a
  # spatial-broadcast decoder with alpha masks (binding, see slot_decoder.py).
  slot_reconstruction: bool = False
  slot_decoder_position_embedding: str = "learned"  # or "grid" (see slot_decoder.py).
  # ... and the next frame's features from the FDM's predicted slots, through the same
  # decoder: a dense per-slot signal for the FDM that needs no aggregator.
  predicted_slot_reconstruction: bool = False
  # FDM: also add each entity's embedded action to its stream before every block.
  fdm_additive_actions: bool = False
  # FDM: zero-initialised action embeddings (see ForwardDynamics.zero_init_actions).
  fdm_zero_init_actions: bool = True
  dtype: jnp.dtype = jnp.float32
  # Rematerialise the IDM, FDM and aggregator blocks: their attention weights over N
  # patch entities ([.., heads, N, N] per rollout step) dominate LAM's memory.
  remat: bool = False
  # With remat: each block recomputes this many slices of its batch one after another, so
  # one slice's activations are live in the backward (transformer.maybe_remat).
  remat_chunks: int = 1
  # Which (start, step) predictions the training loss makes: `training_pairs`.
  rollout_starts: str = "full"
  # Unroll the FDM's P-step rollout in training (nn.scan's unroll) instead of looping: XLA
  # then fuses and schedules across steps and drops the loop's stacked buffers (LAM 64 px on
  # a 2-core CPU: 0.64 -> 0.57 s/step), but keeps more activations live under remat (LAM at
  # Table 4's size, batch 64: 64 -> 113 GiB of temporaries), so
  # `models.build_world_model` sets it to `not remat`. The same function either way.
  unroll_rollout: bool = False

  def setup(self):
    if self.variant not in VARIANTS:
      raise ValueError(f"unknown variant {self.variant!r}; use one of {VARIANTS}")
    if self.variant in FACTORED_ENTITIES:
      if self.slot_reconstruction:
        self.slot_decoder = SpatialBroadcastDecoder(
            num_patches=self.num_patches, feature_dim=self.feature_dim,
            position_embedding=self.slot_decoder_position_embedding, dtype=self.dtype)
      self.factorizer = Factorizer(
          num_slots=self.num_slots, slot_dim=self.d_model, num_iterations=self.slot_iterations,
          init_iterations=self.init_slot_iterations or None,
          recursive_init=self.recursive_init, slot_init=self.slot_init,
          temporal_attention=self.temporal_attention,
          position_embedding=self.slot_position_embedding,
          num_heads=self.num_heads, dtype=self.dtype)
    else:
      self.token_proj = nn.Dense(self.d_model, dtype=self.dtype)
      self.token_pos = self.param("token_pos", nn.initializers.normal(0.02),
                                  (self.num_patches, self.d_model), jnp.float32)
    if self.variant != "wm":
      self.idm = InverseDynamics(self.num_blocks, self.num_heads, self.dtype, remat=self.remat,
                                 remat_chunks=self.remat_chunks)
      if self.variant in SCENE_ACTIONS:
        self.scene_pool = SceneActionPool(self.num_heads, self.dtype)
      self.bottleneck = latent_action.make_action_bottleneck(
          self.action_kind, levels=self.action_bottleneck_levels,
          latent_dim=self.action_width if self.action_kind == "gaussian" else None,
          dtype=self.dtype)
    self.fdm_scan = nn.scan(
        _FDMStep, variable_broadcast="params", split_rngs={"params": False},
        in_axes=1, out_axes=1, unroll=True if self.unroll_rollout else 1)(
            self.num_blocks, self.num_heads, self.dtype, self.remat, self.fdm_additive_actions,
            self.fdm_zero_init_actions, self.remat_chunks)
    if self.aggregator_mode == "classification":
      self.aggregator = aggregator_lib.ClassificationAggregator(
          num_patches=self.num_patches, subtoken_sizes=tuple(self.subtoken_sizes),
          d_model=self.d_model, num_blocks=self.aggregator_blocks, num_heads=self.num_heads,
          dtype=self.dtype, codebook_size=self.codebook_size, remat=self.remat,
          remat_chunks=self.remat_chunks,
          context_dropout=self.aggregator_context_dropout, parallel=self.aggregator_parallel)
    elif self.aggregator_mode == "regression":
      self.aggregator = aggregator_lib.RegressionAggregator(
          num_patches=self.num_patches, feature_dim=self.feature_dim, d_model=self.d_model,
          num_blocks=self.aggregator_blocks, num_heads=self.num_heads, dtype=self.dtype,
          remat=self.remat, remat_chunks=self.remat_chunks)
    else:
      raise ValueError(f"unknown aggregator_mode {self.aggregator_mode!r}; use "
                       "'classification' or 'regression'")

  # ---- Properties used by evaluation and generation. ----
  @property
  def action_bottleneck_levels(self):
    return tuple(self.scene_action_levels if self.variant in SCENE_ACTIONS else self.action_levels)

  @property
  def action_width(self) -> int:
    if self.variant == "wm":
      return self.num_agents * self.num_agent_actions
    if self.action_kind == "fsq":
      return len(self.action_bottleneck_levels)
    if self.action_latent_dim:
      return self.action_latent_dim
    return self.d_model // self.num_slots if self.variant == "flam" else self.d_model

  # ---- Pieces of Algorithm 1. ----
  def entities(self, features_btnd):
    """[B, T, N, Dz] -> (entities [B, T, K', D], slot masks [B, T, K, N] or None)."""
    chex.assert_rank(features_btnd, 4)
    if self.variant in FACTORED_ENTITIES:
      return self.factorizer(features_btnd)
    tokens = self.token_proj(features_btnd).astype(jnp.float32)
    return tokens + self.token_pos[None, None], None

  def infer_actions(self, entities_btkd, gt_actions_btm=None, *, deterministic: bool = True):
    """Actions for the T-1 transitions: dict(actions [B, T-1, K' or 1, A], indices, kl [B]).

    kl: sum over entities and latent dims of KL[q(a_t^i) || N(0, I)] (the later
    version's sum_i KL), averaged over the T-1 transitions.
    """
    b, t, k, d = entities_btkd.shape
    if self.variant == "wm":
      onehot = jax.nn.one_hot(gt_actions_btm, self.num_agent_actions, dtype=jnp.float32)
      actions = onehot.reshape(b, t - 1, 1, self.num_agents * self.num_agent_actions)
      return dict(actions=actions, indices=None, kl=jnp.zeros((b,), jnp.float32),
                  code_log_probs=None)
    current = entities_btkd[:, :-1].reshape(b * (t - 1), k, d)
    following = entities_btkd[:, 1:].reshape(b * (t - 1), k, d)
    features = self.idm(current, following)  # [B*(T-1), K, D]
    if self.variant in SCENE_ACTIONS:
      features = self.scene_pool(features)  # [B*(T-1), 1, D]
    out = self.bottleneck(features, deterministic=deterministic)
    k_out = features.shape[1]
    return dict(
        actions=out["actions"].reshape(b, t - 1, k_out, -1),
        indices=None if out.get("indices") is None else out["indices"].reshape(b, t - 1, k_out),
        code_log_probs=None if out.get("code_log_probs") is None else out[
            "code_log_probs"].reshape(b, t - 1, k_out, -1),
        kl=out["kl"].reshape(b, t - 1).mean(axis=1))  # sum_i KL of one transition, averaged.

  def rollout(self, entities_0_bkd, actions_bpka):
    """FDM rolled P steps on its own predictions: [B, K, D], [B, P, K|1, A] -> [B, P, K, D]."""
    _, predicted_bpkd = self.fdm_scan(entities_0_bkd, actions_bpka)
    return predicted_bpkd

  def aggregate(self, entities_mkd, target_tokens_mn=None, anchor=None,
                deterministic: bool = True):
    """Classification: logits (teacher-forced on the targets); regression: features [M, N, F].

    anchor: the start frame, tokens [M, N] (classification) or features [M, N, F]
    (regression); used only with `aggregator_residual`.
    """
    anchor = anchor if self.aggregator_residual else None
    if self.aggregator_mode == "classification":
      return self.aggregator(entities_mkd, target_tokens_mn, anchor, deterministic)
    return self.aggregator(entities_mkd, anchor)

  def decode_tokens(self, entities_mkd, anchor_tokens_mn=None, use_cache: bool = True):
    """Greedy autoregressive token prediction (classification mode): [M, N] indices."""
    anchor = anchor_tokens_mn if self.aggregator_residual else None
    return self.aggregator.decode(entities_mkd, anchor, use_cache=use_cache)[0]

  def predict(self, entities_btkd, actions_btka, features_btnd, tokens_btn, *,
              prediction_steps: int, deterministic: bool = True):
    """Multi-step predictions of the training pairs (`training_pairs`) under the given actions.

    entities [B, T, K', D], actions [B, T-1, K'|1, A] (inferred, or others for the
    action-gain diagnostic), features [B, T, N, Dz], tokens [B, T, N]. Returns
    dict(prediction (logits or features), targets [M, N], target_features [M, N, Dz],
    anchor_tokens [M, N], regression: anchor_features [M, N, Dz], row_steps: the step j
    of each of a window's V rows (numpy [V])) with M = B*V rows ordered (b, s, j). Every
    start is rolled P steps in one scan; with rollout_starts="every" the steps past the
    window's end (their actions clipped to its last transition) are dropped afterwards.
    """
    b, t, n, _ = features_btnd.shape
    k, d = entities_btkd.shape[2:]
    p = prediction_steps
    start_v, step_v = training_pairs(t, p, self.rollout_starts)
    v, s = len(start_v), int(start_v.max()) + 1  # Rows per window, starts rolled out.
    idx_ps = np.minimum(np.arange(p)[:, None] + np.arange(s)[None, :], t - 2)  # Transition.
    actions_bpsma = actions_btka[:, idx_ps]  # [B, P, S, K'|1, A]
    actions_bs_p = jnp.moveaxis(actions_bpsma, 2, 1).reshape((b * s, p) + actions_bpsma.shape[3:])
    predicted = self.rollout(entities_btkd[:, :s].reshape(b * s, k, d), actions_bs_p)
    if v == s * p:  # Every step of every start is a training row ("full").
      predicted_mkd = predicted.reshape(b * v, k, d)
    else:
      predicted_mkd = predicted.reshape(b, s * p, k, d)[:, start_v * p + step_v].reshape(
          b * v, k, d)
    targets_mn = tokens_btn[:, start_v + step_v + 1].reshape(b * v, n)
    anchor_tokens_mn = tokens_btn[:, start_v].reshape(b * v, n)  # Each row's start frame.
    if self.aggregator_mode == "classification":
      anchor = anchor_tokens_mn
    else:
      anchor = features_btnd[:, start_v].reshape(b * v, n, -1)
    out = dict(prediction=self.aggregate(predicted_mkd, targets_mn, anchor, deterministic),
               targets=targets_mn,
               anchor_tokens=anchor_tokens_mn, predicted_entities=predicted_mkd,
               target_features=features_btnd[:, start_v + step_v + 1].reshape(b * v, n, -1),
               row_steps=step_v)
    if self.aggregator_mode == "regression":
      out["anchor_features"] = anchor  # [M, N, Dz]: the copy baseline's prediction.
    return out

  def __call__(self, features_btnd, tokens_btn, gt_actions_btm=None, *,
               prediction_steps: int, deterministic: bool = True):
    """The training forward pass. Returns a dict of everything the losses need.

    features_btnd: quantized tokenizer features z_q [B, T, N, Dz];
    tokens_btn: their codebook indices [B, T, N]; gt_actions_btm: [B, T-1, agents] (wm).
    """
    b, t, n, _ = features_btnd.shape
    chex.assert_shape(tokens_btn, (b, t, n))
    entities_btkd, masks_btkn = self.entities(features_btnd)
    k, d = entities_btkd.shape[2:]
    acts = self.infer_actions(entities_btkd, gt_actions_btm, deterministic=deterministic)
    out = self.predict(entities_btkd, acts["actions"], features_btnd, tokens_btn,
                       prediction_steps=prediction_steps, deterministic=deterministic)
    out.update(kl=acts["kl"], action_indices=acts["indices"], actions=acts["actions"],
               action_code_log_probs=acts.get("code_log_probs"),
               entities=entities_btkd, masks=masks_btkn)
    if self.slot_reconstruction and self.variant in FACTORED_ENTITIES:
      slots_mkd = entities_btkd.reshape(b * t, k, d)
      if self.predicted_slot_reconstruction:  # One decoder call for both sets of slots.
        slots_mkd = jnp.concatenate([slots_mkd, out["predicted_entities"].astype(
            slots_mkd.dtype)])
      recon_mnf, alpha_mkn = self.slot_decoder(slots_mkd)
      out["slot_reconstruction"] = recon_mnf[:b * t].reshape(b, t, n, -1)
      out["slot_alpha"] = alpha_mkn[:b * t].reshape(b, t, k, n)
      if self.predicted_slot_reconstruction:
        out["predicted_slot_reconstruction"] = recon_mnf[b * t:]
    if self.variant == "oc_lam":
      # Object-centric reconstruction: the slots of frame t must explain frame t's tokens.
      out["reconstruction"] = self.aggregate(entities_btkd.reshape(b * t, k, d),
                                             tokens_btn.reshape(b * t, n))
      out["reconstruction_targets"] = tokens_btn.reshape(b * t, n)
    return out

"""The jit-compiled evaluation step: per-example metrics of one batch of test windows.

    frames --encode--> tokens --entities/IDM (deterministic)--> latent actions
    predict P = lam.prediction_steps steps from each start frame s with
      (a) the actions inferred from the ground-truth frames, and
      (b) random actions (`rollout.sample_actions`)
    -> pixels -> PSNR_t, SSIM_t of (a), Delta_t PSNR = PSNR_t(a) - PSNR_t(b) (Sec 5.6)

plus the tokenizer's reconstruction PSNR (a ceiling, Sec 5.3), the "copy" baseline that
predicts no change from the same start frame, ARI-FG and slot-agent disentanglement of
the slot masks (slot variants), and (latent action, ground-truth action) pairs for the
probe (`probe.py`). Everything goes through the rollout API (`flam_jax.lib.rollout`);
`evaluator.py` drives this step over batches and reduces its outputs.

Start frames (`EvalSpec.starts`): "first" rolls out from frame 0 only; "all" from every
start the training loss uses (s in [0, T-P), `world_model.rollout_indices`), each from
the entities of frame s computed over the whole window, so slots of s > 0 are
initialised recursively from frame s-1 exactly as in training. The starts are folded
into the batch axis (one rollout of B*S rows) and per-step metrics are averaged over
them; with one start the step is the frame-0 evaluation it always was.

Ground truth is optional: which metrics run is decided statically by the fields the
batch holds (`skipped_metrics`), so action-free video is evaluated in the same one jit
without ARI-FG, disentanglement or the probe.
"""

import dataclasses
from typing import Any, Dict, Tuple

import chex
import jax
import jax.numpy as jnp

import numpy as np

from flam_jax.data import records
from flam_jax.errors import ConfigError, DataError
from flam_jax.lib import metrics, rollout, variants
from flam_jax.modules import fsq
from flam_jax.modules.tokenizer import Tokenizer
from flam_jax.modules.world_model import LatentActionWorldModel, rollout_indices

IGNORE_IDS = (records.FLOOR_ID, records.WALL_ID)  # ARI-FG: agents only.
START_MODES = ("first", "all")  # eval.starts: frame 0 only, or every training start.


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """Everything static about one evaluation (hashable: the jit cache key)."""

  model: LatentActionWorldModel
  tokenizer: Tokenizer
  grid: Tuple[int, int]
  num_agents: int
  prediction_steps: int
  starts: str = "first"

  @classmethod
  def from_stage(cls, loaded, starts: str = "first") -> "EvalSpec":
    """From a `models.LoadedWorldModel` (or a lam stage, which has the same attributes)."""
    if starts not in START_MODES:
      raise ConfigError(f"eval.starts={starts!r} is not one of {START_MODES}; 'first' rolls "
                        "out from frame 0, 'all' from every start the training loss uses")
    return cls(model=loaded.model, tokenizer=loaded.tokenizer, grid=tuple(loaded.grid),
               num_agents=int(loaded.num_agents),
               prediction_steps=int(loaded.config.lam.prediction_steps), starts=starts)

  @property
  def variant(self) -> str:
    return self.model.variant

  @property
  def variant_spec(self) -> variants.VariantSpec:
    return variants.variant_spec(self.variant)

  def start_steps(self, window_length: int) -> np.ndarray:
    """[S, P] transition index s + j of rollout step j from start s (static).

    "first": S = 1, start 0. "all": the training loss's starts s in [0, T-P).
    """
    length = window_length if self.starts == "all" else self.prediction_steps + 1
    return rollout_indices(length, self.prediction_steps).T


_NO_MASKS = "the dataset has no ground-truth entity masks"


def skipped_metrics(spec: EvalSpec, fields) -> Dict[str, str]:
  """{metric: why} for this variant's metrics that the data's missing ground truth rules out.

  `fields`: the batch's fields (frames plus any of masks, actions). ARI-FG and
  disentanglement read the entity masks; the probe reads the actions (and, for per-slot
  actions, the masks that match slots to agents). PSNR, SSIM, Delta PSNR, token accuracy,
  the copy baseline and the tokenizer PSNR need no ground truth. wm is driven by the
  actions, so without them it cannot be evaluated at all: a DataError.
  """
  fields, vs = set(fields), spec.variant_spec
  if not vs.latent_actions and "actions" not in fields:
    raise DataError(f"the {spec.variant} baseline is driven by ground-truth actions and this "
                    "dataset has none (action-free video); evaluate flam, lam or oc_lam on it, "
                    f"or {spec.variant} on data with actions")
  skipped = {}
  if vs.slot_entities and "masks" not in fields:
    skipped["ari_fg"] = skipped["disentanglement"] = _NO_MASKS
  if vs.latent_actions:
    needed = ("actions", "masks") if vs.action_source == variants.SLOT_ACTIONS else ("actions",)
    missing = [f for f in needed if f not in fields]
    if missing:
      skipped["probe"] = f"the dataset has no ground-truth {' or '.join(missing)}"
  return skipped


def prediction_metrics(target_bpHWc, inferred_bpHWc, random_bpHWc) -> Dict[str, jax.Array]:
  """PSNR_t, SSIM_t of rollouts under inferred actions, and Delta_t PSNR (Sec 5.6), [B, P] each.

  Delta_t PSNR = PSNR_t(x_t, x_hat_t) - PSNR_t(x_t, x_hat'_t): x_hat from actions
  inferred from ground-truth frames, x_hat' from random actions.
  """
  chex.assert_equal_shape([target_bpHWc, inferred_bpHWc, random_bpHWc])
  psnr_bp = metrics.psnr(target_bpHWc, inferred_bpHWc)
  psnr_random_bp = metrics.psnr(target_bpHWc, random_bpHWc)
  return dict(psnr_t=psnr_bp, ssim_t=metrics.ssim(target_bpHWc, inferred_bpHWc),
              psnr_random_t=psnr_random_bp, delta_psnr_t=psnr_bp - psnr_random_bp)


def _random_actions(spec: EvalSpec, rng, index_b, num_starts: int, dtype):
  """Random actions [B, S, P, K|1, A] keyed by each window's dataset index (batching-proof)."""
  units = rollout.num_units(spec.model)
  keys_b = jax.vmap(lambda i: jax.random.fold_in(rng, i))(index_b)
  sample = lambda key: rollout.sample_actions(spec.model, key, (num_starts, spec.prediction_steps,
                                                                units))[0]
  return jax.vmap(sample)(keys_b).astype(dtype)


def copy_baseline(pixels_btHWc, recon_btHWc, tokens_btn, steps_sp) -> Dict[str, jax.Array]:
  """The "copy" baseline per start [B, S, P]: start frame s predicted for every step.

  "Copy" predicts that nothing moves: the reconstruction and tokens of the rollout's
  start frame s (the model's start) for frames steps_sp[s] + 1. A world model must beat
  it to have learned dynamics.
  """
  starts_s = steps_sp[:, 0]
  targets_bspHWc = pixels_btHWc[:, steps_sp + 1]
  copy_bspHWc = jnp.broadcast_to(recon_btHWc[:, starts_s, None], targets_bspHWc.shape)
  same_bspn = tokens_btn[:, starts_s, None] == tokens_btn[:, steps_sp + 1]
  return dict(copy_psnr_t=metrics.psnr(targets_bspHWc, copy_bspHWc),
              copy_token_accuracy_t=jnp.mean(same_bspn.astype(jnp.float32), axis=-1))


def _slot_metrics(spec: EvalSpec, masks_btkn, entity_ids_btHW) -> Dict[str, jax.Array]:
  """ARI-FG of the slot masks and slot-agent disentanglement (slot variants)."""
  b, t, height, width = entity_ids_btHW.shape
  k, n = masks_btkn.shape[2:]
  slot_ids_btn = jnp.argmax(masks_btkn, axis=2)  # Each patch's slot; pixels inherit it.
  ari = metrics.patch_adjusted_rand_index(
      entity_ids_btHW.reshape(b * t, height, width), slot_ids_btn.reshape(b * t, n),
      grid=spec.grid, num_true=records.FIRST_AGENT_ID + spec.num_agents, num_pred=k,
      ignore_ids=IGNORE_IDS)
  dis = metrics.slot_agent_disentanglement(masks_btkn, entity_ids_btHW, grid=spec.grid,
                                           num_agents=spec.num_agents,
                                           first_agent_id=records.FIRST_AGENT_ID)
  return dict(ari_fg=jnp.mean(ari.reshape(b, t), axis=1), disentangle_sum=dis["score_sum"],
              disentangle_count=dis["num_moving"], matched_slot=dis["matched_slot"],
              matched_share=dis["matched_share"])


def _probe_pairs(spec: EvalSpec, acts, matched_slot_bta, gt_actions_bta, headings_bta=None):
  """Per-agent (latent action, code, ground-truth action[, heading at t]) pairs for the probe."""
  actions_btka = acts["actions"]
  b, t1 = actions_btka.shape[:2]
  gt_actions_bta = gt_actions_bta.reshape(b, t1, -1)  # Single-agent data may store [B, T-1].
  indices = acts["indices"]
  codes_btk = (jnp.full(actions_btka.shape[:3], -1, jnp.int32) if indices is None
               else indices.astype(jnp.int32))
  if spec.variant_spec.action_source == variants.SLOT_ACTIONS:
    safe = jnp.maximum(matched_slot_bta, 0)  # The latent action of the slot matched to each agent.
    latent = jnp.take_along_axis(actions_btka, safe[..., None], axis=2)
    codes = jnp.take_along_axis(codes_btk, safe, axis=2)
    pair_valid = matched_slot_bta >= 0
  else:  # One scene action for all agents.
    shape = (b, t1, spec.num_agents)
    latent = jnp.broadcast_to(actions_btka, shape + actions_btka.shape[-1:])
    codes = jnp.broadcast_to(codes_btk, shape)
    pair_valid = jnp.ones(shape, bool)
  out = dict(probe_latent=latent.astype(jnp.float32), probe_code=codes,
             probe_valid=pair_valid, probe_label=gt_actions_bta.astype(jnp.int32))
  if headings_bta is not None:
    out["probe_heading"] = headings_bta.astype(jnp.int32)
  return out


def eval_step(spec: EvalSpec, state: Dict[str, Any], batch: Dict[str, jax.Array],
              rng: jax.Array) -> Dict[str, jax.Array]:
  """Per-example metrics of one batch of windows (no reductions over the batch).

  Args:
    spec: the static model description (including the start frames, `spec.starts`).
    state: dict(lam=world model params, tokenizer=frozen tokenizer params,
      codebook=the tokenizer's codebook [C, Dz] (`models.tokenizer_codebook`)).
    batch: frames uint8 [B, T, H, W, 3], optionally masks uint8 [B, T, H, W] (entity
      ids) and actions int32 [B, T-1, agents] (what is absent skips the metrics that
      read it, `skipped_metrics`), optionally headings int32 [B, T, agents] (the probe
      given the heading), valid bool [B], episode int32 [B] (for the probe's
      split), index int32 [B] (the window's position in the dataset).
    rng: key for the random actions (folded with each window's index).

  Returns:
    dict of per-example arrays (see `evaluator.summarize` for their reductions); the
    per-step ones are [B, P], averaged over the start frames.
  """
  model, params, tok_params = spec.model, state["lam"], state["tokenizer"]
  frames = batch["frames"]
  b, t, height, width, _ = frames.shape
  skipped = skipped_metrics(spec, batch)
  if "masks" in batch:
    chex.assert_shape(batch["masks"], (b, t, height, width))
  steps_sp = spec.start_steps(t)  # Static: [S, P] transition of step j from start s.
  s, p = steps_sp.shape
  starts_s = steps_sp[:, 0]

  pixels_btHWc = frames.astype(jnp.float32) / 255.0
  tokens_btn = rollout.encode(spec.tokenizer, tok_params,
                              pixels_btHWc.reshape(b * t, height, width, 3)).reshape(b, t, -1)
  features_btnd = rollout.features(state["codebook"], tokens_btn)
  n = tokens_btn.shape[-1]

  # Entities over the whole window (slots of frame s initialised from frame s-1, as in
  # training), actions inferred from ground-truth frames; the starts folded into the
  # batch (M = B*S rows, ordered (b, s)) and both rollouts as one batch of 2M.
  entities_btkd, masks_btkn = rollout.entities(model, params, features_btnd)
  acts = rollout.infer_actions(model, params, entities_btkd, batch.get("actions"))
  actions_btka = acts["actions"]  # [B, T-1, K|1, A]
  fold = lambda x: x.reshape((b * s,) + x.shape[2:])
  actions_mpka = fold(actions_btka[:, steps_sp])
  random_mpka = fold(_random_actions(spec, rng, batch["index"], s, actions_btka.dtype))
  start_mkd = fold(entities_btkd[:, starts_s])
  start_tokens_mn = fold(tokens_btn[:, starts_s])
  pred_tokens, pred_features = rollout.predict(
      model, params, state["codebook"], jnp.concatenate([start_mkd, start_mkd]),
      jnp.concatenate([actions_mpka, random_mpka]),
      jnp.concatenate([start_tokens_mn, start_tokens_mn]))  # [2M, P, N(, Dz)]

  # One decoder call for reconstructions and both rollouts.
  z_all = jnp.concatenate([features_btnd.reshape(b * t, n, -1),
                           pred_features.reshape(2 * b * s * p, n, -1).astype(
                               features_btnd.dtype)])
  decoded = rollout.decode_pixels(spec.tokenizer, tok_params, z_all, spec.grid)
  recon_btHWc = decoded[:b * t].reshape(b, t, height, width, 3)
  pred = decoded[b * t:].reshape(2, b, s, p, height, width, 3)

  per_start = prediction_metrics(pixels_btHWc[:, steps_sp + 1], pred[0], pred[1])
  per_start.update(copy_baseline(pixels_btHWc, recon_btHWc, tokens_btn, steps_sp))
  if pred_tokens is not None:
    hits = pred_tokens[:b * s].reshape(b, s, p, n) == tokens_btn[:, steps_sp + 1]
    per_start["token_accuracy_t"] = jnp.mean(hits.astype(jnp.float32), axis=-1)
  out = {k: jnp.mean(v, axis=1) for k, v in per_start.items()}  # [B, S, P] -> [B, P].
  out["tokenizer_psnr"] = jnp.mean(metrics.psnr(pixels_btHWc, recon_btHWc), axis=1)
  out["valid"], out["episode"], out["index"] = batch["valid"], batch["episode"], batch["index"]
  if acts["indices"] is not None:  # FSQ codes: how many are in use (evaluator.summarize).
    out["action_code_counts"] = metrics.code_counts(  # [B, K', C] over the T-1 transitions.
        acts["indices"], fsq.codebook_size(model.action_bottleneck_levels), axis=1)

  matched_slot = None
  if spec.variant_spec.slot_entities and "ari_fg" not in skipped:
    slots = _slot_metrics(spec, masks_btkn, batch["masks"].astype(jnp.int32))
    matched_slot = slots.pop("matched_slot")
    out.update(slots)
  if spec.variant_spec.latent_actions and "probe" not in skipped:
    headings = batch["headings"][:, :-1] if "headings" in batch else None  # Heading at t.
    out.update(_probe_pairs(spec, acts, matched_slot, batch["actions"], headings))
  return out


jit_eval_step = jax.jit(eval_step, static_argnums=0)


def _sweep_step(spec, states, batch, rng, shared_tokenizer: bool):
  """eval_step vmapped over stacked world-model params (and tokenizers unless shared).

  A shared tokenizer stays unbatched: its encoder runs once per batch, and the
  decoder's convolutions keep one kernel (a vmapped kernel becomes a grouped
  convolution, several times slower on XLA:CPU).
  """
  shared = None if shared_tokenizer else 0
  axes = dict(lam=0, tokenizer=shared, codebook=shared)
  return jax.vmap(lambda s: eval_step(spec, s, batch, rng), in_axes=(axes,))(states)


jit_sweep_step = jax.jit(_sweep_step, static_argnums=(0, 4))

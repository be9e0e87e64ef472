"""Evaluation of trained latent action world models (Sec 4.3, 5.4-5.9).

One jit-compiled step per batch of test windows from the original dataset
(frames, entity masks, ground-truth actions), sharded over the mesh's data axis:

  frames --frozen tokenizer--> tokens --entities/IDM (deterministic)--> latent actions
  FDM rolled P = lam.prediction_steps steps from frame 0 with
    (a) the actions inferred from the ground-truth frames, and
    (b) random actions (uniform FSQ codes / prior samples; wm: uniform ground-truth actions)
  -> greedy token decode (classification) or features (regression) -> tokenizer decoder
  -> PSNR_t, SSIM_t of (a) and Delta_t PSNR = PSNR_t(a) - PSNR_t(b), t = 1..P (Sec 5.6)
plus two references that need no world model: the tokenizer's own reconstruction PSNR
(a ceiling, Sec 5.3) and the "copy" baseline that predicts no change (frame 0's
reconstruction and tokens as the prediction for every t), and ARI-FG of the slot
masks and slot-agent disentanglement (slot variants), and (latent action, ground-truth
action) pairs per agent for a linear probe fitted on the host (Sec 4.3, LAPO-style).

Several parameter sets of one config (checkpoints or seeds) are evaluated together by
one jit-compiled vmap over the parameter axis (`Evaluator.evaluate_sweep`).

    python train.py --config=<same config> --workdir=W --config.stage=eval
    python -m flam_jax.lib.evaluator --workdir=W [--steps=2000,4000] [--workdirs=W2,W3]
"""

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from flam_jax.data import multigrid
from flam_jax.data import pipeline
from flam_jax.data import records
from flam_jax.errors import ConfigError, DataError, FlamError
from flam_jax.lib import metrics, sharding
from flam_jax.modules import fsq
from flam_jax.modules import latent_action
from flam_jax.modules.tokenizer import Tokenizer
from flam_jax.modules.world_model import LatentActionWorldModel

# Defaults of the optional `config.eval` section (configs need not declare it).
EVAL_DEFAULTS = dict(
    split="test",       # Dataset split to evaluate.
    batch_size=0,       # Global windows per step; 0: config.batch_size.
    max_batches=0,      # 0: the whole split.
    window_stride=0,    # Frames between window starts; 0: config.data.window_stride.
    steps="",           # Comma-separated checkpoint steps to sweep; "": the latest.
    workdirs="",        # Comma-separated extra workdirs of the same config (seeds) to sweep.
    seed=0,             # Random latent actions for Delta PSNR.
    probe_steps=300,    # Full-batch gradient steps of the latent action probe.
)
AGENT_ACTIONS = multigrid.NUM_ACTIONS
IGNORE_IDS = (multigrid.FLOOR_ID, multigrid.WALL_ID)  # ARI-FG: agents only.
DATA_FIELDS = ("frames", "masks", "actions")
PER_STEP_KEYS = ("psnr_t", "ssim_t", "psnr_random_t", "delta_psnr_t", "token_accuracy_t",
                 "copy_psnr_t", "copy_token_accuracy_t")


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """Everything static about one evaluation (hashable: the jit cache key)."""

  model: LatentActionWorldModel
  tokenizer: Tokenizer
  grid: Tuple[int, int]
  num_agents: int
  prediction_steps: int

  @classmethod
  def from_stage(cls, stage) -> "EvalSpec":
    return cls(model=stage.model, tokenizer=stage.tokenizer, grid=tuple(stage.grid),
               num_agents=int(stage.num_agents),
               prediction_steps=int(stage.config.lam.prediction_steps))

  @property
  def variant(self) -> str:
    return self.model.variant

  @property
  def has_slots(self) -> bool:
    return self.variant in ("flam", "oc_lam")


# ---- The jit-compiled step. ----
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


def random_actions(spec: EvalSpec, rng: jax.Array, shape_bpk: Tuple[int, int, int]):
  """Random actions shaped like inferred ones, [B, P, K'|1, A] (Delta PSNR's x_hat')."""
  model = spec.model
  if spec.variant == "wm":  # Uniform ground-truth-style actions of every agent, one-hot.
    b, p, _ = shape_bpk
    acts = jax.random.randint(rng, (b, p, model.num_agents), 0, model.num_agent_actions)
    onehot = jax.nn.one_hot(acts, model.num_agent_actions, dtype=jnp.float32)
    return onehot.reshape(b, p, 1, model.num_agents * model.num_agent_actions)
  levels_or_dim = (model.action_bottleneck_levels if model.action_kind == "fsq"
                   else model.action_width)
  return latent_action.sample_random_actions(model.action_kind, rng, shape_bpk, levels_or_dim)


def eval_step(spec: EvalSpec, state: Dict[str, Any], batch: Dict[str, jax.Array],
              rng: jax.Array) -> Dict[str, jax.Array]:
  """Per-example metrics of one batch of windows (no reductions over the batch).

  Args:
    spec: the static model description.
    state: dict(lam=world model params, tokenizer=frozen tokenizer params).
    batch: frames uint8 [B, T, H, W, 3], masks uint8 [B, T, H, W] (entity ids),
      actions int32 [B, T-1, agents], valid bool [B], episode int32 [B] (for the probe's
      split), index int32 [B] (the window's position in the dataset).
    rng: key for the random actions (folded with each window's index).

  Returns:
    dict of per-example arrays (see `summarize` for their reductions).
  """
  model, tok = spec.model, spec.tokenizer
  frames = batch["frames"]
  b, t, height, width, _ = frames.shape
  p, (h, w) = spec.prediction_steps, spec.grid
  n = h * w
  chex.assert_shape(batch["masks"], (b, t, height, width))
  lam_vars, tok_vars = {"params": state["lam"]}, {"params": state["tokenizer"]}

  # Frozen tokenizer: tokens and codebook ("ExtractCode").
  pixels_btHWc = frames.astype(jnp.float32) / 255.0
  _, tokens = tok.apply(tok_vars, pixels_btHWc.reshape(b * t, height, width, 3),
                        method=Tokenizer.encode)
  tokens_btn = tokens.reshape(b, t, n).astype(jnp.int32)
  codebook_cd = tok.apply(tok_vars, jnp.arange(tok.codebook_size),
                          method=Tokenizer.indices_to_features)
  features_btnd = codebook_cd[tokens_btn]

  # Entities, actions inferred from ground-truth frames, two rollouts from frame 0.
  entities_btkd, masks_btkn = model.apply(lam_vars, features_btnd,
                                          method=LatentActionWorldModel.entities)
  k, d = entities_btkd.shape[2:]
  acts = model.apply(lam_vars, entities_btkd, batch["actions"], deterministic=True,
                     method=LatentActionWorldModel.infer_actions)
  actions_btka = acts["actions"]  # [B, T-1, K'|1, A]
  # Random actions keyed by each window's dataset index: independent of batching and devices.
  keys_b = jax.vmap(lambda i: jax.random.fold_in(rng, i))(batch["index"])
  rand_bpka = jax.vmap(lambda key: random_actions(spec, key, (1, p, actions_btka.shape[2]))[0])(
      keys_b).astype(actions_btka.dtype)
  # Both rollouts (inferred, random actions) as one batch of 2B.
  start_bkd = entities_btkd[:, 0]
  predicted = model.apply(lam_vars, jnp.concatenate([start_bkd, start_bkd]),
                          jnp.concatenate([actions_btka[:, :p], rand_bpka]),
                          method=LatentActionWorldModel.rollout)  # [2B, P, K, D]
  predicted_mkd = predicted.reshape(2 * b * p, k, d)
  if model.aggregator_mode == "classification":
    pred_tokens_mn = model.apply(lam_vars, predicted_mkd,
                                 method=LatentActionWorldModel.decode_tokens)  # [M, N]
    pred_features = codebook_cd[pred_tokens_mn]
  else:
    pred_tokens_mn = None
    pred_features = model.apply(lam_vars, predicted_mkd, method=LatentActionWorldModel.aggregate)

  # One decoder call for reconstructions and both rollouts.
  z_all = jnp.concatenate([features_btnd.reshape(b * t, n, -1),
                           pred_features.astype(features_btnd.dtype)])
  decoded = tok.apply(tok_vars, z_all.reshape(-1, h, w, z_all.shape[-1]), method=Tokenizer.decode)
  decoded = jnp.clip(decoded, 0.0, 1.0)
  recon_btHWc = decoded[:b * t].reshape(b, t, height, width, 3)
  pred = decoded[b * t:].reshape(2, b, p, height, width, 3)

  out = prediction_metrics(pixels_btHWc[:, 1:p + 1], pred[0], pred[1])
  out["tokenizer_psnr"] = jnp.mean(metrics.psnr(pixels_btHWc, recon_btHWc), axis=1)
  # "Copy": predict that nothing moves. A world model must beat it to have learned dynamics.
  copy_bpHWc = jnp.broadcast_to(recon_btHWc[:, :1], (b, p, height, width, 3))
  out["copy_psnr_t"] = metrics.psnr(pixels_btHWc[:, 1:p + 1], copy_bpHWc)
  out["copy_token_accuracy_t"] = jnp.mean(
      (tokens_btn[:, :1] == tokens_btn[:, 1:p + 1]).astype(jnp.float32), axis=-1)
  if pred_tokens_mn is not None:
    hits = pred_tokens_mn[:b * p].reshape(b, p, n) == tokens_btn[:, 1:p + 1]
    out["token_accuracy_t"] = jnp.mean(hits.astype(jnp.float32), axis=-1)
  out["valid"], out["episode"], out["index"] = batch["valid"], batch["episode"], batch["index"]

  # Slot masks vs entity masks (slot variants).
  entity_ids = batch["masks"].astype(jnp.int32)
  if masks_btkn is not None:
    slot_ids_btn = jnp.argmax(masks_btkn, axis=2)  # Each patch's slot; pixels inherit it.
    ari = metrics.patch_adjusted_rand_index(
        entity_ids.reshape(b * t, height, width), slot_ids_btn.reshape(b * t, n), grid=spec.grid,
        num_true=multigrid.FIRST_AGENT_ID + spec.num_agents, num_pred=k, ignore_ids=IGNORE_IDS)
    out["ari_fg"] = jnp.mean(ari.reshape(b, t), axis=1)
    dis = metrics.slot_agent_disentanglement(masks_btkn, entity_ids, grid=spec.grid,
                                             num_agents=spec.num_agents,
                                             first_agent_id=multigrid.FIRST_AGENT_ID)
    out["disentangle_sum"], out["disentangle_count"] = dis["score_sum"], dis["num_moving"]

  # Per-agent (latent action, ground-truth action) pairs for the probe.
  if spec.variant != "wm":
    indices = acts["indices"]
    codes_btk = (jnp.full(actions_btka.shape[:3], -1, jnp.int32) if indices is None
                 else indices.astype(jnp.int32))
    if spec.variant == "flam":  # The latent action of the slot matched to each agent.
      slot_bta = dis["matched_slot"]
      safe = jnp.maximum(slot_bta, 0)
      latent = jnp.take_along_axis(actions_btka, safe[..., None], axis=2)
      codes = jnp.take_along_axis(codes_btk, safe, axis=2)
      pair_valid = slot_bta >= 0
    else:  # One scene action for all agents.
      shape = (b, t - 1, spec.num_agents)
      latent = jnp.broadcast_to(actions_btka, shape + actions_btka.shape[-1:])
      codes = jnp.broadcast_to(codes_btk, shape)
      pair_valid = jnp.ones(shape, bool)
    out.update(probe_latent=latent.astype(jnp.float32), probe_code=codes,
               probe_valid=pair_valid, probe_label=batch["actions"].astype(jnp.int32))
  return out


_jit_eval_step = jax.jit(eval_step, static_argnums=0)


def _sweep_step(spec, states, batch, rng, shared_tokenizer: bool):
  """eval_step vmapped over stacked world-model params (and tokenizers unless shared).

  A shared tokenizer stays unbatched: its encoder runs once per batch, and the
  decoder's convolutions keep one kernel (a vmapped kernel becomes a grouped
  convolution, several times slower on XLA:CPU).
  """
  axes = dict(lam=0, tokenizer=None if shared_tokenizer else 0)
  return jax.vmap(lambda s: eval_step(spec, s, batch, rng), in_axes=(axes,))(states)


_jit_sweep_step = jax.jit(_sweep_step, static_argnums=(0, 4))


# ---- Latent action probe (host). ----
def _probe_features(latent, codes, agents, num_agents: int, num_codes: int,
                    mean=None, std=None):
  """Per-agent blocks of [one-hot code | standardised latent, 1]: [M, agents * F]."""
  if num_codes:
    feat = np.eye(num_codes, dtype=np.float32)[codes]
  else:
    feat = (latent - mean) / std
  feat = np.concatenate([feat, np.ones((feat.shape[0], 1), np.float32)], axis=1)
  blocks = np.zeros((feat.shape[0], num_agents, feat.shape[1]), np.float32)
  blocks[np.arange(feat.shape[0]), agents] = feat
  return blocks.reshape(feat.shape[0], -1)


@jax.jit
def _fit_logistic(x_train, y_onehot, weight_decay, steps_array):
  """Multinomial logistic regression by full-batch Adam; returns (W, b)."""
  num_features, num_classes = x_train.shape[1], y_onehot.shape[1]
  params = (jnp.zeros((num_features, num_classes)), jnp.zeros((num_classes,)))
  tx = optax.adam(0.1)

  def loss_fn(params):
    logits = x_train @ params[0] + params[1]
    ce = -jnp.mean(jnp.sum(y_onehot * jax.nn.log_softmax(logits), axis=-1))
    return ce + weight_decay * jnp.sum(jnp.square(params[0]))

  def step(carry, _):
    params, opt_state = carry
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), steps_array)
  return params


def fit_probe(x_train, y_train, x_test, y_test, num_classes: int, *, steps: int = 300,
              weight_decay: float = 1e-4) -> Dict[str, float]:
  """Linear probe latent -> action (Sec 4.3's latent action decoder, fitted LAPO-style).

  Multinomial logistic regression on [M, F] features, `steps` full-batch Adam steps
  (lr 0.1, L2 `weight_decay`). Returns test accuracy, train accuracy and the
  majority-class baseline (the train split's most frequent action, scored on test).
  """
  x_train, x_test = np.asarray(x_train, np.float32), np.asarray(x_test, np.float32)
  y_train, y_test = np.asarray(y_train, np.int64), np.asarray(y_test, np.int64)
  weights, bias = _fit_logistic(jnp.asarray(x_train),
                                jax.nn.one_hot(y_train, num_classes, dtype=jnp.float32),
                                jnp.float32(weight_decay), jnp.zeros((steps,)))
  weights, bias = np.asarray(weights), np.asarray(bias)
  predict = lambda x: np.argmax(x @ weights + bias, axis=-1)
  majority = np.bincount(y_train, minlength=num_classes).argmax()
  return dict(accuracy=float(np.mean(predict(x_test) == y_test)),
              train_accuracy=float(np.mean(predict(x_train) == y_train)),
              majority=float(np.mean(y_test == majority)))


def probe_latent_actions(ex: Dict[str, np.ndarray], spec: EvalSpec,
                         steps: int = 300) -> Optional[Dict[str, float]]:
  """Fits the probe on the pairs of the first half of the episodes, scores on the rest.

  Features: the one-hot FSQ code of the latent action (codes are categorical) or
  the standardised Gaussian latent, in a separate block per agent (one linear probe
  per agent, fitted jointly). Splitting by episode keeps the overlapping windows of
  one episode on one side; with a single episode, by window order instead.
  """
  if "probe_latent" not in ex:
    return None
  valid = ex["probe_valid"]  # [M, T-1, agents]
  m, _, num_agents = valid.shape
  agents = np.broadcast_to(np.arange(num_agents), valid.shape)[valid]
  episodes = np.broadcast_to(ex["episode"][:, None, None], valid.shape)[valid]
  index = ex.get("index", np.arange(m))
  windows = np.broadcast_to(index[:, None, None], valid.shape)[valid]
  latent = ex["probe_latent"][valid]
  codes = ex["probe_code"][valid]
  labels = ex["probe_label"][valid]
  unique = np.unique(episodes)
  if len(unique) >= 2:
    train = episodes < unique[(len(unique) + 1) // 2]
  else:
    train = windows < np.median(index)
  if train.sum() < 2 or (~train).sum() < 2:
    return None
  num_codes = (fsq.codebook_size(spec.model.action_bottleneck_levels)
               if spec.model.action_kind == "fsq" else 0)
  mean = latent[train].mean(axis=0)
  std = latent[train].std(axis=0) + 1e-6
  feats = _probe_features(latent, codes, agents, num_agents, num_codes, mean, std)
  out = fit_probe(feats[train], labels[train], feats[~train], labels[~train], AGENT_ACTIONS,
                  steps=steps)
  out.update(train_pairs=int(train.sum()), test_pairs=int((~train).sum()))
  return out


# ---- Host reductions. ----
def summarize(per_example: Dict[str, np.ndarray], spec: EvalSpec,
              probe_steps: int = 300) -> Dict[str, Any]:
  """Dataset metrics from per-example arrays (padding removed via `valid`).

  Means over windows: psnr_t, ssim_t, psnr_random_t, delta_psnr_t,
  token_accuracy_t (per step t = 1..P), tokenizer_psnr, ari_fg (per window: mean
  over its frames). disentanglement = sum of matched shares / number of
  (transition, moving agent) pairs. Keys that do not apply to the variant are None.
  """
  valid = np.asarray(per_example["valid"]).astype(bool)
  ex = {k: np.asarray(v)[valid] for k, v in per_example.items()}
  if not valid.any():
    raise DataError("no evaluation windows; check eval.split and eval.max_batches")
  out: Dict[str, Any] = dict(variant=spec.variant, num_windows=int(valid.sum()),
                             prediction_steps=spec.prediction_steps)
  for key in PER_STEP_KEYS:
    out[key] = ex[key].mean(axis=0).tolist() if key in ex else None
  out["psnr_mean"] = float(np.mean(out["psnr_t"]))
  out["delta_psnr_mean"] = float(np.mean(out["delta_psnr_t"]))
  out["tokenizer_psnr"] = float(ex["tokenizer_psnr"].mean())
  out["ari_fg"] = float(ex["ari_fg"].mean()) if "ari_fg" in ex else None
  out["disentanglement"] = None
  if "disentangle_sum" in ex and ex["disentangle_count"].sum() > 0:
    out["disentanglement"] = float(ex["disentangle_sum"].sum() / ex["disentangle_count"].sum())
  probe = probe_latent_actions(ex, spec, probe_steps)
  out["probe_accuracy"] = probe["accuracy"] if probe else None
  out["probe_majority"] = probe["majority"] if probe else None
  out["probe_train_accuracy"] = probe["train_accuracy"] if probe else None
  out["probe_test_pairs"] = probe["test_pairs"] if probe else None
  return out


# ---- Driving the step over batches. ----
def _pad(batch: Dict[str, np.ndarray], size: int) -> Dict[str, np.ndarray]:
  """Zero-pads every field to `size` rows."""
  def pad(x):
    x = np.asarray(x)
    if x.shape[0] == size:
      return x
    return np.concatenate([x, np.zeros((size - x.shape[0],) + x.shape[1:], x.dtype)])
  return {k: pad(v) for k, v in batch.items()}


def _same_tree(a, b) -> bool:
  """Whether two parameter trees are the same object or hold equal arrays."""
  if a is b:
    return True
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  return tree_a == tree_b and all(
      x is y or (np.shape(x) == np.shape(y) and np.array_equal(np.asarray(x), np.asarray(y)))
      for x, y in zip(leaves_a, leaves_b))


class Evaluator:
  """Evaluates one stage's model (or a sweep of parameter sets) over batches of windows."""

  def __init__(self, stage, mesh=None, *, seed: int = 0, probe_steps: int = 300):
    self.stage = stage
    self.spec = EvalSpec.from_stage(stage)
    self.mesh = mesh if mesh is not None else sharding.make_mesh(1)
    self.seed = seed
    self.probe_steps = probe_steps
    self.timings: Dict[str, float] = {}

  def _local_rows(self, n: int) -> int:
    """n rounded up to a multiple of this process's share of the data axis."""
    per_process = max(1, self.mesh.shape[sharding.DATA_AXIS] // jax.process_count())
    return -(-n // per_process) * per_process

  def _prepare(self, batches: Iterable[Dict[str, np.ndarray]]) -> Iterator[Dict[str, jax.Array]]:
    """numpy batches (+ optional valid/index/episode) -> padded, globally sharded batches."""
    rows, offset = None, 0
    for batch in batches:
      local = {k: np.asarray(batch[k]) for k in DATA_FIELDS}
      size = local["frames"].shape[0]
      local["valid"] = np.asarray(batch.get("valid", np.ones((size,), bool)), bool)
      index = offset + np.arange(size)
      local["index"] = np.asarray(batch.get("index", index), np.int32)
      local["episode"] = np.asarray(batch.get("episode", index), np.int32)
      offset += size
      rows = rows or self._local_rows(size)
      if size > rows:
        raise ConfigError(f"evaluation batch of {size} windows after batches of {rows}; "
                          "pass equal batches (the last may be smaller)")
      yield sharding.to_global_batch(_pad(local, rows), self.mesh)

  def _gather(self, out):
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.process_allgather(out, tiled=True)
    return jax.device_get(out)

  def _run(self, step_fn, state, batches, batch_axis: int):
    """Runs `step_fn` over the batches and concatenates its per-example outputs on the host.

    A batch's outputs are fetched only after the next batch's step is dispatched, so the
    device is never idle waiting on a host transfer (one step in flight, not a sync per step).
    """
    state = jax.device_put(state, sharding.replicated(self.mesh))
    rng = jax.random.PRNGKey(self.seed)
    outs, start, first_done, windows = [], time.perf_counter(), None, 0

    def collect(out):
      nonlocal first_done, windows
      out = self._gather(out)
      outs.append(out)
      if first_done is None:
        first_done = time.perf_counter()
      else:
        windows += int(np.asarray(out["valid"]).reshape(-1, out["valid"].shape[-1])[0].sum())

    in_flight = None
    for batch in self._prepare(batches):
      dispatched = step_fn(self.spec, state, batch, rng)  # Asynchronous.
      if in_flight is not None:
        collect(in_flight)
      in_flight = dispatched
    if in_flight is None:
      raise DataError("no evaluation batches; check eval.split and eval.max_batches")
    collect(in_flight)
    end = time.perf_counter()
    steady = end - first_done
    self.timings = dict(first_batch_seconds=first_done - start, seconds=end - start,
                        windows_per_second=windows / steady if windows and steady > 0 else None)
    return {k: np.concatenate([o[k] for o in outs], axis=batch_axis) for k in outs[0]}

  def evaluate(self, params, batches, tokenizer_params=None) -> Dict[str, Any]:
    """Metrics of one parameter set over `batches` (dicts of frames, masks, actions)."""
    tok = self.stage.tokenizer_params if tokenizer_params is None else tokenizer_params
    per_example = self._run(_jit_eval_step, dict(lam=params, tokenizer=tok), batches, 0)
    return dict(summarize(per_example, self.spec, self.probe_steps), **self.timings)

  def evaluate_sweep(self, params_list: Sequence[Any], batches,
                     tokenizer_params_list: Optional[Sequence[Any]] = None) -> List[Dict[str, Any]]:
    """Metrics of several parameter sets of one config, in one vmap over the parameter axis."""
    if not params_list:
      raise ConfigError("evaluate_sweep needs at least one parameter set")
    toks = tokenizer_params_list or [self.stage.tokenizer_params] * len(params_list)
    if len(toks) != len(params_list):
      raise ConfigError(f"{len(params_list)} parameter sets but {len(toks)} tokenizers")
    shared = all(_same_tree(toks[0], t) for t in toks[1:])
    stack = lambda trees: jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)
    try:
      state = dict(lam=stack(params_list), tokenizer=toks[0] if shared else stack(toks))
    except ValueError as e:
      raise ConfigError(f"the swept parameter sets differ in structure ({e}); sweep only "
                        "checkpoints or seeds of one config") from e
    step_fn = lambda spec, st, batch, rng: _jit_sweep_step(spec, st, batch, rng, shared)
    per_example = self._run(step_fn, state, batches, 1)
    return [dict(summarize({k: v[r] for k, v in per_example.items()}, self.spec,
                           self.probe_steps), swept_runs=len(params_list), **self.timings)
            for r in range(len(params_list))]


def evaluate(stage, params, batches, **kwargs) -> Dict[str, Any]:
  """Module-level shortcut for `Evaluator(stage).evaluate(params, batches)`."""
  return Evaluator(stage, **kwargs).evaluate(params, batches)


def evaluate_sweep(stage, params_list, batches, **kwargs) -> List[Dict[str, Any]]:
  """Evaluates stacked parameter sets of one config in ONE jit-compiled vmap (see Evaluator)."""
  return Evaluator(stage, **kwargs).evaluate_sweep(params_list, batches)


# ---- Dataset windows. ----
def dataset_batches(data_dir: str, split: str, *, window_length: int, batch_size: int,
                    window_stride: int = 1, max_batches: int = 0,
                    mesh=None) -> Iterator[Dict[str, np.ndarray]]:
  """This process's batches of one ordered pass over `split` (frames, masks, actions).

  Every process yields the same number of batches (missing ones are all padding),
  each of batch_size / process_count windows (the last one zero-padded) with
  `valid`, `index` (the window's position in the split) and `episode` fields.
  """
  if mesh is not None and batch_size % mesh.shape[sharding.DATA_AXIS]:
    raise ConfigError(f"eval.batch_size={batch_size} is not divisible by the "
                      f"{mesh.shape[sharding.DATA_AXIS]} devices of the data axis; use a "
                      "multiple of it")
  local_size = batch_size // jax.process_count()
  source = pipeline.WindowSource(data_dir, split, window_length=window_length,
                                 window_stride=window_stride, fields=DATA_FIELDS)
  # pylint: disable-next=protected-access
  lo, _ = pipeline._shard_bounds(len(source), jax.process_index(), jax.process_count())
  num_batches = math.ceil(math.ceil(len(source) / jax.process_count()) / local_size)
  if max_batches:
    num_batches = min(num_batches, max_batches)
  ds = iter(pipeline.make_dataset(
      data_dir, split, window_length=window_length, batch_size=local_size, seed=0,
      shuffle=False, num_epochs=1, window_stride=window_stride, drop_remainder=False,
      fields=DATA_FIELDS))
  offset, last = lo, None
  for _ in range(num_batches):
    batch = next(ds, None)
    if batch is None:  # This process ran out: an all-padding batch keeps steps in lockstep.
      batch = {k: np.zeros((local_size,) + v.shape[1:], v.dtype) for k, v in last.items()}
      yield dict(batch, valid=np.zeros((local_size,), bool),
                 episode=np.zeros((local_size,), np.int32), index=np.zeros((local_size,), np.int32))
      continue
    size = batch["frames"].shape[0]
    index = offset + np.arange(size)
    batch = dict(batch, valid=np.ones((size,), bool), index=index.astype(np.int32),
                 episode=source.episode_of(index).astype(np.int32))
    offset += size
    last = {k: batch[k] for k in DATA_FIELDS}
    yield _pad(batch, local_size)


# ---- Entry points. ----
def eval_settings(config: ConfigDict) -> Dict[str, Any]:
  """config.eval merged over EVAL_DEFAULTS (the section is optional)."""
  section = config.get("eval") if hasattr(config, "get") else None
  settings = dict(EVAL_DEFAULTS)
  if section:
    section = section.to_dict() if hasattr(section, "to_dict") else dict(section)
    unknown = sorted(set(section) - set(EVAL_DEFAULTS))
    if unknown:
      raise ConfigError(f"config.eval has unknown keys {unknown}; use {sorted(EVAL_DEFAULTS)}")
    settings.update(section)
  return settings


def _split_list(value) -> List[str]:
  if isinstance(value, (list, tuple)):
    return [str(v) for v in value]
  return [s.strip() for s in str(value or "").split(",") if s.strip()]


def _load_runs(workdir: str, settings: Dict[str, Any]):
  """[(workdir, step, stage, params)] for the latest or listed steps of each workdir."""
  from flam_jax.stages import lam  # pylint: disable=g-import-not-at-top
  runs = []
  try:
    steps = [int(s) for s in _split_list(settings["steps"])] or [None]
  except ValueError as e:
    raise ConfigError(f"config.eval.steps={settings['steps']!r} is not a comma-separated list "
                      "of checkpoint steps, e.g. '2000,4000'") from e
  workdirs = [workdir] + _split_list(settings["workdirs"])
  for wd in workdirs:
    for step in steps:
      stage, params, real_step = lam.load_trained(wd, step)
      runs.append((os.path.abspath(wd), int(real_step), stage, params))
  spec = EvalSpec.from_stage(runs[0][2])
  for wd, step, stage, _ in runs[1:]:
    if EvalSpec.from_stage(stage) != spec:
      raise ConfigError(f"{wd} step {step} has another model config than {runs[0][0]}; a sweep "
                        "evaluates checkpoints or seeds of one config only")
  return runs


def format_table(results: Sequence[Dict[str, Any]], names: Sequence[str]) -> str:
  """A markdown table: one row per metric (per rollout step t for the per-step ones)."""
  def fmt(v, digits=3):
    return "n/a" if v is None else f"{v:.{digits}f}"
  rows = [("windows", [str(r["num_windows"]) for r in results])]
  p = results[0]["prediction_steps"]
  labels = dict(psnr_t="PSNR", ssim_t="SSIM", delta_psnr_t="Delta PSNR",
                psnr_random_t="PSNR (random actions)", token_accuracy_t="token accuracy",
                copy_psnr_t="PSNR of copy (no change)",
                copy_token_accuracy_t="token accuracy of copy")
  for key, label in labels.items():
    for t in range(p):
      rows.append((f"{label} t={t + 1}",
                   [fmt(r[key][t] if r[key] is not None else None) for r in results]))
  for key, label in [("psnr_mean", "PSNR mean over t"), ("delta_psnr_mean", "Delta PSNR mean"),
                     ("tokenizer_psnr", "tokenizer PSNR (ceiling)"), ("ari_fg", "ARI-FG"),
                     ("disentanglement", "slot-agent disentanglement"),
                     ("probe_accuracy", "probe accuracy"), ("probe_majority", "probe majority")]:
    rows.append((label, [fmt(r[key]) for r in results]))
  lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  lines += [f"| {label} | " + " | ".join(values) + " |" for label, values in rows]
  return "\n".join(lines)


def evaluate_workdir(workdir: str, settings: Dict[str, Any],
                     run_config: Optional[ConfigDict] = None) -> Dict[str, Any]:
  """Evaluates the run(s) named by `settings` and writes <workdir>/eval/metrics.json."""
  sharding.maybe_initialize_distributed()
  runs = _load_runs(workdir, settings)
  stage = runs[0][2]
  config = stage.config
  data_dir = ""
  if run_config is not None and run_config.data.dir and os.path.isdir(run_config.data.dir):
    data_dir = run_config.data.dir
  data_dir = data_dir or config.data.dir
  window_length = config.data.window_length
  meta = pipeline.load_metadata(data_dir)
  missing = [f for f in DATA_FIELDS[1:] if f not in records.ground_truth(meta)]
  if missing:  # Guard until the metrics that need them can be skipped one by one.
    raise DataError(f"{data_dir} has no ground-truth {' and '.join(missing)} (its metadata "
                    f"lists {records.ground_truth(meta) or 'none'}), which this evaluation "
                    "needs for ARI-FG, disentanglement and the probe; evaluate on a dataset "
                    "that has them (Multigrid, or import npz episodes with masks and actions)")
  pipeline.validate(meta, image_size=config.data.image_size, window_length=window_length,
                    num_agents=stage.num_agents)
  mesh_config = run_config if run_config is not None else config
  mesh = sharding.make_mesh(mesh_config.mesh.model_axis_size)
  batch_size = int(settings["batch_size"] or mesh_config.batch_size)
  stride = int(settings["window_stride"] or config.data.window_stride)
  batches = dataset_batches(data_dir, settings["split"], window_length=window_length,
                            batch_size=batch_size, window_stride=stride,
                            max_batches=int(settings["max_batches"]), mesh=mesh)
  evaluator = Evaluator(stage, mesh, seed=int(settings["seed"]),
                        probe_steps=int(settings["probe_steps"]))
  if len(runs) == 1:
    results = [evaluator.evaluate(runs[0][3], batches, runs[0][2].tokenizer_params)]
  else:
    results = evaluator.evaluate_sweep([r[3] for r in runs], batches,
                                       [r[2].tokenizer_params for r in runs])
  for (wd, step, _, _), result in zip(runs, results):
    result.update(workdir=wd, step=step, split=settings["split"], data_dir=data_dir)
  names = [f"step {r[1]}" if len({x[0] for x in runs}) == 1 else f"{os.path.basename(r[0])}@{r[1]}"
           for r in runs]
  table = format_table(results, names)
  summary = dict(results[0]) if len(results) == 1 else dict(runs=results)
  out_path = os.path.join(os.path.abspath(workdir), "eval", "metrics.json")
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    tmp = out_path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(summary, f, indent=2)
    os.replace(tmp, out_path)
    print(f"\nEvaluation of {config.lam.variant} on {data_dir} ({settings['split']}):\n")
    print(table)
    print(f"\n  metrics: {out_path}", flush=True)
  return dict(summary, table=table, metrics_path=out_path, preempted=False)


def run_evaluation(config: ConfigDict, workdir: str) -> Dict[str, Any]:
  """The `eval` stage of train.py: evaluates the latent action model trained in `workdir`.

  Reads the optional config.eval section (defaults in EVAL_DEFAULTS), prints a
  markdown table, writes <workdir>/eval/metrics.json and returns its dict (plus
  table, metrics_path and preempted=False).
  """
  return evaluate_workdir(workdir, eval_settings(config), run_config=config)


def main(argv):
  del argv
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax is chatty at INFO.
  settings = dict(EVAL_DEFAULTS)
  for key in EVAL_DEFAULTS:
    settings[key] = getattr(f, key)
  try:
    evaluate_workdir(f.workdir, settings)
  except FlamError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "Workdir of a trained run (with lam/checkpoints).")
  flags.mark_flag_as_required("workdir")
  for _key, _default in EVAL_DEFAULTS.items():
    {str: flags.DEFINE_string, int: flags.DEFINE_integer}[type(_default)](
        _key, _default, f"eval.{_key} (see EVAL_DEFAULTS)")
  app.run(main)

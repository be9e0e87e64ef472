"""Policy learning helpers (Sec 4.3): latent actions of demonstrations, fitting f, live evaluation.

  demonstration_transitions / labelled_draw: which transitions of the demonstrations are
    labelled by the stage (and by analyses that must match it), and which few carry labels;
  infer_latent_actions: a trained world model's latent actions (and slot keys, and how
    well a slot holds the controlled agent) for every transition of whole token episodes,
    in one jit-compiled function over chunks of episodes (padded, so it compiles once);
  fit_decoder: the latent action decoder f by full-batch AdamW on the labelled pairs,
    one jit-compiled `lax.scan` over the steps, optionally stopped early on held-out labels;
  decode_labels: f's pseudo-labels (argmax) for many transitions;
  evaluate_policy: pi_u in the live task (the goal task's success rate and return, numpy
    environments in lock step; a Procgen game's return on held-out levels), one
    jit-compiled tokenizer + policy call per step.
"""

from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flam_jax.data import pipeline, records
from flam_jax.lib import metrics, models, rollout
from flam_jax.modules.policy import LatentActionDecoder, TokenPolicy, cross_entropy
from flam_jax.modules.tokenizer import Tokenizer


def _chunks(array: np.ndarray, size: int):
  """Yields (chunk padded to `size` rows, number of real rows)."""
  for first in range(0, len(array), size):
    part = array[first:first + size]
    padded = np.zeros((size,) + array.shape[1:], array.dtype)
    padded[:len(part)] = part
    yield padded, len(part)


def demonstration_transitions(tokens_dir: str, data_dir: str,
                              episode_length: int) -> Dict[str, np.ndarray]:
  """Every active transition (before agent 0 reaches the goal; before a Procgen level's
  end) of the train split of the demonstrations, in the order the policy stage labels them.

  Returns dict(episode_m, time_m [M] (the transition's episode and frame), tokens_elhw
  [E, L, h, w] (the frozen tokens of every frame) and actions_elk [E, L-1, agents] (the
  true actions, one column for single-agent data: the stage reads them only for the
  labelled subset, the upper bound and its diagnostics)).
  """
  tokens = pipeline.WindowSource(tokens_dir, "train", window_length=episode_length,
                                 fields=("tokens", "actions"))
  active = pipeline.WindowSource(data_dir, "train", window_length=episode_length,
                                 fields=("active",))
  episodes = [tokens.read_episode(e) for e in range(tokens.num_episodes)]
  active_el = np.stack([active.read_episode(e)["active"][:-1]
                        for e in range(active.num_episodes)]).astype(bool)
  episode_m, time_m = np.nonzero(active_el)
  actions_elk = np.stack([ep["actions"] for ep in episodes])
  if actions_elk.ndim == 2:  # [E, L-1]: one actor (Procgen).
    actions_elk = actions_elk[..., None]
  return dict(episode_m=episode_m, time_m=time_m,
              tokens_elhw=np.stack([ep["tokens"] for ep in episodes]), actions_elk=actions_elk)


def labelled_draw(num_transitions: int, num_labels: int, seed: int) -> np.ndarray:
  """The rows of the `num_labels` labelled transitions: a random draw fixed by the seed."""
  return np.random.default_rng([seed, 11]).permutation(num_transitions)[:num_labels]


def infer_latent_actions(loaded: models.LoadedWorldModel, lam_params, tokens_elhw: np.ndarray,
                         entity_ids_elHW: Optional[np.ndarray] = None, *, num_agents: int = 0,
                         agent: int = 0, episodes_per_call: int = 16) -> Dict[str, np.ndarray]:
  """A world model's latent actions of whole token episodes, and where its slots put `agent`.

  Returns dict(actions [E, L-1, K', A], and for slot models keys [E, L-1, K', U]: each
  slot's appearance at t, the share of each token code under its attention mask over the
  U codes that occur in `tokens_elhw` (what f attends over: which agent a slot holds, and
  its heading, are in which codes it covers; on the goal task a linear selector picked
  agent 0's slot from these in 91% of the bound transitions against 71% from the slots'
  entity vectors, experiments/README.md); with `entity_ids_elHW` (the data's
  per-pixel entity ids, Multigrid's `masks`) also agent_slot [E, L-1] (the slot matched
  to `agent` per transition, as the evaluation's disentanglement matches them) and
  agent_share [E, L-1] (the share of the agent's pixels that slot covers): a diagnostic
  of binding, never an input of f. The bottleneck is deterministic (FSQ codes or Gaussian
  means).
  """
  model = loaded.model
  slotted = model.variant == "flam"
  with_binding = slotted and entity_ids_elHW is not None

  codes_u = np.unique(tokens_elhw)  # Only the codes in use (27 of 1024 on the goal task).
  code_position_c = np.zeros(int(codes_u[-1]) + 1, np.int32)
  code_position_c[codes_u] = np.arange(len(codes_u))

  @jax.jit
  def infer(params, tokens_elhw, entity_ids_elHW):
    e, l = tokens_elhw.shape[:2]
    tokens_eln = tokens_elhw.reshape(e, l, -1)
    features_elnd = rollout.features(loaded.codebook, tokens_eln)
    entities_elkd, masks_elkn = rollout.entities(model, params, features_elnd)
    out = dict(actions=rollout.infer_actions(model, params, entities_elkd,
                                             deterministic=True)["actions"])
    if slotted:
      codes_elnu = jax.nn.one_hot(jnp.asarray(code_position_c)[tokens_eln], len(codes_u))
      covered_elku = jnp.einsum("elkn,elnu->elku", masks_elkn[:, :-1], codes_elnu[:, :-1])
      out["keys"] = covered_elku / jnp.maximum(
          jnp.sum(masks_elkn[:, :-1], axis=-1, keepdims=True), 1e-6)
    if with_binding:
      binding = metrics.slot_agent_disentanglement(
          masks_elkn, entity_ids_elHW, grid=tokens_elhw.shape[2:], num_agents=num_agents,
          first_agent_id=records.FIRST_AGENT_ID)
      out["agent_slot"] = binding["matched_slot"][..., agent]
      out["agent_share"] = binding["matched_share"][..., agent]
    return out

  parts = []
  ids_chunks = _chunks(entity_ids_elHW, episodes_per_call) if with_binding else None
  for chunk, n in _chunks(tokens_elhw, episodes_per_call):
    ids = jnp.asarray(next(ids_chunks)[0]) if ids_chunks is not None else None
    out = jax.device_get(infer(lam_params, jnp.asarray(chunk, jnp.int32), ids))
    parts.append({name: np.asarray(value[:n]) for name, value in out.items()})
  return {name: np.concatenate([part[name] for part in parts]).astype(
      np.int32 if name == "agent_slot" else np.float32) for name in parts[0]}


def fit_decoder(decoder: LatentActionDecoder, actions_mka: np.ndarray,
                keys_mkd: Optional[np.ndarray], labels_m: np.ndarray, *, steps: int,
                learning_rate: float, seed: int, weight_decay: float = 1e-4,
                validation_fraction: float = 0.0):
  """Trains f on labelled (latent action, true action) pairs; returns (params, metrics).

  validation_fraction > 0: early stopping. f is first fitted on the other labelled pairs
  for `steps` steps and scored on these after every step by its balanced accuracy (the
  mean recall of the actions they hold, so that labelling every transition with the
  majority action scores no better than chance); then it is fitted on all of them for the
  number of steps that scored best (the fewest among ties). With 1000 labels f fits any
  labels exactly and, fitted to the end, labels the other transitions worse than the
  majority action (experiments/README.md, Sec 4.3). Plain accuracy as the criterion
  stopped f where it labelled 89% "forward" (true: 69%), and pi_u then seldom turned.
  """
  actions = jnp.asarray(actions_mka, jnp.float32)
  keys = None if keys_mkd is None else jnp.asarray(keys_mkd, jnp.float32)
  labels = jnp.asarray(labels_m, jnp.int32)
  tx = optax.adamw(learning_rate, weight_decay=weight_decay)

  def rows(array, index):
    return None if array is None else array[index]

  @jax.jit
  def fit(rng, fit_rows, score_rows, score_weights, stop_at):
    """`steps` steps on fit_rows: (params after stop_at steps, losses, accuracies, the
    accuracy on score_rows weighted by score_weights after each step)."""
    a, k, y = actions[fit_rows], rows(keys, fit_rows), labels[fit_rows]
    score_a, score_k, score_y = actions[score_rows], rows(keys, score_rows), labels[score_rows]
    params = decoder.init(rng, a[:1], None if k is None else k[:1])["params"]

    def loss_fn(p, a, k, y, weights=None):
      logits, _ = decoder.apply({"params": p}, a, k)
      return cross_entropy(logits, y, weights)

    def step(carry, index):
      p, opt_state, kept = carry
      (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, a, k, y)
      updates, opt_state = tx.update(grads, opt_state, p)
      p = optax.apply_updates(p, updates)
      _, score = loss_fn(p, score_a, score_k, score_y, score_weights)
      kept = jax.tree.map(lambda new, old: jnp.where(index + 1 == stop_at, new, old), p, kept)
      return (p, opt_state, kept), (loss, accuracy, score)

    (_, _, kept), curves = jax.lax.scan(step, (params, tx.init(params), params),
                                        jnp.arange(steps))
    return (kept,) + curves

  rng = jax.random.PRNGKey(seed)
  num = len(labels_m)
  num_validation = int(round(validation_fraction * num))
  metrics = {}
  stop_at = steps
  if validation_fraction > 0 and 1 <= num_validation < num:
    order = np.random.default_rng([seed, 13]).permutation(num)
    held_out, fitted = order[:num_validation], order[num_validation:]
    counts = np.bincount(labels_m[held_out])
    balance = 1.0 / counts[labels_m[held_out]]  # Each action present weighs the same.
    *_, scores = jax.device_get(fit(rng, jnp.asarray(fitted), jnp.asarray(held_out),
                                    jnp.asarray(balance, jnp.float32), steps))
    stop_at = int(np.argmax(scores)) + 1
    metrics.update(decoder_validation_balanced_accuracy=float(scores[stop_at - 1]),
                   decoder_validation_balanced_accuracy_last=float(scores[-1]))
  every = jnp.arange(num)
  params, losses, _, fitted_accuracies = jax.device_get(
      fit(rng, every, every, jnp.ones((num,), jnp.float32), stop_at))
  metrics.update(decoder_initial_loss=float(losses[0]),
                 decoder_loss=float(losses[stop_at - 1]),
                 decoder_train_accuracy=float(fitted_accuracies[stop_at - 1]),
                 decoder_steps_chosen=stop_at)
  return params, metrics


def decode_labels(decoder: LatentActionDecoder, params, actions_mka: np.ndarray,
                  keys_mkd: Optional[np.ndarray], rows_per_call: int = 4096
                  ) -> Tuple[np.ndarray, np.ndarray]:
  """f's pseudo-labels argmax f(a) int32 [M], and the slot f weights most int32 [M]."""

  @jax.jit
  def predict(p, a, k):
    logits, weights = decoder.apply({"params": p}, a, k)
    return (jnp.argmax(logits, axis=-1).astype(jnp.int32),
            jnp.argmax(weights, axis=-1).astype(jnp.int32))

  labels, slots = [np.zeros((0,), np.int32)], [np.zeros((0,), np.int32)]
  key_chunks = _chunks(keys_mkd, rows_per_call) if keys_mkd is not None else None
  for a, n in _chunks(actions_mka, rows_per_call):
    k = next(key_chunks)[0] if key_chunks is not None else None
    label, slot = jax.device_get(predict(params, a, k))
    labels.append(np.asarray(label)[:n])
    slots.append(np.asarray(slot)[:n])
  return np.concatenate(labels), np.concatenate(slots)


def make_act_fn(tokenizer: Tokenizer, tokenizer_params, policy: TokenPolicy, policy_params,
                batch_size: int):
  """frames uint8 [E, H, W, 3] (E <= batch_size) -> greedy actions int [E], one compiled call."""

  @jax.jit
  def act(tok_params, params, frames):
    # z_q = the codebook features of the frame's tokens, as in training.
    features, _ = tokenizer.apply({"params": tok_params}, frames.astype(jnp.float32) / 255.0,
                                  method=Tokenizer.encode)
    return jnp.argmax(policy.apply({"params": params}, features), axis=-1)

  def act_fn(frames, envs):
    del envs
    padded, n = next(_chunks(np.asarray(frames), batch_size))
    return np.asarray(act(tokenizer_params, policy_params, padded))[:n]

  return act_fn


def evaluate_policy(task, tokenizer, tokenizer_params, policy, policy_params, *,
                    num_episodes: int, seed: int) -> Dict[str, Any]:
  """pi_u greedily over episodes 0..N-1 of `seed` of `task` (goal_task.GoalTaskConfig or
  procgen.ProcgenTask), beside its expert and a uniformly random policy on the same
  episodes (references, no learning involved): dict(policy, expert, random) of the task's
  run summaries."""
  act_fn = make_act_fn(tokenizer, tokenizer_params, policy, policy_params, num_episodes)
  return task.evaluate(act_fn, num_episodes, seed)

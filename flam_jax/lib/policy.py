"""Policy learning helpers (Sec 4.3): latent actions of demonstrations, fitting f, live evaluation.

  infer_latent_actions: a trained world model's latent actions (and slot keys) for every
    transition of whole token episodes, in one jit-compiled function over chunks of
    episodes (padded, so it compiles once);
  fit_decoder: the latent action decoder f by full-batch AdamW on the labelled pairs,
    one jit-compiled `lax.scan` over the steps;
  decode_labels: f's pseudo-labels (argmax) for many transitions;
  evaluate_policy: success rate and return of pi_u in the live goal task (numpy
    environments in lock step, one jit-compiled tokenizer + policy call per step).
"""

from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flam_jax.data import goal_task
from flam_jax.lib import models, rollout
from flam_jax.modules.policy import LatentActionDecoder, TokenPolicy, cross_entropy
from flam_jax.modules.tokenizer import Tokenizer


def _chunks(array: np.ndarray, size: int):
  """Yields (chunk padded to `size` rows, number of real rows)."""
  for first in range(0, len(array), size):
    part = array[first:first + size]
    padded = np.zeros((size,) + array.shape[1:], array.dtype)
    padded[:len(part)] = part
    yield padded, len(part)


def infer_latent_actions(loaded: models.LoadedWorldModel, lam_params, tokens_elhw: np.ndarray,
                         episodes_per_call: int = 16) -> Tuple[np.ndarray, Optional[np.ndarray]]:
  """Latent actions [E, L-1, K', A] and slot keys [E, L-1, K', D] (None for scene actions).

  The world model sees whole episodes (deterministic bottleneck: FSQ codes or Gaussian
  means); the key of a slot's action at transition t is the slot's entity vector at t.
  """
  model = loaded.model
  slotted = model.variant == "flam"

  @jax.jit
  def infer(params, tokens_elhw):
    e, l = tokens_elhw.shape[:2]
    features_elnd = rollout.features(loaded.codebook, tokens_elhw.reshape(e, l, -1))
    entities_elkd, _ = rollout.entities(model, params, features_elnd)
    acts = rollout.infer_actions(model, params, entities_elkd, deterministic=True)
    return acts["actions"], (entities_elkd[:, :-1] if slotted else None)

  actions, keys = [], []
  for chunk, n in _chunks(tokens_elhw, episodes_per_call):
    a, k = jax.device_get(infer(lam_params, jnp.asarray(chunk, jnp.int32)))
    actions.append(np.asarray(a[:n], np.float32))
    if slotted:
      keys.append(np.asarray(k[:n], np.float32))
  return np.concatenate(actions), (np.concatenate(keys) if slotted else None)


def fit_decoder(decoder: LatentActionDecoder, actions_mka: np.ndarray,
                keys_mkd: Optional[np.ndarray], labels_m: np.ndarray, *, steps: int,
                learning_rate: float, seed: int, weight_decay: float = 1e-4):
  """Trains f on labelled (latent action, true action) pairs; returns (params, metrics)."""
  actions = jnp.asarray(actions_mka, jnp.float32)
  keys = None if keys_mkd is None else jnp.asarray(keys_mkd, jnp.float32)
  labels = jnp.asarray(labels_m, jnp.int32)
  tx = optax.adamw(learning_rate, weight_decay=weight_decay)

  @jax.jit
  def fit(rng):
    params = decoder.init(rng, actions[:1], None if keys is None else keys[:1])["params"]

    def loss_fn(p):
      logits, _ = decoder.apply({"params": p}, actions, keys)
      return cross_entropy(logits, labels)

    def step(carry, _):
      p, opt_state = carry
      (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(p)
      updates, opt_state = tx.update(grads, opt_state, p)
      return (optax.apply_updates(p, updates), opt_state), (loss, accuracy)

    (params, _), (losses, accuracies) = jax.lax.scan(step, (params, tx.init(params)), None,
                                                     length=steps)
    return params, losses, accuracies

  params, losses, accuracies = jax.device_get(fit(jax.random.PRNGKey(seed)))
  return params, dict(decoder_initial_loss=float(losses[0]), decoder_loss=float(losses[-1]),
                      decoder_train_accuracy=float(accuracies[-1]))


def decode_labels(decoder: LatentActionDecoder, params, actions_mka: np.ndarray,
                  keys_mkd: Optional[np.ndarray], rows_per_call: int = 4096) -> np.ndarray:
  """f's pseudo-labels argmax f(a) for every row: int32 [M]."""

  @jax.jit
  def predict(p, a, k):
    return jnp.argmax(decoder.apply({"params": p}, a, k)[0], axis=-1).astype(jnp.int32)

  out = []
  key_chunks = _chunks(keys_mkd, rows_per_call) if keys_mkd is not None else None
  for a, n in _chunks(actions_mka, rows_per_call):
    k = next(key_chunks)[0] if key_chunks is not None else None
    out.append(np.asarray(predict(params, a, k))[:n])
  return np.concatenate(out) if out else np.zeros((0,), np.int32)


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


def evaluate_policy(cfg: goal_task.GoalTaskConfig, tokenizer, tokenizer_params, policy,
                    policy_params, *, num_episodes: int, seed: int) -> Dict[str, Any]:
  """pi_u's success rate and return over episodes 0..N-1 of `seed`, beside the expert and
  a uniformly random policy on the same episodes (references, no learning involved)."""
  act_fn = make_act_fn(tokenizer, tokenizer_params, policy, policy_params, num_episodes)
  out = dict(policy=goal_task.run_episodes(cfg, act_fn, num_episodes, seed))
  for name, fn in (("expert", goal_task.expert_policy), ("random", goal_task.random_policy)):
    out[name] = goal_task.run_episodes(cfg, fn, num_episodes, seed)
  return out

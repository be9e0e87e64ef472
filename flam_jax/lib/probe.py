"""The latent action probe (Sec 4.3, LAPO-style): how much of the true actions a latent carries.

A linear classifier from each agent's latent action (one-hot FSQ code, or standardised
Gaussian latent) to its ground-truth action, fitted on the host on the evaluation's
(latent, action) pairs of half the episodes and scored on the other half.

Where the data has the agents' headings (Multigrid), a second probe sees the latent
together with the agent's heading at t (observable in frame t): Multigrid's actions are
egocentric (turn left / right, forward, stay), so a latent that encodes the agent's
next absolute state (e.g. "faces east") says nothing about the action on its own, yet
determines it given the current heading. The product features (one-hot of (code,
heading), or latent x one-hot heading) keep that probe linear.

A slot's latent action can only describe its agent when the slot holds that agent: the
heading probe is also scored on the test pairs whose matched slot covers at least
BOUND_SHARE of the agent's pixels (`accuracy_given_heading_bound`), which separates what
the latent actions carry from how well the slots bind.
"""

from typing import Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flam_jax.modules import fsq

BOUND_SHARE = 0.5  # An agent is bound to its matched slot when the slot covers this share.


def _probe_features(latent, codes, agents, num_agents: int, num_codes: int,
                    mean=None, std=None, headings=None, num_headings: int = 0):
  """Per-agent blocks of [one-hot code | standardised latent, 1]: [M, agents * F].

  With `headings` [M]: one-hot of (code, heading), or the standardised latent times the
  one-hot heading beside the one-hot heading, instead.
  """
  if num_codes:
    feat = np.eye(num_codes, dtype=np.float32)[codes]
  else:
    feat = (latent - mean) / std
  if headings is not None:
    onehot_heading = np.eye(num_headings, dtype=np.float32)[headings]
    if num_codes:
      feat = np.eye(num_codes * num_headings, dtype=np.float32)[codes * num_headings + headings]
    else:
      feat = np.concatenate([(feat[:, :, None] * onehot_heading[:, None, :]).reshape(
          feat.shape[0], -1), onehot_heading], axis=1)
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
              weight_decay: float = 1e-4, test_subset=None) -> Dict[str, float]:
  """Linear probe latent -> action (Sec 4.3's latent action decoder, fitted LAPO-style).

  Multinomial logistic regression on [M, F] features, `steps` full-batch Adam steps
  (lr 0.1, L2 `weight_decay`). Returns test accuracy, train accuracy and the
  majority-class baseline (the train split's most frequent action, scored on test);
  with `test_subset` (bool [M_test]), also the test accuracy on those pairs
  (`subset_accuracy`, None when the subset is empty).
  """
  x_train, x_test = np.asarray(x_train, np.float32), np.asarray(x_test, np.float32)
  y_train, y_test = np.asarray(y_train, np.int64), np.asarray(y_test, np.int64)
  weights, bias = _fit_logistic(jnp.asarray(x_train),
                                jax.nn.one_hot(y_train, num_classes, dtype=jnp.float32),
                                jnp.float32(weight_decay), jnp.zeros((steps,)))
  weights, bias = np.asarray(weights), np.asarray(bias)
  predict = lambda x: np.argmax(x @ weights + bias, axis=-1)
  majority = np.bincount(y_train, minlength=num_classes).argmax()
  correct = predict(x_test) == y_test
  out = dict(accuracy=float(np.mean(correct)),
             train_accuracy=float(np.mean(predict(x_train) == y_train)),
             majority=float(np.mean(y_test == majority)))
  if test_subset is not None:
    test_subset = np.asarray(test_subset, bool)
    out["subset_accuracy"] = float(np.mean(correct[test_subset])) if test_subset.any() else None
  return out


def probe_latent_actions(ex: Dict[str, np.ndarray], spec,
                         steps: int = 300) -> Optional[Dict[str, float]]:
  """Fits the probe on the pairs of the first half of the episodes, scores on the rest.

  Features: the one-hot FSQ code of the latent action (codes are categorical) or
  the standardised Gaussian latent, in a separate block per agent (one linear probe
  per agent, fitted jointly); with `probe_heading` in `ex`, also `accuracy_given_heading`
  and, with `matched_share` [M, T-1, agents] too, `accuracy_given_heading_bound` (module
  docstring). Splitting by episode keeps the overlapping windows of
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
  num_classes = spec.model.num_agent_actions
  out = fit_probe(feats[train], labels[train], feats[~train], labels[~train], num_classes,
                  steps=steps)
  out.update(train_pairs=int(train.sum()), test_pairs=int((~train).sum()))
  if "probe_heading" in ex:
    headings = ex["probe_heading"][valid]
    feats = _probe_features(latent, codes, agents, num_agents, num_codes, mean, std,
                            headings, int(headings.max()) + 1)
    bound = (ex["matched_share"][valid][~train] >= BOUND_SHARE
             if "matched_share" in ex else None)
    given_heading = fit_probe(feats[train], labels[train], feats[~train], labels[~train],
                              num_classes, steps=steps, test_subset=bound)
    out["accuracy_given_heading"] = given_heading["accuracy"]
    if bound is not None:
      out["accuracy_given_heading_bound"] = given_heading["subset_accuracy"]
  return out


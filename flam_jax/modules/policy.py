"""Policy learning from latent actions (Sec 4.3, Eq. 6): the latent action decoder f and pi_u.

  f:    latent actions of one transition -> logits over the controlled agent's true actions
  pi_u: frozen tokenizer features of the current frame -> logits over the true actions

FLAM infers one latent action per slot, and only one slot holds the controlled agent.
f picks it by attention with a learned query over keys that say what each slot looks
like at frame t (`flam_jax.lib.policy.infer_latent_actions`: the share of each token code
under the slot's own attention mask, so agent 0's colour and heading); the values read
each slot's latent action together with its key, since a latent action says where the
entity goes and the egocentric action (turn / forward) follows from that only given the
heading. The choice of slot is learned from the labelled pairs without privileged input
(the masks are the world model's, not the data's; no positions of the agent). The keys
describe the current frame, so part of what f predicts can come from the state alone
(experiments/README.md measures how much). LAM and OC+LAM give one scene action
(K' = 1); the attention over one item is the identity, so the same module serves them
(keys are then omitted).

Both output logits for a cross-entropy loss: the true actions are categorical, so the
squared error of Eq. 6 becomes behaviour cloning with cross-entropy on f's labels.
"""

from typing import Optional, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp


class LatentActionDecoder(nn.Module):
  """f: latent actions [B, K', A] (+ slot keys [B, K', D] when K' > 1) -> logits [B, U]."""

  num_actions: int = 4
  hidden: int = 64

  @nn.compact
  def __call__(self, actions_bka, keys_bkd: Optional[jax.Array] = None):
    """Returns (logits [B, U], slot weights [B, K'])."""
    chex.assert_rank(actions_bka, 3)
    b, k, _ = actions_bka.shape
    inputs_bka = actions_bka.astype(jnp.float32)
    if keys_bkd is None:
      if k != 1:
        raise ValueError(f"{k} latent actions per transition need slot keys to choose from")
      weights_bk = jnp.ones((b, 1), jnp.float32)
    else:
      chex.assert_shape(keys_bkd, (b, k, None))
      slots_bkd = nn.LayerNorm(name="key_norm")(keys_bkd.astype(jnp.float32))
      keys_bkh = nn.Dense(self.hidden, name="key")(slots_bkd)
      # The value sees the slot too: a latent action says where the entity goes next, and
      # the agent's action (turn / forward) follows from that only given its heading,
      # which the slot holds (the probe in flam_jax/lib/probe.py measures the same).
      inputs_bka = jnp.concatenate([inputs_bka, slots_bkd], axis=-1)
      query_h = self.param("query", nn.initializers.normal(1.0), (self.hidden,))
      weights_bk = jax.nn.softmax(keys_bkh @ query_h / jnp.sqrt(self.hidden), axis=-1)
    values_bkh = nn.relu(nn.Dense(self.hidden, name="value")(inputs_bka))
    pooled_bh = jnp.einsum("bk,bkh->bh", weights_bk, values_bkh)
    hidden_bh = nn.relu(nn.Dense(self.hidden, name="hidden")(pooled_bh))
    return nn.Dense(self.num_actions, name="logits")(hidden_bh), weights_bk


class TokenPolicy(nn.Module):
  """pi_u: frozen tokenizer features of one frame [B, h, w, Dz] -> action logits [B, U].

  Convolutions keep the patch grid (no pooling: where the agent and the goal are
  matters), then an MLP over the flattened grid.
  """

  num_actions: int = 4
  channels: Sequence[int] = (32, 64)
  hidden: int = 128
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, features_bhwd):
    chex.assert_rank(features_bhwd, 4)
    x = features_bhwd.astype(self.dtype)
    for c in self.channels:
      x = nn.relu(nn.Conv(c, (3, 3), dtype=self.dtype)(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x))
    return nn.Dense(self.num_actions, dtype=jnp.float32)(x).astype(jnp.float32)


def cross_entropy(logits_bu, labels_b, weights_b=None):
  """Mean cross-entropy (weighted by `weights_b` when given) and accuracy."""
  log_probs = jax.nn.log_softmax(logits_bu.astype(jnp.float32))
  nll_b = -jnp.take_along_axis(log_probs, labels_b[:, None].astype(jnp.int32), axis=1)[:, 0]
  hits_b = (jnp.argmax(logits_bu, axis=-1) == labels_b).astype(jnp.float32)
  if weights_b is None:
    return jnp.mean(nll_b), jnp.mean(hits_b)
  total = jnp.maximum(jnp.sum(weights_b), 1.0)
  return jnp.sum(nll_b * weights_b) / total, jnp.sum(hits_b * weights_b) / total

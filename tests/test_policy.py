"""The latent action decoder f and the behaviour cloning policy pi_u (Sec 4.3)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flam_jax.lib import policy as policy_lib
from flam_jax.modules.policy import LatentActionDecoder, TokenPolicy, cross_entropy

CODES = np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]], np.float32)  # An FSQ [2, 2] codebook.


def _toy_transitions(num, num_slots, seed):
  """K slots with random codes; the controlled slot (random position, marked in its key)
  has the code that determines the true action through a fixed permutation."""
  rng = np.random.default_rng(seed)
  codes = rng.integers(0, 4, (num, num_slots))
  actions = CODES[codes]  # [M, K, 2]
  keys = rng.normal(size=(num, num_slots, 8)).astype(np.float32)
  controlled = rng.integers(0, num_slots, num)
  keys[np.arange(num), controlled, 0] = 4.0  # What the controlled agent's slot looks like.
  labels = np.array([2, 0, 3, 1])[codes[np.arange(num), controlled]]
  return actions, keys, labels


def test_decoder_recovers_the_controlled_slots_action():
  actions, keys, labels = _toy_transitions(1200, num_slots=4, seed=0)
  decoder = LatentActionDecoder(num_actions=4, hidden=32)
  params, metrics = policy_lib.fit_decoder(decoder, actions[:1000], keys[:1000], labels[:1000],
                                           steps=400, learning_rate=1e-2, seed=0)
  predicted, chosen = policy_lib.decode_labels(decoder, params, actions[1000:], keys[1000:],
                                               rows_per_call=64)
  assert np.mean(predicted == labels[1000:]) > 0.95, metrics
  # It does so by attending to the controlled agent's slot.
  _, weights = decoder.apply({"params": params}, actions[1000:], keys[1000:])
  np.testing.assert_array_equal(chosen, np.argmax(np.asarray(weights), axis=1))
  controlled = np.argmax(keys[1000:, :, 0], axis=1)
  assert np.mean(chosen == controlled) > 0.95


def test_decoder_reads_the_heading_from_the_controlled_slot():
  """The true (egocentric) action follows from the latent only given the agent's heading,
  which only its slot holds: f must read the slot, not only its latent action."""
  rng = np.random.default_rng(3)
  m, k = 1200, 3
  keys = rng.normal(size=(m, k, 6)).astype(np.float32)
  controlled = rng.integers(0, k, m)
  keys[np.arange(m), controlled, 0] = 4.0  # What makes the controlled slot recognisable.
  heading = rng.integers(0, 2, m)
  keys[np.arange(m), controlled, 1] = 2.0 * heading - 1.0
  actions = rng.normal(size=(m, k, 2)).astype(np.float32)
  moved = (actions[np.arange(m), controlled, 0] > 0).astype(np.int32)
  labels = 2 * heading + moved  # Same latent, different action per heading.
  decoder = LatentActionDecoder(num_actions=4, hidden=32)
  params, metrics = policy_lib.fit_decoder(decoder, actions[:1000], keys[:1000], labels[:1000],
                                           steps=400, learning_rate=1e-2, seed=0)
  predicted, _ = policy_lib.decode_labels(decoder, params, actions[1000:], keys[1000:])
  assert np.mean(predicted == labels[1000:]) > 0.9, metrics  # Without the heading: <= ~0.5.


def test_decoder_stopped_early_does_not_memorise_noisy_labels():
  """300 labels, 40% of them wrong: fitted to the end f memorises them; stopped early on a
  held-out fifth it keeps the rule, and its parameters are those of a plain fit of as many
  steps on all the labels."""
  actions, keys, labels = _toy_transitions(1300, num_slots=4, seed=5)
  rng = np.random.default_rng(0)
  noisy = labels.copy()
  flip = rng.random(len(labels)) < 0.4
  noisy[flip] = rng.integers(0, 4, flip.sum())
  decoder = LatentActionDecoder(num_actions=4, hidden=64)
  fit = lambda steps, fraction: policy_lib.fit_decoder(
      decoder, actions[:300], keys[:300], noisy[:300], steps=steps, learning_rate=1e-2, seed=0,
      validation_fraction=fraction)
  accuracy = lambda params: np.mean(
      policy_lib.decode_labels(decoder, params, actions[300:], keys[300:])[0] == labels[300:])
  full_params, full = fit(600, 0.0)
  early_params, early = fit(600, 0.2)
  assert full["decoder_train_accuracy"] == 1.0 and full["decoder_steps_chosen"] == 600
  assert early["decoder_steps_chosen"] < 200, early
  assert accuracy(early_params) > 0.9 > accuracy(full_params) + 0.1, (early, full)
  same_params, _ = fit(early["decoder_steps_chosen"], 0.0)
  jax.tree.map(np.testing.assert_array_equal, early_params, same_params)


def test_decoder_maps_a_scene_action():
  actions, _, labels = _toy_transitions(600, num_slots=1, seed=1)
  decoder = LatentActionDecoder(num_actions=4, hidden=16)
  params, metrics = policy_lib.fit_decoder(decoder, actions[:500], None, labels[:500],
                                           steps=300, learning_rate=1e-2, seed=0)
  predicted, chosen = policy_lib.decode_labels(decoder, params, actions[500:], None)
  assert not np.any(chosen)  # One scene action: the only "slot" is 0.
  assert np.mean(predicted == labels[500:]) == 1.0, metrics
  assert metrics["decoder_loss"] < metrics["decoder_initial_loss"] / 4


def test_bc_loss_falls():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(64, 4, 4, 8)).astype(np.float32)
  labels = (features[:, 1, 2, 0] > 0).astype(np.int32) + 2 * (features[:, 3, 0, 1] > 0)
  policy = TokenPolicy(num_actions=4, channels=(8,), hidden=32)
  params = policy.init(jax.random.PRNGKey(0), features[:1])["params"]
  tx = optax.adam(3e-3)
  loss_fn = lambda p: cross_entropy(policy.apply({"params": p}, features), jnp.asarray(labels))[0]

  def step(carry, _):
    grads = jax.grad(loss_fn)(carry[0])
    updates, opt_state = tx.update(grads, carry[1])
    return (optax.apply_updates(carry[0], updates), opt_state), loss_fn(carry[0])

  _, losses = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, length=150))(params)
  assert losses[-1] < 0.25 * losses[0], (losses[0], losses[-1])


def test_weighted_cross_entropy_ignores_zero_weights():
  logits = jnp.array([[5.0, 0, 0, 0], [0, 5.0, 0, 0]])
  loss_all, acc_all = cross_entropy(logits, jnp.array([0, 0]))
  loss_w, acc_w = cross_entropy(logits, jnp.array([0, 0]), jnp.array([1.0, 0.0]))
  assert acc_all == 0.5 and acc_w == 1.0 and loss_w < loss_all

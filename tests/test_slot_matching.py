"""Tests for the Appendix E slot-matching losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from flam_jax.errors import ConfigError
from flam_jax.modules import slot_matching as sm

B, K, D = 3, 5, 16


def _rand(seed, shape):
  # NumPy data: no per-shape jax.random compiles.
  return np.random.RandomState(seed).randn(*shape).astype(np.float32)


def _permute_each(x_bkd, seed=0):
  rng = np.random.RandomState(seed)
  perms = np.stack([rng.permutation(x_bkd.shape[1]) for _ in range(len(x_bkd))])
  return np.take_along_axis(x_bkd, perms[:, :, None], axis=1), perms


# -------------------------------------------------------------------- Hungarian


def test_hungarian_zero_for_permuted_copy():
  s = _rand(0, (B, K, D))
  s_perm, _ = _permute_each(s)
  assert float(jax.jit(sm.hungarian_matching_loss)(s, s_perm)) == pytest.approx(
      0.0, abs=1e-6)
  # Without matching, a permuted copy is far away.
  assert float(np.mean(np.sum((s - s_perm)**2, -1))) > 1.0


def test_hungarian_hand_computed_three_slot_example():
  s_t = jnp.array([[0., 0.], [2., 0.], [0., 2.]])
  s_tp1 = jnp.array([[2., 3.], [0., 1.], [1., 0.]])
  # C = [[6.5, .5, .5], [4.5, 2.5, .5], [2.5, .5, 2.5]]; best sigma = (1, 2, 0).
  cost = np.asarray(sm.pairwise_sq_dist(s_t, s_tp1))
  np.testing.assert_allclose(
      cost, [[6.5, .5, .5], [4.5, 2.5, .5], [2.5, .5, 2.5]], atol=1e-6)
  rows, cols = linear_sum_assignment(cost)
  expected = cost[rows, cols].sum()
  assert expected == pytest.approx(3.5)
  loss = sm.hungarian_matching_loss(s_t[None], s_tp1[None])
  assert float(loss) == pytest.approx(expected, abs=1e-5)


def test_hungarian_matches_scipy_batched():
  s_t, s_tp1 = _rand(1, (4, 2, K, D)), _rand(2, (4, 2, K, D))
  cost = np.asarray(sm.pairwise_sq_dist(s_t, s_tp1)).reshape(-1, K, K)
  expected = np.mean([c[linear_sum_assignment(c)].sum() for c in cost])
  loss = jax.jit(sm.hungarian_matching_loss)(s_t, s_tp1)
  assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_hungarian_gradient_flows_through_matched_costs_only():
  s_t = _rand(3, (B, K, D))
  s_tp1, perms = _permute_each(s_t + 0.1 * _rand(4, (B, K, D)), seed=1)
  grad = jax.grad(sm.hungarian_matching_loss)(s_t, s_tp1)
  # s_t^i matches s_{t+1}^{argsort(perm)[i]}; d/ds_t = 2/D (s_t - match) / B.
  inv = np.argsort(perms, axis=1)
  match = np.take_along_axis(s_tp1, inv[:, :, None], axis=1)
  np.testing.assert_allclose(grad, 2.0 / D * (s_t - match) / B, atol=1e-6)


# ------------------------------------------------------------------ Contrastive


def test_contrastive_smaller_for_matching_than_random_slots():
  s = _rand(5, (B, K, D))
  s_match, _ = _permute_each(s + 0.05 * _rand(6, (B, K, D)))
  s_random = _rand(7, (B, K, D))
  loss = jax.jit(sm.contrastive_matching_loss)
  l_match, l_random = float(loss(s, s_match)), float(loss(s, s_random))
  assert l_match < 0.1 < l_random
  assert l_match >= 0.0


def test_contrastive_hand_computed_value():
  s_t = jnp.array([[[1., 0.], [0., 1.]]])
  s_tp1 = jnp.array([[[0., 2.], [3., 3.]]])
  # Cosine sims: row 0 -> [0, 1/sqrt2], row 1 -> [1, 1/sqrt2]; j* = (1, 0).
  sim = np.array([[0., 2**-0.5], [1., 2**-0.5]]) / 0.5
  log_p = sim - np.log(np.exp(sim).sum(-1, keepdims=True))
  expected = -(log_p[0, 1] + log_p[1, 0]) / 2
  loss = sm.contrastive_matching_loss(s_t, s_tp1, temperature=0.5)
  assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_contrastive_gradient_is_finite():
  s_t, s_tp1 = _rand(8, (B, K, D)), _rand(9, (B, K, D))
  g = jax.grad(sm.contrastive_matching_loss, argnums=(0, 1))(s_t, s_tp1)
  assert all(np.all(np.isfinite(x)) for x in g)


# ----------------------------------------------------------------- Distribution


def test_distribution_zero_for_identical_and_permutation_invariant():
  s_t, s_tp1 = _rand(10, (B, K, D)), 0.5 + 2.0 * _rand(11, (B, K, D))
  loss = jax.jit(sm.slot_distribution_loss)
  assert float(loss(s_t, s_t)) == pytest.approx(0.0, abs=1e-5)
  base = float(loss(s_t, s_tp1))
  assert base > 0.1
  s_t_perm, _ = _permute_each(s_t, seed=2)
  s_tp1_perm, _ = _permute_each(s_tp1, seed=3)
  assert float(loss(s_t_perm, s_tp1_perm)) == pytest.approx(base, rel=1e-5)


def test_distribution_matches_gaussian_kl_formula():
  s_t = np.asarray(_rand(12, (1, K, 4)))
  s_tp1 = np.asarray(_rand(13, (1, K, 4)))
  m1, v1 = s_t.mean(1), s_t.var(1) + 1e-6
  m2, v2 = s_tp1.mean(1), s_tp1.var(1) + 1e-6
  expected = 0.5 * np.sum(np.log(v2 / v1) + (v1 + (m1 - m2)**2) / v2 - 1)
  assert float(sm.slot_distribution_loss(s_t, s_tp1)) == pytest.approx(
      expected, rel=1e-4)


# --------------------------------------------------------------------- Dispatch


@pytest.mark.parametrize("name", ["distribution", "hungarian", "contrastive"])
def test_matching_loss_averages_consecutive_pairs(name):
  slots_btkd = jnp.asarray(_rand(14, (2, 4, K, D)), jnp.bfloat16)
  pair_fn = {"distribution": sm.slot_distribution_loss,
             "hungarian": sm.hungarian_matching_loss,
             "contrastive": sm.contrastive_matching_loss}[name]
  pair_fn = jax.jit(pair_fn)
  expected = np.mean([pair_fn(slots_btkd[:, t], slots_btkd[:, t + 1])
                      for t in range(3)])
  loss = jax.jit(sm.matching_loss, static_argnums=0)(name, slots_btkd)
  assert loss.shape == () and loss.dtype == jnp.float32
  assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_matching_loss_none_and_single_frame_are_zero():
  slots_btkd = _rand(15, (2, 3, K, D))
  assert float(sm.matching_loss("none", slots_btkd)) == 0.0
  assert float(sm.matching_loss("hungarian", slots_btkd[:, :1])) == 0.0


def test_matching_loss_rejects_unknown_name():
  with pytest.raises(ValueError, match="none, distribution, hungarian"):
    sm.matching_loss("sinkhorn", _rand(0, (1, 2, K, D)))
  with pytest.raises(ConfigError):
    sm.matching_loss("sinkhorn", _rand(0, (1, 2, K, D)))

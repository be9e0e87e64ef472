"""Metrics against hand-computed values and small numpy references (Sec 5.6)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import comb

from flam_jax.lib import metrics


def test_psnr_hand_computed():
  target = np.zeros((2, 4, 4, 3), np.float32)
  pred = np.full_like(target, 0.1)
  pred[1, :2] = 0.5  # Half the pixels off by 0.5, half by 0.1: MSE = (0.25 + 0.01) / 2.
  np.testing.assert_allclose(metrics.psnr(target, pred), [20.0, 10 * np.log10(1 / 0.13)],
                             rtol=1e-5)
  assert float(metrics.psnr(target[0], target[0])) == pytest.approx(100.0)


def _ssim_reference(x, y, window=11, sigma=1.5):
  """Direct Wang et al. SSIM: explicit 2-D Gaussian window at every valid position."""
  g = np.exp(-0.5 * ((np.arange(window) - (window - 1) / 2) / sigma) ** 2)
  g2 = np.outer(g, g) / np.outer(g, g).sum()
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  height, width, channels = x.shape
  values = []
  for c in range(channels):
    for i in range(height - window + 1):
      for j in range(width - window + 1):
        px, py = x[i:i + window, j:j + window, c], y[i:i + window, j:j + window, c]
        mx, my = np.sum(g2 * px), np.sum(g2 * py)
        vx, vy = np.sum(g2 * (px - mx) ** 2), np.sum(g2 * (py - my) ** 2)
        cxy = np.sum(g2 * (px - mx) * (py - my))
        values.append(((2 * mx * my + c1) * (2 * cxy + c2)) /
                      ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
  return np.mean(values)


def test_ssim_identity_and_numpy_reference():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(2, 13, 14, 2)).astype(np.float32)
  y = np.clip(x + rng.normal(scale=0.2, size=x.shape), 0, 1).astype(np.float32)
  ssim = jax.jit(metrics.ssim)
  np.testing.assert_allclose(ssim(x, x), 1.0, atol=1e-5)
  got = np.asarray(ssim(x, y))
  assert got.shape == (2,) and np.all(got < 0.99)
  reference = [_ssim_reference(x[i].astype(np.float64), y[i]) for i in range(2)]
  np.testing.assert_allclose(got, reference, atol=1e-5)


def _ari_reference(true, pred, ignore=()):
  keep = ~np.isin(true, ignore)
  true, pred = true[keep], pred[keep]
  table = np.array([[np.sum((true == a) & (pred == b)) for b in np.unique(pred)]
                    for a in np.unique(true)]) if len(true) else np.zeros((0, 0))
  index = comb(table, 2).sum()
  rows, cols = comb(table.sum(1), 2).sum(), comb(table.sum(0), 2).sum()
  total = comb(len(true), 2)
  expected = rows * cols / total if total else 0.0
  denom = 0.5 * (rows + cols) - expected
  return 1.0 if denom == 0 else (index - expected) / denom


def test_ari_matches_reference_with_ignore_ids_and_degenerate_cases():
  rng = np.random.default_rng(1)
  true = rng.integers(0, 5, (6, 60))
  pred = np.where(rng.uniform(size=true.shape) < 0.7, true % 3, rng.integers(0, 3, true.shape))
  ari = jax.jit(metrics.adjusted_rand_index, static_argnums=(2, 3, 4))
  np.testing.assert_allclose(ari(true, pred, 5, 3, ()),
                             [_ari_reference(t, p) for t, p in zip(true, pred)], atol=1e-5)
  np.testing.assert_allclose(ari(true, pred, 5, 3, (0, 1)),
                             [_ari_reference(t, p, (0, 1)) for t, p in zip(true, pred)], atol=1e-5)
  # Perfect up to relabelling; the ignored ids' slot assignment does not matter.
  fg = np.array([[0, 1, 2, 2, 3, 3, 4]])
  np.testing.assert_allclose(ari(fg, np.array([[5, 0, 1, 1, 2, 2, 3]]), 5, 6, (0, 1)), [1.0])
  # Degenerate (both partitions trivial, or < 2 foreground items): 1.0, never NaN.
  np.testing.assert_allclose(ari(np.array([[2, 2, 2], [0, 0, 2]]), np.array([[1, 1, 1], [0, 1, 0]]),
                                 4, 2, (0, 1)), [1.0, 1.0])


def _scene(positions_tk, size=8, grid=4):
  """Entity ids [T, size, size]: 0 floor, agent k (id 2 + k) fills its 2x2-pixel patch."""
  ids = np.zeros((len(positions_tk), size, size), np.int32)
  cell = size // grid
  for t, agents in enumerate(positions_tk):
    for k, (r, c) in enumerate(agents):
      ids[t, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = 2 + k
  return ids


def _masks_from(owner_tn, num_slots, mix=0.0):
  """Slot masks [T, K, N] from a patch->slot owner map, mixing `mix` into slot 0."""
  masks = np.eye(num_slots, dtype=np.float32)[owner_tn].transpose(0, 2, 1)
  masks = (1 - mix) * masks
  masks[:, 0] += mix
  return masks


def test_disentanglement_perfect_permuted_mixed_and_static():
  # Agent 0 moves right along row 0, agent 1 moves down column 3; 3 frames.
  positions = [[(0, 0), (1, 3)], [(0, 1), (2, 3)], [(0, 2), (3, 3)]]
  ids = _scene(positions)[None]  # [1, T, 8, 8]
  owner = np.zeros((3, 16), np.int32)  # Slot 0 background, slot 2 agent 0, slot 1 agent 1.
  for t, ((r0, c0), (r1, c1)) in enumerate(positions):
    owner[t, r0 * 4 + c0], owner[t, r1 * 4 + c1] = 2, 1
  fn = jax.jit(lambda m, i: metrics.slot_agent_disentanglement(m, i, grid=(4, 4), num_agents=2))
  perfect = fn(_masks_from(owner, 3)[None], ids)
  assert float(perfect["score_sum"][0] / perfect["num_moving"][0]) == pytest.approx(1.0)
  assert float(perfect["num_moving"][0]) == 4.0
  np.testing.assert_array_equal(perfect["matched_slot"][0], [[2, 1], [2, 1]])
  np.testing.assert_allclose(perfect["share"].sum(-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(perfect["matched_share"][0], 1.0, atol=1e-6)
  mixed = fn(_masks_from(owner, 3, mix=0.5)[None], ids)  # Half of each agent on slot 0.
  np.testing.assert_allclose(mixed["matched_share"][0], 0.5, atol=1e-6)
  # More agents than slots: the agent left without a slot has slot -1 and share 0.
  one_slot = fn(np.ones((1, 3, 1, 16), np.float32), ids)
  np.testing.assert_array_equal(np.sort(one_slot["matched_slot"][0], axis=-1), [[-1, 0]] * 2)
  np.testing.assert_allclose(np.sort(one_slot["matched_share"][0], axis=-1), [[0, 1]] * 2)
  assert float(mixed["score_sum"][0] / mixed["num_moving"][0]) == pytest.approx(0.5)
  uniform = fn(np.full((1, 3, 3, 16), 1 / 3, np.float32), ids)
  assert float(uniform["score_sum"][0] / uniform["num_moving"][0]) == pytest.approx(1 / 3)
  # A static agent is not scored.
  static = _scene([[(0, 0), (3, 3)], [(0, 1), (3, 3)], [(0, 2), (3, 3)]])[None]
  assert float(fn(_masks_from(owner, 3)[None], static)["num_moving"][0]) == 2.0


def test_action_usage_counts_codes_overall_and_per_slot():
  uniform = metrics.action_usage(jnp.arange(8).reshape(8, 1) % 4, 4)
  assert float(uniform["action_perplexity"]) == pytest.approx(4.0, rel=1e-5)
  one_code = metrics.action_usage(jnp.zeros((5, 3), jnp.int32), 4)
  assert float(one_code["action_perplexity"]) == pytest.approx(1.0, rel=1e-5)
  # Slot k always uses code k: every code in use overall, one per slot.
  split = metrics.action_usage(jnp.tile(jnp.arange(4), (6, 1)), 4)
  assert float(split["action_perplexity"]) == pytest.approx(4.0, rel=1e-5)
  assert float(split["action_perplexity_per_slot"]) == pytest.approx(1.0, rel=1e-5)
  np.testing.assert_allclose(metrics.perplexity(np.array([[1, 1, 0], [0, 0, 0]])), [2.0, 1.0],
                             rtol=1e-5)


def test_code_counts_sums_over_the_given_axis_with_codes_last():
  indices_btk = jnp.array([[[0, 2], [0, 3], [1, 2]]])  # [B=1, T=3, K'=2]
  counts_bkc = metrics.code_counts(indices_btk, 4, axis=1)
  np.testing.assert_array_equal(counts_bkc, [[[2, 1, 0, 0], [0, 0, 2, 1]]])
  # Usage from counts equals usage from the indices they were counted from.
  from_counts = metrics.usage_from_counts(counts_bkc.sum(axis=0))
  from_indices = metrics.action_usage(indices_btk, 4)
  for key, value in from_indices.items():
    assert float(from_counts[key]) == pytest.approx(float(value), rel=1e-6)


def test_upsample_masks_nearest():
  masks = jnp.arange(4).reshape(1, 4)
  np.testing.assert_array_equal(metrics.upsample_masks(masks, (2, 2), (4, 4))[0],
                                [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])


def test_patch_ari_equals_pixel_ari_of_upsampled_ids():
  rng = np.random.default_rng(2)
  true = rng.integers(0, 4, (3, 8, 8))
  pred = rng.integers(0, 3, (3, 16))
  upsampled = np.asarray(metrics.upsample_masks(pred, (4, 4), (8, 8))).reshape(3, -1)
  np.testing.assert_allclose(
      metrics.patch_adjusted_rand_index(true, pred, grid=(4, 4), num_true=4, num_pred=3,
                                        ignore_ids=(0,)),
      metrics.adjusted_rand_index(true.reshape(3, -1), upsampled, 4, 3, (0,)), atol=1e-6)

"""FSQ: round trips, codebook size, straight-through gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flam_jax.modules import fsq

LEVELS = [(4, 4, 4, 4, 4), (8, 5, 5, 5), (2, 2), (3, 5, 2)]


@pytest.mark.parametrize("levels", LEVELS)
def test_indices_codes_round_trip(levels):
  indices = jnp.arange(fsq.codebook_size(levels))
  codes = fsq.indices_to_codes(indices, levels)
  assert codes.shape == (len(indices), len(levels))
  np.testing.assert_array_equal(fsq.codes_to_indices(codes, levels), indices)
  assert float(codes.min()) >= -1.0 and float(codes.max()) <= 1.0
  # All codes distinct: the implicit codebook really has prod(levels) entries.
  assert len({tuple(c) for c in np.asarray(codes)}) == fsq.codebook_size(levels)


@pytest.mark.parametrize("levels", LEVELS)
def test_quantize_lands_on_codebook_and_uses_every_level(levels):
  z = 4.0 * jax.random.normal(jax.random.PRNGKey(0), (4096, len(levels)))
  codes = fsq.quantize(z, levels)
  round_trip = fsq.indices_to_codes(fsq.codes_to_indices(codes, levels), levels)
  np.testing.assert_allclose(codes, round_trip, atol=1e-6)
  for j, level in enumerate(levels):
    assert len(np.unique(np.asarray(codes[:, j]))) == level


@pytest.mark.parametrize("levels", [(2, 2), (4, 4, 4), (5, 3)])
def test_small_inputs_are_not_saturated(levels):
  # Near z = 0 every channel must have a usable gradient and reach more than one code,
  # else a freshly initialised bottleneck (e.g. latent actions, [2, 2]) is stuck on one code.
  grads = jax.grad(lambda z: jnp.sum(fsq.bound(z, levels)))(jnp.zeros((1, len(levels))))
  assert float(jnp.min(grads)) > 0.05, grads  # arctanh shift: ~0.001 for L=2.
  z = jax.random.normal(jax.random.PRNGKey(0), (512, len(levels)))
  codes = np.asarray(fsq.quantize(2.0 * z, levels))
  assert all(len(np.unique(codes[:, j])) == l for j, l in enumerate(levels))


def test_straight_through_gradient_is_the_bound_gradient():
  levels = (5, 4)
  z = jnp.array([[0.3, -0.7], [1.2, 0.1]])
  grad_q = jax.grad(lambda x: jnp.sum(fsq.quantize(x, levels) * jnp.array([1.0, 2.0])))(z)
  half_span = jnp.array([2.0, 1.5])
  grad_b = jax.grad(lambda x: jnp.sum(fsq.bound(x, levels) / half_span * jnp.array([1.0, 2.0])))(z)
  np.testing.assert_allclose(grad_q, grad_b, rtol=1e-6)
  assert np.all(np.asarray(grad_q) != 0.0)  # A plain round would give zero gradients.


def test_two_levels_are_a_sign_and_the_grid_is_symmetric():
  levels = (2, 2)
  codes = fsq.quantize(jnp.array([[-5.0, -5.0], [5.0, 5.0], [5.0, -5.0], [0.01, -0.01]]), levels)
  np.testing.assert_array_equal(codes, [[-1, -1], [1, 1], [1, -1], [1, -1]])
  idx = fsq.codes_to_indices(codes, levels)
  np.testing.assert_array_equal(idx, [0, 3, 1, 1])
  np.testing.assert_array_equal(fsq.all_codes(levels)[idx], codes)
  for lv in [(2,), (3,), (4,), (5,), (8,)]:
    grid = np.asarray(fsq.all_codes(lv))[:, 0]
    np.testing.assert_allclose(grid, -grid[::-1], atol=1e-6)  # Symmetric about 0.


def _config_levels():
  """Every FSQ level tuple that a config in configs/ uses (tokenizer and latent actions)."""
  from configs import multigrid, quickstart  # pylint: disable=g-import-not-at-top
  found = set()
  for module in (multigrid, quickstart):
    for variant in multigrid.VARIANTS:
      config = module.get_config(variant)
      found.add(tuple(config.tokenizer.levels))
      found.add(tuple(config.lam.action_levels))
      found.add(tuple(config.lam.scene_action_levels))
  return sorted(found)


@pytest.mark.parametrize("levels", _config_levels())
def test_codes_are_balanced_at_unit_input_scale(levels):
  # A freshly initialised bottleneck sees roughly N(0, 1) inputs (LayerNorm then Dense):
  # every code of every channel must then be in real use, or the bottleneck starts
  # collapsed (the reference's shift put 94% of L=2 inputs on one code).
  z = jax.random.normal(jax.random.PRNGKey(0), (100_000, len(levels)))
  half = (np.asarray(levels, np.float32) - 1) / 2
  digits = np.round(np.asarray(fsq.quantize(z, levels)) * half + half).astype(int)
  for j, level in enumerate(levels):
    freq = np.bincount(digits[:, j], minlength=level) / len(z)
    assert freq.min() > 0.5 / level ** 1.5, (levels, j, freq)
    np.testing.assert_allclose(freq, freq[::-1], atol=0.01)  # Symmetric, like N(0, 1).
  if len(levels) <= 4:  # Small action codebooks: every combination is reachable.
    used = np.unique(np.asarray(fsq.codes_to_indices(fsq.quantize(z, levels), levels)))
    assert len(used) == fsq.codebook_size(levels)


def test_bad_levels_and_channel_mismatch_raise():
  with pytest.raises(ValueError, match="levels"):
    fsq.quantize(jnp.zeros((1, 2)), (1, 4))
  with pytest.raises(ValueError, match="channels"):
    fsq.quantize(jnp.zeros((1, 3)), (4, 4))

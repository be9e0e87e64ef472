"""Tests for the shared spatio-temporal IDM / FDM and the scene pooling (dynamics.py)."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flam_jax.modules import dynamics
from tests.param_utils import random_params

B, K, D, A = 2, 4, 16, 3
ATOL = 1e-5


def _inputs(seed=0, k=K):
  r = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(r[0], (B, k, D)), jax.random.normal(r[1], (B, k, D)),
          jax.random.normal(r[2], (B, k, A)))


@pytest.fixture(scope="module")
def idm():
  model = dynamics.InverseDynamics(num_blocks=2, num_heads=2)
  s_t, s_tp1, _ = _inputs()
  params = random_params(model, s_t, s_tp1, seed=1)
  return model, params, jax.jit(model.apply)


@pytest.fixture(scope="module")
def fdm():
  model = dynamics.ForwardDynamics(num_blocks=2, num_heads=2)
  s_t, _, a = _inputs()
  params = random_params(model, s_t, a, seed=2)
  return model, params, jax.jit(model.apply)


def test_idm_shape_and_dtype(idm):
  _, params, apply = idm
  s_t, s_tp1, _ = _inputs()
  out = apply(params, s_t, s_tp1)
  assert out.shape == (B, K, D)
  assert out.dtype == jnp.float32
  assert np.all(np.isfinite(out))


def test_idm_permutation_equivariant(idm):
  _, params, apply = idm
  s_t, s_tp1, _ = _inputs(3)
  perm = np.array([2, 0, 3, 1])
  out = apply(params, s_t, s_tp1)
  out_perm = apply(params, s_t[:, perm], s_tp1[:, perm])
  np.testing.assert_allclose(out_perm, out[:, perm], atol=ATOL)


def test_idm_uses_next_frame_and_other_entities(idm):
  """a^i depends on s_{t+1}^i and (via spatial attention) on other entities' s_t^j."""
  _, params, apply = idm
  s_t, s_tp1, _ = _inputs(4)
  out = apply(params, s_t, s_tp1)
  noise = jax.random.normal(jax.random.key(40), (B, D))
  out_next = apply(params, s_t, s_tp1.at[:, 0].add(noise))
  assert np.abs(out_next[:, 0] - out[:, 0]).max() > 1e-3
  # Entity 1's own s_{t+1} does not change entity 0's query stream...
  np.testing.assert_allclose(out_next[:, 1:], out[:, 1:], atol=ATOL)
  # ...but another entity's current value does (interactions).
  out_other = apply(params, s_t.at[:, 1].add(noise), s_tp1)
  assert np.abs(out_other[:, 0] - out[:, 0]).max() > 1e-3


def test_fdm_shape_and_permutation_equivariant(fdm):
  _, params, apply = fdm
  s_t, _, a = _inputs(5)
  perm = np.array([3, 1, 0, 2])
  out = apply(params, s_t, a)
  assert out.shape == (B, K, D) and out.dtype == jnp.float32
  out_perm = apply(params, s_t[:, perm], a[:, perm])
  np.testing.assert_allclose(out_perm, out[:, perm], atol=ATOL)
  # The action matters: changing entity 0's action changes its prediction.
  out_a = apply(params, s_t, a.at[:, 0].add(jax.random.normal(jax.random.key(50), (B, A))))
  assert np.abs(out_a[:, 0] - out[:, 0]).max() > 1e-3


def test_fdm_broadcasts_scene_action(fdm):
  _, params, apply = fdm
  s_t, _, a = _inputs(6)
  scene_a = a[:, :1]  # [B, 1, A]
  out_scene = apply(params, s_t, scene_a)
  out_explicit = apply(params, s_t, jnp.broadcast_to(scene_a, (B, K, A)))
  assert out_scene.shape == (B, K, D)
  np.testing.assert_allclose(out_scene, out_explicit, atol=ATOL)
  perm = np.array([1, 3, 2, 0])
  np.testing.assert_allclose(apply(params, s_t[:, perm], scene_a), out_scene[:, perm], atol=ATOL)


def test_fdm_rejects_bad_action_shape(fdm):
  model, params, _ = fdm
  s_t, _, _ = _inputs()
  with pytest.raises(ValueError, match="actions must be"):
    model.apply(params, s_t, jnp.zeros((B, 2, A)))


def test_same_code_runs_on_patch_entities(idm, fdm):
  """The monolithic LAM uses the same modules (and params: nothing depends on K) with K = N."""
  n = 16
  s_t, s_tp1, a = _inputs(7, k=n)
  assert jax.eval_shape(idm[0].apply, idm[1], s_t, s_tp1).shape == (B, n, D)
  assert jax.eval_shape(fdm[0].apply, fdm[1], s_t, a[:, :1]).shape == (B, n, D)


def test_scene_pool_shape_and_permutation_invariant():
  pool = dynamics.SceneActionPool(num_heads=2)
  feats, _, _ = _inputs(8)
  params = random_params(pool, feats)
  apply = jax.jit(pool.apply)
  out = apply(params, feats)
  assert out.shape == (B, 1, D)
  perm = np.array([3, 2, 0, 1])
  np.testing.assert_allclose(apply(params, feats[:, perm]), out, atol=ATOL)
  # Not trivially constant: it depends on the features.
  noise = jax.random.normal(jax.random.key(80), (B, D))
  assert np.abs(apply(params, feats.at[:, 0].add(noise)) - out).max() > 1e-4


def test_bf16_compute_is_finite_with_f32_params(idm, fdm):
  """dtype only changes the compute dtype: the float32 params are reused as is."""
  s_t, s_tp1, a = _inputs(10)
  idm_bf16 = dynamics.InverseDynamics(num_blocks=2, num_heads=2, dtype=jnp.bfloat16)
  fdm_bf16 = dynamics.ForwardDynamics(num_blocks=2, num_heads=2, dtype=jnp.bfloat16)
  shapes = jax.eval_shape(idm_bf16.init, jax.random.key(0), s_t, s_tp1)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes))
  assert jax.tree.structure(shapes) == jax.tree.structure(idm[1])
  out_idm = jax.jit(idm_bf16.apply)(idm[1], s_t, s_tp1)
  out_fdm = jax.jit(fdm_bf16.apply)(fdm[1], s_t, a)
  assert np.all(np.isfinite(np.asarray(out_idm, np.float32)))
  assert np.all(np.isfinite(np.asarray(out_fdm, np.float32)))
  # bf16 is an approximation of the f32 model, not something else.
  np.testing.assert_allclose(out_fdm, fdm[2](fdm[1], s_t, a), atol=0.15)


@pytest.mark.parametrize("zero_init", [True, False])
def test_fdm_action_embedding_init(zero_init):
  # Zero init (FSQ variants): the untrained FDM ignores the actions exactly; random init
  # (flam_v2's Gaussian actions): it depends on them from the first step.
  model = dynamics.ForwardDynamics(num_blocks=2, num_heads=2, additive_actions=True,
                                   zero_init_actions=zero_init)
  s_t, _, a = _inputs(7)
  params = model.init(jax.random.key(0), s_t, a)
  apply = jax.jit(model.apply)
  change = float(jnp.abs(apply(params, s_t, a) - apply(params, s_t, -a)).max())
  assert (change == 0.0) if zero_init else (change > 1e-3), change

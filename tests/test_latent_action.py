"""Tests for the latent action bottlenecks (latent_action.py)."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flam_jax.modules import fsq
from flam_jax.modules import latent_action as la
from tests.param_utils import random_params

B, K, D = 2, 4, 16


def _features(seed=0, b=B, scale=1.0):
  return scale * jax.random.normal(jax.random.key(seed), (b, K, D))


@pytest.mark.parametrize("levels", [(2, 2), (3, 2)])
def test_fsq_bottleneck_limits_actions(levels):
  model = la.FSQActionBottleneck(levels=levels)
  params = random_params(model, _features())
  # Many random inputs at several scales so every code can be hit.
  feats = jnp.concatenate([_features(1, b=256, scale=s) for s in (0.3, 3.0, 30.0)])
  out = jax.jit(model.apply)(params, feats)
  actions, indices = np.asarray(out["actions"]), np.asarray(out["indices"])
  assert actions.shape == (feats.shape[0], K, len(levels))
  assert indices.shape == (feats.shape[0], K) and indices.dtype == np.int32
  assert out["kl"].shape == (feats.shape[0],) and np.all(out["kl"] == 0)
  n_codes = fsq.codebook_size(levels)
  assert indices.min() >= 0 and indices.max() < n_codes
  distinct = np.unique(actions.reshape(-1, len(levels)), axis=0)
  assert 1 < len(distinct) <= n_codes
  # Actions are exactly the codebook entries of their indices.
  np.testing.assert_allclose(actions, fsq.indices_to_codes(indices, levels), atol=1e-6)


def test_fsq_bottleneck_has_gradients():
  model = la.FSQActionBottleneck(levels=(2, 2))
  feats = _features(2)
  params = random_params(model, feats)
  grads = jax.grad(lambda p: jnp.sum(model.apply(p, feats)["actions"] * 1.7))(params)
  assert float(jnp.abs(grads["params"]["proj"]).sum()) > 0


def test_fsq_projection_keeps_unit_scale_and_usage_penalty_spreads_codes():
  # The projection is LN(x) . w/|w|: scaling w changes nothing, so no channel can
  # saturate onto one code through the norm of its weights.
  model = la.FSQActionBottleneck(levels=(2, 2))
  feats = _features(2)
  params = random_params(model, feats)
  scaled = jax.tree.map(lambda x: 50.0 * x, params)
  np.testing.assert_allclose(model.apply(scaled, feats)["code_log_probs"],
                             model.apply(params, feats)["code_log_probs"], atol=1e-5)
  out = model.apply(params, feats)
  np.testing.assert_allclose(jnp.exp(out["code_log_probs"]).sum(-1), 1.0, atol=1e-5)
  # The penalty is -H(batch-mean code distribution): -log 4 when the batch uses all four
  # codes equally, 0 when every row is sure of the same code.
  uniform = jnp.log(jnp.full((8, 3, 4), 0.25))
  np.testing.assert_allclose(la.code_entropy_loss(uniform), -np.log(4.0), rtol=1e-5)
  one_code = jnp.log(jnp.asarray([1.0, 1e-12, 1e-12, 1e-12]))[None, None].repeat(8, 0)
  assert abs(float(la.code_entropy_loss(one_code))) < 1e-6


def test_gaussian_kl_zero_at_prior_positive_elsewhere():
  zeros = jnp.zeros((3, 5))
  np.testing.assert_array_equal(la.gaussian_kl(zeros, zeros), 0.0)
  assert np.all(la.gaussian_kl(zeros + 0.5, zeros) > 0)
  assert np.all(la.gaussian_kl(zeros, zeros - 1.0) > 0)
  assert np.all(la.gaussian_kl(zeros, zeros + 1.0) > 0)
  # Closed form: KL(N(1, 1) || N(0, 1)) = 0.5.
  np.testing.assert_allclose(la.gaussian_kl(jnp.ones(()), jnp.zeros(())), 0.5, rtol=1e-6)


@pytest.fixture(scope="module")
def gaussian():
  model = la.GaussianActionBottleneck(latent_dim=3)
  params = random_params(model, _features(), deterministic=True)
  return model, params


def test_gaussian_deterministic_returns_mean(gaussian):
  model, params = gaussian
  out = jax.jit(lambda p, f: model.apply(p, f, deterministic=True))(params, _features(3))
  assert out["actions"].shape == (B, K, 3)
  assert out["mean"].shape == out["log_var"].shape == (B, K, 3)
  np.testing.assert_array_equal(out["actions"], out["mean"])
  assert out["kl"].shape == (B,)
  np.testing.assert_allclose(
      out["kl"], la.gaussian_kl(out["mean"], out["log_var"]).sum(axis=(1, 2)), rtol=1e-6)
  assert np.all(out["kl"] > 0)
  assert out.get("indices") is None


def test_gaussian_sampling_uses_action_rng(gaussian):
  model, params = gaussian
  feats = _features(4)
  sample = jax.jit(lambda p, f, r: model.apply(p, f, deterministic=False, rngs={"action": r}))
  a1 = sample(params, feats, jax.random.key(1))
  a1_again = sample(params, feats, jax.random.key(1))
  a2 = sample(params, feats, jax.random.key(2))
  np.testing.assert_array_equal(a1["actions"], a1_again["actions"])
  assert np.abs(a1["actions"] - a2["actions"]).max() > 1e-3
  assert np.abs(a1["actions"] - a1["mean"]).max() > 1e-3
  np.testing.assert_allclose(a1["mean"], a2["mean"])
  # Reparameterised: the noise is exactly (action - mean) / std.
  eps = (a1["actions"] - a1["mean"]) / jnp.exp(0.5 * a1["log_var"])
  assert abs(float(eps.std()) - 1.0) < 0.6
  with pytest.raises(Exception):  # No 'action' rng given.
    model.apply(params, feats, deterministic=False)


def test_gaussian_log_var_is_clipped():
  model = la.GaussianActionBottleneck(latent_dim=2, min_log_var=-1.0, max_log_var=1.0)
  feats = _features(5, scale=1000.0)
  params = random_params(model, feats, deterministic=True)
  out = model.apply(params, feats, deterministic=True)
  assert float(out["log_var"].min()) >= -1.0 and float(out["log_var"].max()) <= 1.0
  assert np.all(np.isfinite(out["kl"]))


def test_sample_random_actions_fsq_covers_codebook():
  levels = (2, 2)
  acts = la.sample_random_actions("fsq", jax.random.key(0), (64, K), levels)
  assert acts.shape == (64, K, 2)
  codebook = np.asarray(fsq.all_codes(levels))
  distinct = np.unique(np.asarray(acts).reshape(-1, 2), axis=0)
  assert len(distinct) == len(codebook)
  assert all(any(np.allclose(c, row) for row in codebook) for c in distinct)


def test_sample_random_actions_gaussian_prior():
  acts = la.sample_random_actions("gaussian", jax.random.key(0), (512, K), 3)
  assert acts.shape == (512, K, 3)
  assert abs(float(acts.mean())) < 0.1 and abs(float(acts.std()) - 1.0) < 0.1


def test_factory_and_unknown_kind():
  fsq_b = la.make_action_bottleneck("fsq", levels=(2, 2, 2))
  assert isinstance(fsq_b, la.FSQActionBottleneck) and tuple(fsq_b.levels) == (2, 2, 2)
  gauss_b = la.make_action_bottleneck("gaussian", latent_dim=4)
  assert isinstance(gauss_b, la.GaussianActionBottleneck) and gauss_b.latent_dim == 4
  with pytest.raises(ValueError, match="fsq.*gaussian"):
    la.make_action_bottleneck("vq", levels=(2, 2))
  with pytest.raises(ValueError, match="latent_dim"):
    la.make_action_bottleneck("gaussian")
  with pytest.raises(ValueError, match="valid kinds"):
    la.sample_random_actions("vq", jax.random.key(0), (1, K), 2)


@pytest.mark.parametrize("kind", ["fsq", "gaussian"])
def test_bf16_finite(kind):
  model = la.make_action_bottleneck(kind, levels=(2, 2), latent_dim=2, dtype=jnp.bfloat16)
  feats = _features(6)
  params = random_params(model, feats, deterministic=True)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  out = jax.jit(lambda p, f: model.apply(p, f, deterministic=True))(params, feats)
  assert np.all(np.isfinite(out["actions"])) and np.all(np.isfinite(out["kl"]))

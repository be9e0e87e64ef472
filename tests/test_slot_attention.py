"""Tests for SlotAttention and the Factorizer (Eq. 2, Sec 5.5, Appendix E)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flam_jax.modules.slot_attention import Factorizer, SlotAttention, patch_grid

B, T, N, DZ, K, D = 2, 4, 8, 5, 3, 16
ITERS, FAC_ITERS = 2, 1  # Slot-attention iterations (fewer compile faster).


def _rand(seed, shape):
  # NumPy data: no per-shape jax.random compiles.
  return np.random.RandomState(seed).randn(*shape).astype(np.float32)


def _with(x, index, value):
  """A copy of numpy `x` with x[index] = value."""
  x = x.copy()
  x[index] = value
  return x


def _slot_attention(num_iterations=ITERS):
  return SlotAttention(num_iterations=num_iterations, mlp_dim=32)


def _factorizer(**kw):
  return Factorizer(num_slots=K, slot_dim=D, num_iterations=FAC_ITERS,
                    mlp_dim=32, **kw)


# One jitted apply per config, shared by the tests: compiling dominates.
@functools.lru_cache(maxsize=None)
def _sa_apply(num_iterations=ITERS):
  return jax.jit(_slot_attention(num_iterations).apply)


@functools.lru_cache(maxsize=None)
def _fac_apply(recursive_init=True, temporal_attention=False,
               dtype=jnp.float32):
  return jax.jit(_factorizer(recursive_init=recursive_init,
                             temporal_attention=temporal_attention,
                             dtype=dtype).apply)


@pytest.fixture(scope="module")
def sa_setup():
  inputs_bnd, slots_bkd = _rand(0, (B, N, D)), _rand(1, (B, K, D))
  params = jax.jit(_slot_attention().init)(
      jax.random.PRNGKey(2), inputs_bnd, slots_bkd)
  return params, inputs_bnd, slots_bkd


@pytest.fixture(scope="module")
def fac_params():
  """One parameter set, with the temporal block, used by every variant.

  (Linen ignores the unused temporal-block params when temporal_attention=False;
  every other parameter is shared by all variants.)
  """
  x = _rand(3, (B, T, N, DZ))
  model = _factorizer(temporal_attention=True)
  return jax.jit(model.init)(jax.random.PRNGKey(4), x), x


# ---------------------------------------------------------------- SlotAttention


def test_slot_attention_shapes_and_mask_normalisation(sa_setup):
  params, inputs_bnd, slots_bkd = sa_setup
  slots, attn = _sa_apply()(params, inputs_bnd, slots_bkd)
  assert slots.shape == (B, K, D) and slots.dtype == jnp.float32
  assert attn.shape == (B, K, N) and attn.dtype == jnp.float32
  np.testing.assert_allclose(attn.sum(axis=1), 1.0, atol=1e-5)
  assert np.all(np.asarray(attn) >= 0)
  # The slots were actually updated.
  assert not np.allclose(slots, slots_bkd, atol=1e-3)


def test_slot_attention_equivariant_to_slot_permutation(sa_setup):
  params, inputs_bnd, slots_bkd = sa_setup
  perm = np.array([2, 0, 1])
  slots, attn = _sa_apply()(params, inputs_bnd, slots_bkd)
  slots_p, attn_p = _sa_apply()(params, inputs_bnd, slots_bkd[:, perm])
  np.testing.assert_allclose(slots_p, slots[:, perm], atol=1e-5)
  np.testing.assert_allclose(attn_p, attn[:, perm], atol=1e-5)


def test_slot_attention_invariant_to_token_permutation(sa_setup):
  params, inputs_bnd, slots_bkd = sa_setup
  perm = np.random.RandomState(0).permutation(N)
  slots, attn = _sa_apply()(params, inputs_bnd, slots_bkd)
  slots_p, attn_p = _sa_apply()(params, inputs_bnd[:, perm], slots_bkd)
  np.testing.assert_allclose(slots_p, slots, atol=1e-5)
  np.testing.assert_allclose(attn_p, attn[:, :, perm], atol=1e-5)


def test_slot_attention_shares_params_across_iterations(sa_setup):
  params, inputs_bnd, slots_bkd = sa_setup
  shapes = lambda p: jax.tree_util.tree_map(jnp.shape, p)
  p5 = jax.eval_shape(_slot_attention(5).init, jax.random.PRNGKey(0),
                      inputs_bnd, slots_bkd)
  assert shapes(p5) == shapes(params)
  # Iterating again with the same params continues from the result.
  s1, _ = _sa_apply(1)(params, inputs_bnd, slots_bkd)
  s2, attn2 = _sa_apply()(params, inputs_bnd, slots_bkd)
  s1_twice, attn1_twice = _sa_apply(1)(params, inputs_bnd, s1)
  np.testing.assert_allclose(s1_twice, s2, atol=1e-5)
  np.testing.assert_allclose(attn1_twice, attn2, atol=1e-5)
  assert not np.allclose(s1, s2, atol=1e-4)


# ------------------------------------------------------------------- Factorizer


@pytest.mark.parametrize("recursive_init", [True, False])
@pytest.mark.parametrize("temporal_attention", [True, False])
def test_factorizer_shapes_masks_and_jit(fac_params, recursive_init,
                                         temporal_attention):
  params, x = fac_params
  slots, masks = _fac_apply(recursive_init, temporal_attention)(params, x)
  assert slots.shape == (B, T, K, D) and slots.dtype == jnp.float32
  assert masks.shape == (B, T, K, N) and masks.dtype == jnp.float32
  np.testing.assert_allclose(masks.sum(axis=2), 1.0, atol=1e-5)
  assert np.all(np.isfinite(slots))


def test_factorizer_param_tree_is_the_same_for_both_inits():
  x, key = _rand(0, (1, 2, N, DZ)), jax.random.PRNGKey(0)
  shapes = lambda p: jax.tree_util.tree_map(jnp.shape, p)
  p_rec = jax.eval_shape(_factorizer(recursive_init=True).init, key, x)
  p_ind = jax.eval_shape(_factorizer(recursive_init=False).init, key, x)
  assert shapes(p_rec) == shapes(p_ind)
  assert "temporal_attention" not in p_rec["params"]
  assert p_rec["params"]["slots_init"].shape == (K, D)
  assert p_rec["params"]["pos_embedding"].shape == (N, D)


def test_factorizer_without_recursion_runs_frames_independently(fac_params):
  params, x = fac_params
  slots, masks = _fac_apply(False, False)(params, x)
  for t in range(T):
    slots_t, masks_t = _fac_apply(False, False)(params, x[:, t:t + 1])
    np.testing.assert_allclose(slots[:, t], slots_t[:, 0], atol=1e-5)
    np.testing.assert_allclose(masks[:, t], masks_t[:, 0], atol=1e-5)


def test_factorizer_recursion_equals_manual_recursion(fac_params):
  params, x = fac_params
  apply = jax.jit(functools.partial(
      _factorizer(recursive_init=True).apply,
      capture_intermediates=lambda mdl, _: mdl.name == "input_mlp",
      mutable=["intermediates"]))
  (slots, masks), state = apply(params, x)
  tokens_btnd = state["intermediates"]["input_mlp"]["__call__"][0]
  assert tokens_btnd.shape == (B, T, N, D)

  # Frame t's slot attention starts from frame t-1's final slots.
  sa_params = {"params": params["params"]["slot_attention"]}
  s_bkd = jnp.broadcast_to(params["params"]["slots_init"], (B, K, D))
  for t in range(T):
    s_bkd, attn_bkn = _sa_apply(FAC_ITERS)(sa_params, tokens_btnd[:, t], s_bkd)
    np.testing.assert_allclose(slots[:, t], s_bkd, atol=1e-5)
    np.testing.assert_allclose(masks[:, t], attn_bkn, atol=1e-5)

  # Frame 0 starts from the learned slots either way; later frames differ.
  slots_ind, _ = _fac_apply(False, False)(params, x)
  np.testing.assert_allclose(slots[:, 0], slots_ind[:, 0], atol=1e-5)
  for t in range(1, T):
    assert not np.allclose(slots[:, t], slots_ind[:, t], atol=1e-4)


@pytest.mark.parametrize("recursive_init", [True, False])
def test_temporal_attention_is_causal(fac_params, recursive_init):
  params, x = fac_params
  apply = _fac_apply(recursive_init, True)
  slots, _ = apply(params, x)
  t = 1
  x_changed = _with(x, np.s_[:, t + 1:], _rand(9, x[:, t + 1:].shape))
  slots_changed, _ = apply(params, x_changed)
  np.testing.assert_allclose(slots_changed[:, :t + 1], slots[:, :t + 1],
                             atol=1e-5)
  assert not np.allclose(slots_changed[:, t + 1:], slots[:, t + 1:], atol=1e-4)


def test_temporal_attention_mixes_past_frames(fac_params):
  """Without recursion, only the temporal block can carry frame 0 to frame 1."""
  params, x = fac_params
  apply = _fac_apply(False, True)
  slots, _ = apply(params, x)
  x_changed = _with(x, np.s_[:, 0], _rand(8, x[:, 0].shape))
  slots_changed, _ = apply(params, x_changed)
  assert not np.allclose(slots_changed[:, 1:], slots[:, 1:], atol=1e-4)


def test_factorizer_gradients_reach_every_parameter(fac_params):
  params, x = fac_params
  model = _factorizer(recursive_init=True, temporal_attention=True)

  def loss(p):
    slots, _ = model.apply(p, x)
    return jnp.sum(jnp.sin(slots))

  grads = jax.jit(jax.grad(loss))(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)), path
    assert np.any(np.abs(g) > 0), path


def test_factorizer_bf16_runs_finite(fac_params):
  params, x = fac_params
  model = _factorizer(temporal_attention=True, dtype=jnp.bfloat16)
  p16 = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(p16))
  slots, masks = _fac_apply(True, True, jnp.bfloat16)(params, x)
  assert np.all(np.isfinite(slots)) and np.all(np.isfinite(masks))
  np.testing.assert_allclose(masks.sum(axis=2), 1.0, atol=1e-3)
  # Close to the float32 result with the same params.
  slots32, _ = _fac_apply(True, True)(params, x)
  np.testing.assert_allclose(slots, slots32, atol=0.25)


def test_sampled_slot_init_is_exchangeable_and_seeded():
  """"sampled": one learned Gaussian for all K slots, noise from the "slots" rng stream
  (a fixed key without it)."""
  model = _factorizer(slot_init="sampled")
  x = _rand(0, (B, T, N, DZ))
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  assert "slots_init" not in params["params"]
  assert params["params"]["slots_init_mean"].shape == (D,)
  assert params["params"]["slots_init_log_scale"].shape == (D,)
  apply = jax.jit(model.apply)
  fixed, _ = apply(params, x)
  np.testing.assert_array_equal(fixed, apply(params, x)[0])  # Deterministic without rng.
  a, _ = apply(params, x, rngs={"slots": jax.random.PRNGKey(1)})
  b, _ = apply(params, x, rngs={"slots": jax.random.PRNGKey(2)})
  assert not np.allclose(a, b, atol=1e-4)
  # Slots of one draw differ (the noise breaks their symmetry), and the learned scale
  # reaches the init: zero scale makes every slot start the same.
  assert not np.allclose(a[:, 0, 0], a[:, 0, 1], atol=1e-4)
  flat = jax.tree_util.tree_map(lambda p: p, params)  # A copy of the nested dicts.
  flat["params"]["slots_init_log_scale"] = jnp.full((D,), -30.0)
  same, masks = apply(flat, x, rngs={"slots": jax.random.PRNGKey(1)})
  np.testing.assert_allclose(same[:, :, 0], same[:, :, 1], atol=1e-4)
  np.testing.assert_allclose(masks[:, :, 0], masks[:, :, 1], atol=1e-5)


def test_unknown_slot_init_is_refused():
  with pytest.raises(ValueError, match="slot_init"):
    _factorizer(slot_init="random").init(jax.random.PRNGKey(0), _rand(0, (1, 1, N, DZ)))


def test_patch_grid_is_row_major_coordinates():
  grid = np.asarray(patch_grid(9))
  assert grid.shape == (9, 4)
  np.testing.assert_allclose(grid[0], [0, 0, 1, 1])  # Top left: (y, x, 1 - y, 1 - x).
  np.testing.assert_allclose(grid[2], [0, 1, 1, 0])  # Top right.
  np.testing.assert_allclose(grid[3], [0.5, 0, 0.5, 1])  # Row 1, column 0.
  with pytest.raises(ValueError, match="square token grid"):
    patch_grid(8)


def test_grid_position_embedding_replaces_the_free_one_and_is_smooth():
  """"grid": positions come from a Dense map of the coordinates, so a patch's neighbour
  starts nearer to it than a far patch does (with "learned" they are unrelated)."""
  n = 16
  x = _rand(0, (B, T, n, DZ))
  model = _factorizer(position_embedding="grid")
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"]
  assert "pos_embedding" not in params
  kernel, bias = params["pos_grid"]["kernel"], params["pos_grid"]["bias"]
  assert kernel.shape == (4, D)
  emb = np.asarray(patch_grid(n) @ kernel + bias)
  dist = lambda i, j: np.linalg.norm(emb[i] - emb[j])
  assert dist(0, 1) < dist(0, 3) and dist(0, 4) < dist(0, 12)  # Along a row, a column.
  slots, masks = jax.jit(model.apply)({"params": params}, x)
  assert slots.shape == (B, T, K, D) and masks.shape == (B, T, K, n)
  assert np.all(np.isfinite(slots))
  with pytest.raises(ValueError, match="position_embedding"):
    _factorizer(position_embedding="sine").init(jax.random.PRNGKey(0), x)


INIT_ITERS = 3  # Iterations for frames that start from the initial slots.


@pytest.mark.parametrize("recursive_init", [True, False])
def test_init_iterations_refine_only_frames_that_start_from_the_initial_slots(
    fac_params, recursive_init):
  """With recursion frame 0 gets INIT_ITERS iterations and later frames FAC_ITERS from
  t-1's slots; without it every frame gets INIT_ITERS. Same parameters as the default."""
  params, x = fac_params
  model = _factorizer(recursive_init=recursive_init, init_iterations=INIT_ITERS)
  key = jax.random.PRNGKey(0)
  shapes = lambda p: jax.tree_util.tree_map(jnp.shape, p)
  assert shapes(jax.eval_shape(model.init, key, x)) == shapes(
      jax.eval_shape(_factorizer(recursive_init=recursive_init).init, key, x))
  slots, masks = jax.jit(model.apply)(params, x)

  # The slot-attention inputs, as test_factorizer_recursion_equals_manual_recursion gets them.
  _, state = jax.jit(functools.partial(
      _factorizer().apply, capture_intermediates=lambda mdl, _: mdl.name == "input_mlp",
      mutable=["intermediates"]))(params, x)
  tokens_btnd = state["intermediates"]["input_mlp"]["__call__"][0]
  sa_params = {"params": params["params"]["slot_attention"]}
  init_bkd = jnp.broadcast_to(params["params"]["slots_init"], (B, K, D))
  s_bkd = init_bkd
  for t in range(T):
    start_bkd = s_bkd if (recursive_init and t) else init_bkd
    iterations = FAC_ITERS if (recursive_init and t) else INIT_ITERS
    s_bkd, attn_bkn = _sa_apply(iterations)(sa_params, tokens_btnd[:, t], start_bkd)
    np.testing.assert_allclose(slots[:, t], s_bkd, atol=1e-5)
    np.testing.assert_allclose(masks[:, t], attn_bkn, atol=1e-5)
  default_slots, _ = _fac_apply(recursive_init, False)(params, x)
  assert not np.allclose(slots[:, 0], default_slots[:, 0], atol=1e-4)


def test_fewer_init_iterations_than_per_frame_is_refused():
  with pytest.raises(ValueError, match="init_iterations=0 is below num_iterations=1"):
    _factorizer(init_iterations=0).init(jax.random.PRNGKey(0), _rand(0, (1, 1, N, DZ)))

"""Transformer blocks: shapes, masking, conditioning on the context, remat equivalence."""

import jax
import jax.numpy as jnp
import numpy as np

from flam_jax.modules import transformer

B, L, D = 2, 5, 8


def _x(seed, length=L):
  return jax.random.normal(jax.random.key(seed), (B, length, D))


def test_self_attention_block_causal_mask_blocks_the_future():
  block = transformer.SelfAttentionBlock(num_heads=2)
  x = _x(0)
  causal = jnp.tril(jnp.ones((L, L), bool))[None, None]
  params = block.init(jax.random.key(1), x, causal)
  out = block.apply(params, x, causal)
  assert out.shape == x.shape and out.dtype == x.dtype
  changed = x.at[:, -1].set(_x(10)[:, 0] * 3.0)  # Only the last position changes.
  again = block.apply(params, changed, causal)
  np.testing.assert_allclose(again[:, :-1], out[:, :-1], atol=1e-5)
  assert np.abs(again[:, -1] - out[:, -1]).max() > 1e-3
  # Without the mask, the earlier positions see the change.
  free = block.apply(params, changed) - block.apply(params, x)
  assert np.abs(free[:, :-1]).max() > 1e-4


def test_cross_attention_depends_on_context_not_its_order():
  block = transformer.CrossAttentionBlock(num_heads=2)
  x, context = _x(2, 3), _x(3)
  params = block.init(jax.random.key(4), x, context)
  out = block.apply(params, x, context)
  assert out.shape == x.shape
  perm = jnp.array([4, 2, 0, 1, 3])
  np.testing.assert_allclose(block.apply(params, x, context[:, perm]), out, atol=1e-5)
  assert np.abs(block.apply(params, x, _x(5)) - out).max() > 1e-4


def test_remat_block_has_the_same_parameters_and_outputs():
  x = _x(6)
  plain = transformer.SelfAttentionBlock(num_heads=2)
  remat = transformer.maybe_remat(transformer.SelfAttentionBlock, True)(num_heads=2)
  params = plain.init(jax.random.key(7), x)
  assert jax.tree.structure(remat.init(jax.random.key(7), x)) == jax.tree.structure(params)
  np.testing.assert_allclose(remat.apply(params, x), plain.apply(params, x), atol=1e-6)
  assert transformer.maybe_remat(transformer.SelfAttentionBlock, False) is (
      transformer.SelfAttentionBlock)


def test_bfloat16_compute_keeps_float32_parameters():
  block = transformer.SelfAttentionBlock(num_heads=2, dtype=jnp.bfloat16)
  x = _x(8)
  params = block.init(jax.random.key(9), x)
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  out = block.apply(params, x)
  assert np.all(np.isfinite(np.asarray(out, np.float32)))

"""Transformer blocks: shapes, masking, conditioning on the context, remat equivalence;
attention through jax.nn.dot_product_attention equals flax's reference attention
(outputs and gradients), in one call and a block of queries at a time, and the blocks'
causal flag equals an explicit causal mask."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flam_jax.modules import transformer

B, L, D = 2, 5, 8


def _qkv(batch_shape, q_len=5, k_len=7, heads=2, depth=4, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (jax.random.normal(keys[0], batch_shape + (q_len, heads, depth)),
          jax.random.normal(keys[1], batch_shape + (k_len, heads, depth)),
          jax.random.normal(keys[2], batch_shape + (k_len, heads, depth)))


# None: one call at these sizes; 2 * 7 logits a block: one query of 2 heads x 7 keys (the
# blocked path, as on XLA:CPU/TPU for long sequences).
BLOCKINGS = [None, 14]


@pytest.mark.parametrize("batch_shape", [(3,), (2, 3)])
@pytest.mark.parametrize("mask_kind", ["none", "shared", "per_example"])
@pytest.mark.parametrize("max_block_logits", BLOCKINGS)
def test_attention_matches_flax_reference(batch_shape, mask_kind, max_block_logits):
  q, k, v = _qkv(batch_shape)
  mask = None
  if mask_kind == "shared":
    mask = jnp.arange(7)[None, None, :] <= jnp.arange(5)[None, :, None] + 1  # [1, q, k]
  elif mask_kind == "per_example":
    keep = jax.random.bernoulli(jax.random.PRNGKey(1), 0.7, batch_shape + (1, 5, 7))
    mask = keep.at[..., 0].set(True)  # Every query keeps one key.

  def loss(fn, q, k, v):
    out = fn(q, k, v, mask=mask)
    return jnp.sum(out * jnp.cos(out)), out

  (_, want), want_grads = jax.value_and_grad(
      functools.partial(loss, nn.dot_product_attention), argnums=(0, 1, 2), has_aux=True)(q, k, v)
  ours = functools.partial(transformer.attention, max_block_logits=max_block_logits)
  (_, got), got_grads = jax.value_and_grad(
      functools.partial(loss, ours), argnums=(0, 1, 2), has_aux=True)(q, k, v)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("max_block_logits", [None, 3 * 2 * 6 * 2])  # Blocks of 2 queries.
def test_is_causal_equals_causal_mask(max_block_logits):
  q, k, v = _qkv((3,), q_len=6, k_len=6)
  mask = nn.make_causal_mask(jnp.zeros((1, 6)))
  np.testing.assert_allclose(
      transformer.attention(q, k, v, is_causal=True, max_block_logits=max_block_logits),
      nn.dot_product_attention(q, k, v, mask=mask), rtol=1e-5, atol=1e-5)


def test_query_block_size_divides_and_bounds_the_logits():
  assert transformer._query_block_size(100, 256, 2 ** 26) == 256  # pylint: disable=protected-access
  # Table 4's aggregator: 1600 sequences x 8 heads x 256 keys a query -> blocks of 16.
  assert transformer._query_block_size(1600 * 8 * 256, 256, 2 ** 26) == 16  # pylint: disable=protected-access
  assert transformer._query_block_size(10 ** 9, 6, 2 ** 26) == 1  # pylint: disable=protected-access


def test_bfloat16_attention_softmax_in_float32():
  q, k, v = _qkv((4,), q_len=16, k_len=16, depth=8)
  want = nn.dot_product_attention(q, k, v)
  got = transformer.attention(q, k, v, dtype=jnp.bfloat16)
  assert got.dtype == jnp.bfloat16
  # bfloat16 inputs and output (8 bits of mantissa), float32 logits and softmax.
  np.testing.assert_allclose(got.astype(jnp.float32), want, atol=3e-2)


def test_causal_block_flag_equals_mask():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 8))
  causal = transformer.SelfAttentionBlock(num_heads=2, causal=True)
  masked = transformer.SelfAttentionBlock(num_heads=2)
  params = causal.init(jax.random.PRNGKey(1), x)
  mask = nn.make_causal_mask(jnp.zeros((2, 6)))
  np.testing.assert_allclose(causal.apply(params, x), masked.apply(params, x, mask),
                             rtol=1e-5, atol=1e-5)


def test_decoder_block_is_self_then_cross_attention_then_one_mlp():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 8))
  ctx = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 8))
  block = transformer.DecoderBlock(num_heads=2, causal=True)
  params = block.init(jax.random.PRNGKey(2), x, ctx)["params"]
  assert sorted(params) == ["cross_attn", "ln_kv", "ln_mlp", "ln_q", "ln_self", "mlp", "self_attn"]
  out = block.apply({"params": params}, x, ctx)
  # Causal: changing the last position leaves the earlier outputs unchanged.
  out2 = block.apply({"params": params}, x.at[:, -1].add(1.0), ctx)
  np.testing.assert_allclose(out2[:, :-1], out[:, :-1], rtol=1e-5, atol=1e-6)
  assert not np.allclose(out2[:, -1], out[:, -1])


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


class _TwoDecoderBlocks(nn.Module):
  """Two DecoderBlocks built through maybe_remat, as the aggregator builds them."""

  remat: bool
  chunks: int = 1

  @nn.compact
  def __call__(self, x, context):
    for i in range(2):
      x = transformer.maybe_remat(transformer.DecoderBlock, self.remat, self.chunks)(
          num_heads=2, causal=True, name=f"block_{i}")(x, context)
    return x


@pytest.mark.parametrize("chunks", [2, 4])  # 6 rows: 2 slices of 3; 4 -> 6 slices of 1.
def test_chunked_remat_has_the_same_parameters_outputs_and_gradients(chunks):
  x = jax.random.normal(jax.random.key(5), (6, L, D))
  context = jax.random.normal(jax.random.key(3), (6, 3, D))
  plain, chunked = _TwoDecoderBlocks(remat=False), _TwoDecoderBlocks(remat=True, chunks=chunks)
  params = plain.init(jax.random.key(7), x, context)
  assert jax.tree.structure(chunked.init(jax.random.key(7), x, context)) == (
      jax.tree.structure(params))
  loss = lambda module: jax.jit(jax.value_and_grad(
      lambda p, x, c: jnp.sum(jnp.sin(module.apply(p, x, c))), argnums=(0, 1, 2)))
  (value_plain, grads_plain), (value_chunked, grads_chunked) = (
      loss(plain)(params, x, context), loss(chunked)(params, x, context))
  np.testing.assert_allclose(float(value_chunked), float(value_plain), rtol=1e-5)
  for g_chunked, g_plain in zip(jax.tree.leaves(grads_chunked), jax.tree.leaves(grads_plain)):
    np.testing.assert_allclose(np.asarray(g_chunked), np.asarray(g_plain), rtol=1e-4, atol=1e-5)


def test_chunk_count_divides_the_rows():
  assert transformer._num_chunks(64 * 9, 8) == 8  # pylint: disable=protected-access
  assert transformer._num_chunks(6, 4) == 6  # pylint: disable=protected-access
  assert transformer._num_chunks(7, 2) == 7  # pylint: disable=protected-access
  assert transformer._num_chunks(3, 8) == 3  # pylint: disable=protected-access


def test_bfloat16_compute_keeps_float32_parameters():
  block = transformer.SelfAttentionBlock(num_heads=2, dtype=jnp.bfloat16)
  x = _x(8)
  params = block.init(jax.random.key(9), x)
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  out = block.apply(params, x)
  assert np.all(np.isfinite(np.asarray(out, np.float32)))


def test_attention_implementation_asks_for_cudnn_on_a_gpu_where_it_applies(monkeypatch):
  pick = transformer.attention_implementation
  # Table 4's aggregator: bfloat16, 4 heads of 64, 256 causal positions, no mask array.
  assert pick("gpu", jnp.bfloat16, 64, 256, 256, 16) == "cudnn"
  assert pick("gpu", jnp.float32, 64, 256, 256, 16) == "xla"  # cuDNN: half precision.
  assert pick("gpu", jnp.bfloat16, 12, 256, 256, 1) == "xla"  # Head size not 8k.
  assert pick("gpu", jnp.bfloat16, 64, 5, 5, 1) == "xla"  # K = 5 slots: odd lengths.
  assert pick("gpu", jnp.bfloat16, 64, 1, 2, 1) == "xla"
  assert pick("cpu", jnp.bfloat16, 64, 256, 256, 16) == "blocked"
  assert pick("cpu", jnp.bfloat16, 64, 256, 256, 1) == "xla"
  monkeypatch.setattr(transformer, "GPU_ATTENTION", "xla")
  assert pick("gpu", jnp.bfloat16, 64, 256, 256, 16) == "xla"

"""Pre-LayerNorm transformer building blocks shared by the factorizer, IDM, FDM and aggregator.

All blocks take `dtype` (the compute dtype, e.g. bfloat16) and keep parameters in
float32 (flax's default `param_dtype`), so mixed precision is one config switch.
LayerNorms run in float32; attention logits and their softmax run in the compute dtype
(flax's `force_fp32_for_softmax` is not set), as do the Dense layers.
"""

from typing import Optional, Type

import jax.numpy as jnp
import flax.linen as nn


class MLP(nn.Module):
  """Two-layer GELU MLP, d -> hidden -> d."""

  hidden_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    out_dim = x.shape[-1]
    x = nn.Dense(self.hidden_dim, dtype=self.dtype, name="fc1")(x)
    x = nn.gelu(x)
    return nn.Dense(out_dim, dtype=self.dtype, name="fc2")(x)


class SelfAttentionBlock(nn.Module):
  """x + MHA(LN(x)) then x + MLP(LN(x)); `mask` is broadcastable to [..., heads, q, k]."""

  num_heads: int
  mlp_ratio: float = 4.0
  dtype: jnp.dtype = jnp.float32
  decode: bool = False  # Key/value cache for autoregressive decoding (flax 'cache' collection).

  @nn.compact
  def __call__(self, x, mask: Optional[jnp.ndarray] = None):
    h = nn.LayerNorm(dtype=jnp.float32, name="ln_attn")(x)
    h = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, decode=self.decode, name="attn")(
            h, h, mask=mask)
    x = x + h.astype(x.dtype)
    h = nn.LayerNorm(dtype=jnp.float32, name="ln_mlp")(x)
    h = MLP(int(x.shape[-1] * self.mlp_ratio), dtype=self.dtype, name="mlp")(h)
    return x + h.astype(x.dtype)


def maybe_remat(block_cls: Type[nn.Module], remat: bool) -> Type[nn.Module]:
  """`block_cls`, rematerialised if `remat` (nn.remat: the backward pass recomputes the
  block's activations, e.g. its [.., heads, q, k] attention weights, instead of keeping
  them). Parameter names and values are unchanged, so checkpoints are interchangeable.
  Call the block with positional arguments only (nn.remat's limitation).
  """
  return nn.remat(block_cls) if remat else block_cls


class CrossAttentionBlock(nn.Module):
  """x + MHA(LN(x), LN(context)) then x + MLP(LN(x)): queries x attend to `context`."""

  num_heads: int
  mlp_ratio: float = 4.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context, mask: Optional[jnp.ndarray] = None):
    q = nn.LayerNorm(dtype=jnp.float32, name="ln_q")(x)
    kv = nn.LayerNorm(dtype=jnp.float32, name="ln_kv")(context)
    h = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, name="attn")(q, kv, mask=mask)
    x = x + h.astype(x.dtype)
    h = nn.LayerNorm(dtype=jnp.float32, name="ln_mlp")(x)
    h = MLP(int(x.shape[-1] * self.mlp_ratio), dtype=self.dtype, name="mlp")(h)
    return x + h.astype(x.dtype)

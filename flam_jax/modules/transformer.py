"""Pre-LayerNorm transformer building blocks shared by the factorizer, IDM, FDM and aggregator.

All blocks take `dtype` (the compute dtype, e.g. bfloat16) and keep parameters in
float32 (`param_dtype`), so mixed precision is one config switch. LayerNorms and
attention softmaxes run in float32 for stability.

Attention goes through `jax.nn.dot_product_attention` (`attention` below). On a GPU it asks
for cuDNN's fused flash attention (`implementation="cudnn"`; jax's default is XLA's) where
cuDNN takes the call: bfloat16/float16, head size a multiple of 8 up to 128, even query and
key lengths (`attention_implementation`; GPU_ATTENTION = "xla" switches it off).
Everywhere else XLA's implementation runs, which materialises the [.., heads, q, k] logits:
off the GPU a long attention then runs one block of queries at a time (`lax.map`, each block
rematerialised in the backward), so no more than MAX_BLOCK_LOGITS logits are live at once;
the softmax is per query row, so this is exact.
"""

import functools
from typing import Callable, Optional, Type

import jax
import jax.numpy as jnp
import flax.linen as nn


# Off the GPU, attention over more logits than this (per call, all heads and sequences)
# runs a block of queries at a time: 2**26 float32 logits are 256 MiB.
MAX_BLOCK_LOGITS = 2 ** 26
# The implementation asked for on a GPU where cuDNN takes the call: "cudnn" or "xla".
GPU_ATTENTION = "cudnn"


def attention_implementation(backend: str, dtype, head_dim: int, num_queries: int,
                             num_keys: int, num_blocks: int) -> str:
  """Which path `attention` takes: "cudnn" (fused, on a GPU), "blocked" (XLA, a block of
  queries at a time, off the GPU) or "xla". The cuDNN conditions are the subset of
  jax's own checks (jax._src.cudnn.fused_attention_stablehlo.check_is_flash_attention) that
  holds on every GPU generation, so that the fused call is never refused while tracing.
  Lengths must be even because jax (0.10, 0.11) passes an empty bias when there is none and
  then applies its with-bias rule to every call under differentiation (seen on an H200:
  "Unsupported sequence length Q 5, KV 5" for K = 5 slots without a mask)."""
  if backend == "gpu":
    fits_cudnn = (jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0
                  and head_dim <= 128 and num_queries % 2 == 0 and num_keys % 2 == 0)
    return "cudnn" if fits_cudnn and GPU_ATTENTION == "cudnn" else "xla"
  return "blocked" if num_blocks > 1 else "xla"


def _query_block_size(num_logits_per_query: int, num_queries: int, max_logits: int) -> int:
  """The largest divisor of num_queries whose block holds at most max_logits logits."""
  most = max(1, max_logits // max(num_logits_per_query, 1))
  return max(d for d in range(1, num_queries + 1) if num_queries % d == 0 and d <= most)


def _blocked_attention(query, key, value, mask, is_causal: bool, block: int):
  """jax.nn.dot_product_attention over [B, Q, H, D] queries, `block` queries at a time.

  Each block's logits and softmax are recomputed in the backward (jax.checkpoint), so only
  one block's [B, H, block, K] arrays are live; keys and values are shared by all blocks.
  """
  b, nq, h, d = query.shape
  nk = key.shape[1]
  num_blocks = nq // block
  q_blocks = query.reshape(b, num_blocks, block, h, d).swapaxes(0, 1)

  @jax.checkpoint
  def one_block(args):
    q_blk, start = args
    blk_mask = None
    if mask is not None:  # [1|B, 1|H, 1|Q, K]: this block's query rows.
      blk_mask = (mask if mask.shape[-2] == 1 else
                  jax.lax.dynamic_slice_in_dim(mask, start, block, axis=mask.ndim - 2))
    if is_causal:  # Query i attends keys j <= i (the fused kernel's is_causal).
      causal = (start + jnp.arange(block))[:, None] >= jnp.arange(nk)[None, :]
      blk_mask = causal[None, None] if blk_mask is None else blk_mask & causal
    return jax.nn.dot_product_attention(q_blk, key, value, mask=blk_mask)

  out = jax.lax.map(one_block, (q_blocks, jnp.arange(num_blocks) * block))
  return out.swapaxes(0, 1).reshape(b, nq, h, d)


def attention(query, key, value, mask=None, dtype=None, *, is_causal: bool = False,
              max_block_logits: Optional[int] = None):
  """A flax `attention_fn`: softmax(q k^T / sqrt(d)) v through jax.nn.dot_product_attention.

  query [..., q, heads, d], key and value [..., k, heads, d], `mask` (boolean or 0/1) broadcastable
  to [..., heads, q, k] (True: attend). Leading batch dims are folded into one (the fused
  kernel takes [B, T, N, H]). `is_causal` masks key positions after the query's without a
  mask array, which lets the fused kernel skip them. No attention dropout (none is used).
  On a GPU cuDNN's fused kernel runs where it applies; off the GPU, more than
  `max_block_logits` (default MAX_BLOCK_LOGITS) logits run in query blocks (module docstring).
  """
  batch_shape = query.shape[:-3]
  fold = lambda x: x.reshape((-1,) + x.shape[-3:])
  if mask is not None:
    mask = jnp.asarray(mask).astype(bool)  # flax masks may be float 0/1.
    mask_batch = mask.shape[:-3]
    if all(d == 1 for d in mask_batch):  # Shared by the whole batch (e.g. a causal mask).
      mask = mask.reshape((1,) + mask.shape[-3:])
    else:
      mask = fold(jnp.broadcast_to(mask, batch_shape + mask.shape[-3:]))
  dtype = dtype or query.dtype
  query, key, value = (fold(x).astype(dtype) for x in (query, key, value))
  b, nq, h, head_dim = query.shape
  max_logits = MAX_BLOCK_LOGITS if max_block_logits is None else max_block_logits
  block = _query_block_size(b * h * key.shape[1], nq, max_logits)
  path = attention_implementation(jax.default_backend(), dtype, head_dim, nq, key.shape[1],
                                  nq // block)
  if path == "blocked":
    out = _blocked_attention(query, key, value, mask, is_causal, block)
  else:
    out = jax.nn.dot_product_attention(query, key, value, mask=mask, is_causal=is_causal,
                                       implementation=path)
  return out.reshape(batch_shape + out.shape[-3:])


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


def _self_attention(x, mask, *, num_heads, dtype, decode, causal, ln_name, attn_name):
  """x + MHA(LN(x)), built inside the calling module's compact method under the given names."""
  h = nn.LayerNorm(dtype=jnp.float32, name=ln_name)(x)
  h = nn.MultiHeadDotProductAttention(
      num_heads=num_heads, dtype=dtype, decode=decode, name=attn_name,
      attention_fn=functools.partial(attention, is_causal=causal and not decode))(h, h, mask=mask)
  return x + h.astype(x.dtype)


def _cross_attention(x, context, mask, *, num_heads, dtype, attn_name, ln_q_name, ln_kv_name):
  """x + MHA(LN(x), LN(context)), built inside the calling module's compact method."""
  q = nn.LayerNorm(dtype=jnp.float32, name=ln_q_name)(x)
  kv = nn.LayerNorm(dtype=jnp.float32, name=ln_kv_name)(context)
  h = nn.MultiHeadDotProductAttention(
      num_heads=num_heads, dtype=dtype, name=attn_name, attention_fn=attention)(q, kv, mask=mask)
  return x + h.astype(x.dtype)


def _mlp_residual(x, mlp_ratio, dtype):
  h = nn.LayerNorm(dtype=jnp.float32, name="ln_mlp")(x)
  h = MLP(int(x.shape[-1] * mlp_ratio), dtype=dtype, name="mlp")(h)
  return x + h.astype(x.dtype)


class SelfAttentionBlock(nn.Module):
  """x + MHA(LN(x)) then x + MLP(LN(x)); `mask` is broadcastable to [..., heads, q, k].

  `causal`: each position attends to itself and earlier ones (no mask array needed). In
  `decode` mode the flax cache masks the not-yet-written positions instead.
  """

  num_heads: int
  mlp_ratio: float = 4.0
  dtype: jnp.dtype = jnp.float32
  decode: bool = False  # Key/value cache for autoregressive decoding (flax 'cache' collection).
  causal: bool = False

  @nn.compact
  def __call__(self, x, mask: Optional[jnp.ndarray] = None):
    x = _self_attention(x, mask, num_heads=self.num_heads, dtype=self.dtype, decode=self.decode,
                        causal=self.causal, ln_name="ln_attn", attn_name="attn")
    return _mlp_residual(x, self.mlp_ratio, self.dtype)


def _num_chunks(rows: int, chunks: int) -> int:
  """The smallest divisor of `rows` that is at least `chunks` (`rows` if none is)."""
  return next((d for d in range(max(chunks, 1), rows + 1) if rows % d == 0), rows)


def _chunked_remat(block_cls: Type[nn.Module], chunks: int) -> Callable[..., Callable]:
  """A factory like `block_cls(**attributes)` whose call runs the block on `chunks` slices
  of the leading (sequence) axis of its arguments one after another (`nn.scan`, parameters
  broadcast), each slice rematerialised inside the loop.

  Why a loop: a rematerialised block's recomputation depends only on its saved inputs, and
  XLA:CPU scheduled (or merged with the forward) the recomputations of every block long
  before their gradients were needed, so nn.remat alone kept all blocks' activations live
  (the LAM step at Table 4 size, batch 64: 17 GiB of IDM and 29 GiB of aggregator
  activations at the peak). Inside a scan the backward recomputes one slice per iteration,
  so one slice's activations are live. The blocks treat the leading axis as a batch
  (attention is within a sequence), so the result equals the unchunked block's.
  """
  base_call = block_cls.__call__

  def scan_body(self, carry, *args):
    return carry, base_call(self, *args)

  body_cls = type(block_cls.__name__, (block_cls,), {"__call__": scan_body})

  def build(**attributes):
    def call(*args):
      rows = args[0].shape[0]
      n = _num_chunks(rows, chunks)
      # Slice j holds rows j, j + n, j + 2n, ...: the leading axis keeps the batch's
      # sharding over the mesh's data axis, and every device works on every slice.
      scanned = nn.scan(nn.remat(body_cls), variable_broadcast="params",
                        split_rngs={"params": False}, in_axes=1, out_axes=1,
                        length=n)(**attributes)
      _, out = scanned(None, *(a.reshape((rows // n, n) + a.shape[1:]) for a in args))
      return out.reshape((rows,) + out.shape[2:])
    return call

  return build


def maybe_remat(block_cls: Type[nn.Module], remat: bool, chunks: int = 1):
  """`block_cls` (or a factory called like it), rematerialised if `remat`: the backward
  pass recomputes the block's activations, e.g. its [.., heads, q, k] attention weights,
  instead of keeping them. With `chunks` > 1 the block runs on that many slices of its
  leading axis in a loop, so only one slice's activations are recomputed and live at a
  time (`_chunked_remat`; 8 chunks: the Table 4 LAM step at batch 64 needs 15 GiB instead
  of 64 GiB on XLA:CPU, benchmarks/RESULTS.md). Parameter names and values are unchanged,
  so checkpoints are interchangeable. Call the block with positional arguments only, each
  with the same leading axis.
  """
  if remat and chunks > 1:
    return _chunked_remat(block_cls, chunks)
  return nn.remat(block_cls) if remat else block_cls


class CrossAttentionBlock(nn.Module):
  """x + MHA(LN(x), LN(context)) then x + MLP(LN(x)): queries x attend to `context`."""

  num_heads: int
  mlp_ratio: float = 4.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context, mask: Optional[jnp.ndarray] = None):
    x = _cross_attention(x, context, mask, num_heads=self.num_heads, dtype=self.dtype,
                         attn_name="attn", ln_q_name="ln_q", ln_kv_name="ln_kv")
    return _mlp_residual(x, self.mlp_ratio, self.dtype)


class DecoderBlock(nn.Module):
  """A transformer decoder layer: x + SelfMHA(LN(x)), x + MHA(LN(x), LN(context)), then
  x + MLP(LN(x)): self-attention (causal if `causal`) and cross-attention share one MLP."""

  num_heads: int
  mlp_ratio: float = 4.0
  dtype: jnp.dtype = jnp.float32
  decode: bool = False  # Key/value cache of the self-attention (flax 'cache' collection).
  causal: bool = False

  @nn.compact
  def __call__(self, x, context):
    x = _self_attention(x, None, num_heads=self.num_heads, dtype=self.dtype, decode=self.decode,
                        causal=self.causal, ln_name="ln_self", attn_name="self_attn")
    x = _cross_attention(x, context, None, num_heads=self.num_heads, dtype=self.dtype,
                         attn_name="cross_attn", ln_q_name="ln_q", ln_kv_name="ln_kv")
    return _mlp_residual(x, self.mlp_ratio, self.dtype)

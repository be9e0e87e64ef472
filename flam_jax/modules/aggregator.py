"""Aggregators: predicted slots s_hat_{t+1}^{1:K} -> next-frame tokenizer features (Sec 4.2, 5.4).

* `ClassificationAggregator` (the paper's choice): an autoregressive transformer
  over the N patches in raster order that predicts each patch's tokenizer
  codebook index c in [0, C), conditioned on earlier patches (causal
  self-attention) and on the slots (cross-attention):
    sigma^n = CrossAttention(query=z^{n-1}, key=[z^{1:n-1}, s_hat^{1:K}]),
    z^n = ExtractCode(argmax sigma^n),
  trained with Eq. 5 (cross-entropy over patches; we average it per patch, see
  `classification_loss`). Indices are split into hierarchical sub-tokens (Table 4:
  [32, 32] for C = 1024), predicted one after another: log p(c) = log p(s_0 | h) +
  log p(s_1 | h, s_0) + ...; there is never a C-way softmax.
* `RegressionAggregator` (Sec 5.4 ablation, later version): non-autoregressive,
  predicts the continuous features directly.

Both take an optional `anchor`: the frame the prediction starts from. With it the
aggregator predicts a change rather than a whole frame, the later version's residual
z_hat_{t+1} = z_t + Aggregator(s_hat_{t+1}): regression adds its output to the anchor
features; classification adds the anchor's token embedding at each patch, so copying
the start frame is one easy function away and the slots only need to carry what moves.

Sub-token convention: mixed radix with the FIRST sub-token most significant,
c = s_0 * (S_1 * ... * S_{m-1}) + ... + s_{m-1}; for [32, 32], c = 32 s_0 + s_1.
(The tokenizer's FSQ index uses its own, independent, radix order; only the
integer c matters here.)
"""

from typing import Sequence, Tuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flam_jax.modules.transformer import DecoderBlock
from flam_jax.modules.transformer import maybe_remat

_EMBED_INIT = nn.initializers.normal(stddev=0.02)


def _place_values(sizes: Sequence[int]) -> np.ndarray:
  """[S_1*...*S_{m-1}, ..., S_{m-1}, 1]: first sub-token most significant."""
  sizes = tuple(int(s) for s in sizes)
  return np.concatenate([np.cumprod(sizes[::-1])[::-1][1:], [1]]).astype(np.int32)


def indices_to_subtokens(indices: jnp.ndarray, sizes: Sequence[int]) -> jnp.ndarray:
  """indices[...] in [0, prod(sizes)) -> sub-tokens [..., len(sizes)], first most significant."""
  place = jnp.asarray(_place_values(sizes))
  return (indices[..., None].astype(jnp.int32) // place) % jnp.asarray(sizes, jnp.int32)


def subtokens_to_indices(subtokens: jnp.ndarray, sizes: Sequence[int]) -> jnp.ndarray:
  """Sub-tokens [..., len(sizes)] -> indices[...]; inverse of `indices_to_subtokens`."""
  place = jnp.asarray(_place_values(sizes))
  return jnp.sum(subtokens.astype(jnp.int32) * place, axis=-1)


def _patch_mean(loss_bn: jnp.ndarray, patch_weights_bn=None) -> jnp.ndarray:
  """Mean over patches [B, N] -> [B], weighted by `patch_weights_bn` if given."""
  if patch_weights_bn is None:
    return jnp.mean(loss_bn, axis=-1)
  chex.assert_equal_shape([loss_bn, patch_weights_bn])
  return jnp.sum(loss_bn * patch_weights_bn, axis=-1) / jnp.sum(patch_weights_bn, axis=-1)


def classification_loss(logits: Tuple[jnp.ndarray, ...], target_indices_bn: jnp.ndarray,
                        sizes: Sequence[int], patch_weights_bn=None) -> jnp.ndarray:
  """Eq. 5 per example, as a MEAN over the N patches -> [B] (nats per patch).

  -log p(c) = -sum_j log p(s_j | s_<j), so the per-patch loss is the sum of the
  sub-token cross-entropies (the logits of sub-token j were computed given the true
  s_<j, see `ClassificationAggregator`). The paper sums over patches; averaging keeps
  the loss weights of configs (KL, slot matching, reconstruction) meaningful at any N.
  patch_weights_bn (optional, positive): a weighted mean over patches instead.
  """
  chex.assert_rank(target_indices_bn, 2)
  sub_bns = indices_to_subtokens(target_indices_bn, sizes)
  total_bn = jnp.zeros(target_indices_bn.shape, jnp.float32)
  for j, logits_bns in enumerate(logits):  # Over sub-tokens (static, 2 in practice).
    log_p = jax.nn.log_softmax(logits_bns.astype(jnp.float32), axis=-1)
    total_bn = total_bn - jnp.take_along_axis(log_p, sub_bns[..., j:j + 1], axis=-1)[..., 0]
  return _patch_mean(total_bn, patch_weights_bn)


def logits_to_indices(logits: Tuple[jnp.ndarray, ...], sizes: Sequence[int]) -> jnp.ndarray:
  """Index of the argmax of each sub-token's logits, combined -> [...].

  With teacher-forced hierarchical logits (sub-token j given the true s_<j), a patch's
  index is right exactly when greedy decoding would get it right.
  """
  sub = jnp.stack([jnp.argmax(l, axis=-1) for l in logits], axis=-1)
  return subtokens_to_indices(sub, sizes)


def classification_accuracy(logits: Tuple[jnp.ndarray, ...], target_indices_bn: jnp.ndarray,
                            sizes: Sequence[int]) -> jnp.ndarray:
  """Fraction of patches whose full (greedy) index is right, per example -> [B]."""
  pred_bn = logits_to_indices(logits, sizes)
  return jnp.mean((pred_bn == target_indices_bn).astype(jnp.float32), axis=-1)


def _embed_subtokens(indices_bl: jnp.ndarray, sizes: Sequence[int], d_model: int,
                     prefix: str) -> jnp.ndarray:
  """emb(c) = sum_j Embed_j(s_j(c)), [B, L, D]: the input embedding of a token index."""
  sub_bls = indices_to_subtokens(indices_bl, sizes)
  x_bld = jnp.zeros(indices_bl.shape + (d_model,), jnp.float32)
  for j, size in enumerate(sizes):  # Over sub-tokens (static, 2 in practice).
    x_bld = x_bld + nn.Embed(size, d_model, embedding_init=_EMBED_INIT,
                             name=f"{prefix}_{j}")(sub_bls[..., j])
  return x_bld


class ClassificationAggregator(nn.Module):
  """Autoregressive index predictor over N patches, cross-attending to the slots.

  Position n's input is emb(c^{n-1}) + pos[n] (a learned start embedding at n = 0),
  plus emb_anchor(c_anchor^n) when an anchor frame is given. Each block is a
  transformer decoder layer (`DecoderBlock`): causal self-attention over patches,
  cross-attention to the (Dense-projected) slots, one MLP. Hierarchical heads:
  sub-token j is predicted from h + sum_{i<j} E_i(s_i), the true s_<j under teacher
  forcing and the greedy ones when decoding. Logits are a tuple, one float32 [B, N, S_j]
  array per sub-token.

  Use `__call__` for teacher-forced training (fully parallel) and `decode` for
  greedy generation (lax.scan over patches, optional key/value cache). With
  `parallel=True` the aggregator is not autoregressive: position n's input is
  pos[n] + emb_anchor(c_anchor^n), self-attention is bidirectional, and `decode` is a
  single pass (a one-step MaskGIT-style decoder; an option of ours, not the paper's).
  `loss` and `accuracy` need no parameters and work on an unbound module.
  """

  num_patches: int
  subtoken_sizes: Sequence[int]
  d_model: int
  num_blocks: int
  num_heads: int
  dtype: jnp.dtype = jnp.float32
  codebook_size: int = 0  # C; if > 0 it must equal prod(subtoken_sizes).
  mlp_ratio: float = 4.0
  remat: bool = False  # Teacher forcing: recompute block activations in the backward pass.
  remat_chunks: int = 1  # With remat: recompute a slice of the sequences at a time.
  # Teacher forcing: each previous-token input is replaced by the start embedding
  # ("unknown") with this probability ('dropout' rng), so the model cannot lean on the
  # true context more than greedy decoding will be able to (exposure bias).
  context_dropout: float = 0.0
  # Parallel decoding: every patch is predicted at once from the slots and the anchor
  # frame (bidirectional self-attention, no previous-token input), so there is no
  # teacher forcing to lean on (the motion must come from the slots, i.e. the actions)
  # and greedy generation is one pass with no exposure bias. Without an anchor every
  # token must come from the slots alone; the configs pair it with aggregator_residual.
  parallel: bool = False

  def _check_config(self):
    sizes = tuple(int(s) for s in self.subtoken_sizes)
    if not sizes or min(sizes) < 1:
      raise ValueError(f"subtoken_sizes must be positive integers, got {self.subtoken_sizes}")
    if self.codebook_size and int(np.prod(sizes)) != int(self.codebook_size):
      raise ValueError(
          f"prod(subtoken_sizes)={int(np.prod(sizes))} must equal the tokenizer codebook "
          f"size {self.codebook_size} (e.g. [32, 32] for 1024)")
    return sizes

  @nn.compact
  def _forward(self, slots_bkd: jnp.ndarray, prev_indices_bl: jnp.ndarray,
               positions_l: jnp.ndarray, anchor_indices_bl, target_sub_bls,
               decode: bool) -> Tuple[Tuple[jnp.ndarray, ...], jnp.ndarray]:
    """Core transformer on L positions -> (logits tuple of [B, L, S_j], sub-tokens [B, L, m]).

    prev index -1 means "start". anchor_indices_bl: the anchor frame's tokens at these
    positions, or None. target_sub_bls: the true sub-tokens (teacher forcing: the heads
    condition on them) or None (greedy: the heads condition on their own argmax).
    decode=False: L positions with a causal mask (teacher forcing).
    decode=True: the flax KV cache ('cache' collection) holds earlier positions;
    L = 1 per step and the attention masks out not-yet-written cache slots.
    """
    sizes = self._check_config()
    b, l = prev_indices_bl.shape
    slots_bkd = nn.Dense(self.d_model, dtype=self.dtype, name="slot_proj")(slots_bkd)
    slots_bkd = slots_bkd.astype(jnp.float32)

    if self.parallel:  # No previous-token input: position, anchor and slots only.
      x_bld = jnp.zeros((b, l, self.d_model), jnp.float32)
    else:
      x_bld = _embed_subtokens(jnp.maximum(prev_indices_bl, 0), sizes, self.d_model,
                               "subtoken_embed")
      start_d = self.param("start", _EMBED_INIT, (self.d_model,), jnp.float32)
      x_bld = jnp.where((prev_indices_bl < 0)[..., None], start_d, x_bld)
    pos_nd = self.param("pos_embed", _EMBED_INIT, (self.num_patches, self.d_model), jnp.float32)
    x_bld = x_bld + pos_nd[positions_l][None]
    if anchor_indices_bl is not None:
      x_bld = x_bld + _embed_subtokens(anchor_indices_bl, sizes, self.d_model, "anchor_embed")

    remat = self.remat and not decode  # Decoding takes no gradients.
    for i in range(self.num_blocks):  # Causal self-attention, cross-attention, one MLP.
      x_bld = maybe_remat(DecoderBlock, remat, self.remat_chunks)(
          num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dtype=self.dtype,
          decode=decode, causal=not self.parallel, name=f"block_{i}")(x_bld, slots_bkd)
    h_bld = nn.LayerNorm(dtype=jnp.float32, name="ln_out")(x_bld)
    logits, chosen = [], []
    for j, size in enumerate(sizes):  # Hierarchical heads (static, 2 in practice).
      logits_bls = nn.Dense(size, dtype=self.dtype, name=f"head_{j}")(h_bld).astype(jnp.float32)
      s_bl = (target_sub_bls[..., j] if target_sub_bls is not None
              else jnp.argmax(logits_bls, axis=-1).astype(jnp.int32))
      logits.append(logits_bls)
      chosen.append(s_bl)
      if j + 1 < len(sizes):
        h_bld = h_bld + nn.Embed(size, self.d_model, embedding_init=_EMBED_INIT,
                                 name=f"head_condition_{j}")(s_bl)
    return tuple(logits), jnp.stack(chosen, axis=-1)

  def __call__(self, slots_bkd: jnp.ndarray, target_indices_bn: jnp.ndarray,
               anchor_indices_bn=None, deterministic: bool = True) -> Tuple[jnp.ndarray, ...]:
    """Teacher forcing: logits for all N patches in parallel, tuple of [B, N, S_j]."""
    chex.assert_rank([slots_bkd, target_indices_bn], [3, 2])
    b, n = target_indices_bn.shape
    if n != self.num_patches:
      raise ValueError(f"expected {self.num_patches} target patches, got {n}")
    if anchor_indices_bn is not None:
      chex.assert_shape(anchor_indices_bn, (b, n))
    sizes = self._check_config()
    prev_bn = jnp.concatenate(
        [jnp.full((b, 1), -1, jnp.int32), target_indices_bn[:, :-1].astype(jnp.int32)], axis=1)
    if self.context_dropout > 0.0 and not deterministic and not self.parallel:
      dropped_bn = jax.random.bernoulli(self.make_rng("dropout"), self.context_dropout, (b, n))
      prev_bn = jnp.where(dropped_bn, -1, prev_bn)
    logits, _ = self._forward(slots_bkd, prev_bn, jnp.arange(n), anchor_indices_bn,
                              indices_to_subtokens(target_indices_bn, sizes), decode=False)
    chex.assert_shape(list(logits), [(b, n, s) for s in sizes])
    return logits

  def decode(self, slots_bkd: jnp.ndarray, anchor_indices_bn=None, *,
             use_cache: bool = True) -> Tuple[jnp.ndarray, Tuple[jnp.ndarray, ...]]:
    """Greedy autoregressive decoding -> (indices [B, N] int32, logits tuple of [B, N, S_j]).

    One `lax.scan` over the N patches. With use_cache=True each step feeds one
    token and reuses a flax key/value cache; with use_cache=False each step
    re-runs the full causal transformer on a fixed [B, N] buffer (O(N^2) per
    step; a reference for the cache and for benchmarks).

    The cache lives entirely inside this method (a nested functional apply on
    this module's own params), so callers need no mutable collections:
      indices, logits = agg.apply(variables, slots, method=agg.decode)
    """
    chex.assert_rank(slots_bkd, 3)
    sizes = self._check_config()
    b, n = slots_bkd.shape[0], self.num_patches
    if self.is_initializing():  # Create the params if `init` was called with this method.
      self(slots_bkd, jnp.zeros((b, n), jnp.int32), anchor_indices_bn)
    if self.parallel:  # One bidirectional pass; the heads condition on their own argmax.
      logits, sub_bnm = self._forward(slots_bkd, jnp.zeros((b, n), jnp.int32), jnp.arange(n),
                                      anchor_indices_bn, None, decode=False)
      return subtokens_to_indices(sub_bnm, sizes).astype(jnp.int32), logits
    params = self.variables["params"]
    model = self.clone(parent=None, name=None)
    anchor_nb = None if anchor_indices_bn is None else jnp.transpose(anchor_indices_bn)

    def forward(variables, prev_bl, positions_l, anchor_bl, decode):
      return model.apply(variables, slots_bkd, prev_bl, positions_l, anchor_bl, None, decode,
                         method=ClassificationAggregator._forward,
                         mutable=["cache"] if decode else False)

    if use_cache:
      # Cache shapes from an abstract full-length init call (no FLOPs), then zeros.
      cache_shapes = jax.eval_shape(
          lambda: forward({"params": params}, jnp.zeros((b, n), jnp.int32), jnp.arange(n),
                          anchor_indices_bn, True)[1])["cache"]
      cache0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes)

      def step(carry, pos_and_anchor):
        pos, anchor_b = pos_and_anchor
        cache, prev_b = carry
        (logits, sub_b1m), new_vars = forward(
            {"params": params, "cache": cache}, prev_b[:, None], pos[None],
            None if anchor_b is None else anchor_b[:, None], True)
        logits = tuple(l[:, 0] for l in logits)  # [B, S_j]
        idx_b = subtokens_to_indices(sub_b1m[:, 0], sizes)
        return (new_vars["cache"], idx_b), (idx_b, logits)

      carry0 = (cache0, jnp.full((b,), -1, jnp.int32))
    else:

      def step(buf_bn, pos_and_anchor):
        pos, _ = pos_and_anchor
        prev_bn = jnp.concatenate([jnp.full((b, 1), -1, jnp.int32), buf_bn[:, :-1]], axis=1)
        all_logits, all_sub_bnm = forward({"params": params}, prev_bn, jnp.arange(n),
                                          anchor_indices_bn, False)
        logits = tuple(jax.lax.dynamic_index_in_dim(l, pos, axis=1, keepdims=False)
                       for l in all_logits)  # [B, S_j]
        sub_bm = jax.lax.dynamic_index_in_dim(all_sub_bnm, pos, axis=1, keepdims=False)
        idx_b = subtokens_to_indices(sub_bm, sizes)
        buf_bn = jax.lax.dynamic_update_index_in_dim(buf_bn, idx_b, pos, axis=1)
        return buf_bn, (idx_b, logits)

      carry0 = jnp.zeros((b, n), jnp.int32)

    _, (idx_nb, logits_nbs) = jax.lax.scan(step, carry0, (jnp.arange(n), anchor_nb))
    indices_bn = jnp.transpose(idx_nb).astype(jnp.int32)
    logits = tuple(jnp.swapaxes(l, 0, 1) for l in logits_nbs)
    chex.assert_shape(indices_bn, (b, n))
    return indices_bn, logits

  @nn.nowrap
  def loss(self, logits: Tuple[jnp.ndarray, ...], target_indices_bn: jnp.ndarray) -> jnp.ndarray:
    """Eq. 5 per example, [B]: sub-token cross-entropies summed, averaged over patches."""
    return classification_loss(logits, target_indices_bn, self._check_config())

  @nn.nowrap
  def accuracy(self, logits: Tuple[jnp.ndarray, ...],
               target_indices_bn: jnp.ndarray) -> jnp.ndarray:
    """Fraction of patches whose full greedy index equals the target, [B]."""
    return classification_accuracy(logits, target_indices_bn, self._check_config())


class RegressionAggregator(nn.Module):
  """Non-autoregressive feature regressor (Sec 5.4 "regression mode", later version).

  N patch queries (one shared learned query + a learned positional embedding per
  patch) go through decoder layers (self-attention over patches, cross-attention to
  the slots, one MLP), then Dense to feature_dim: [B, K, D_s] -> [B, N, feature_dim].
  """

  num_patches: int
  feature_dim: int
  d_model: int
  num_blocks: int
  num_heads: int
  dtype: jnp.dtype = jnp.float32
  mlp_ratio: float = 4.0
  remat: bool = False  # Recompute block activations in the backward pass (memory).
  remat_chunks: int = 1  # With remat: recompute a slice of the sequences at a time.

  @nn.compact
  def __call__(self, slots_bkd: jnp.ndarray, anchor_bnf=None) -> jnp.ndarray:
    """[B, K, D_s] (+ anchor features [B, N, F]) -> features [B, N, F].

    With an anchor, the queries also see Dense(anchor) and the output is
    anchor + head(...): the later version's residual z_hat_{t+1} = z_t + Aggregator(.).
    """
    chex.assert_rank(slots_bkd, 3)
    b, n = slots_bkd.shape[0], self.num_patches
    slots_bkd = nn.Dense(self.d_model, dtype=self.dtype, name="slot_proj")(slots_bkd)
    slots_bkd = slots_bkd.astype(jnp.float32)
    query_d = self.param("query", _EMBED_INIT, (self.d_model,), jnp.float32)
    pos_nd = self.param("pos_embed", _EMBED_INIT, (n, self.d_model), jnp.float32)
    x_bnd = jnp.broadcast_to(query_d + pos_nd, (b, n, self.d_model))
    if anchor_bnf is not None:
      chex.assert_shape(anchor_bnf, (b, n, self.feature_dim))
      x_bnd = x_bnd + nn.Dense(self.d_model, dtype=self.dtype, name="anchor_proj")(
          anchor_bnf).astype(jnp.float32)
    for i in range(self.num_blocks):  # Self-attention, cross-attention, one MLP.
      x_bnd = maybe_remat(DecoderBlock, self.remat, self.remat_chunks)(
          num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dtype=self.dtype,
          name=f"block_{i}")(x_bnd, slots_bkd)
    h_bnd = nn.LayerNorm(dtype=jnp.float32, name="ln_out")(x_bnd)
    # With an anchor the head starts at zero: the untrained model predicts "no change".
    head_init = (nn.initializers.zeros if anchor_bnf is not None
                 else nn.initializers.lecun_normal())  # nn.Dense's default.
    out_bnf = nn.Dense(self.feature_dim, dtype=self.dtype, kernel_init=head_init,
                       name="head")(h_bnd)
    out_bnf = out_bnf.astype(jnp.float32)
    if anchor_bnf is not None:
      out_bnf = anchor_bnf.astype(jnp.float32) + out_bnf
    chex.assert_shape(out_bnf, (b, n, self.feature_dim))
    return out_bnf

  @nn.nowrap
  def loss(self, pred_bnf: jnp.ndarray, target_bnf: jnp.ndarray) -> jnp.ndarray:
    """Squared error, MEAN over patches and channels -> [B]."""
    return regression_loss(pred_bnf, target_bnf)


def regression_loss(pred_bnf: jnp.ndarray, target_bnf: jnp.ndarray,
                    patch_weights_bn=None) -> jnp.ndarray:
  """mean_n mean_c (pred - target)^2 -> [B] (per-element, like the per-patch cross-entropy);
  patch_weights_bn (optional, positive): a weighted mean over patches instead."""
  chex.assert_equal_shape([pred_bnf, target_bnf])
  chex.assert_rank(pred_bnf, 3)
  err = jnp.square(pred_bnf.astype(jnp.float32) - target_bnf.astype(jnp.float32))
  return _patch_mean(jnp.mean(err, axis=-1), patch_weights_bn)

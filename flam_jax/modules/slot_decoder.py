"""Spatial-broadcast feature decoder with per-slot alpha masks (DINOSAUR, Seitzer et al. 2023).

An auxiliary of the factorizer: each slot s^k is broadcast to the N patches, added to a
position embedding of the patch (a free vector per patch as in DINOSAUR, or Slot
Attention's Dense of the grid coordinates: `position_embedding`) and decoded by a shared
MLP into a feature vector and an alpha logit; a softmax over the K slots turns the logits
into masks, and the frame's tokenizer features are reconstructed as z_hat^n = sum_k
alpha_k^n f_k^n. To explain a patch, a slot must hold its position and content, and the
masks make slots compete for patches, so slots bind to objects (FLAM's prediction loss
alone rewards binding only through what moves, and on Multigrid one slot took the whole
frame).

Dimension key: B batch (frames), K slots, N patches, D slot width, F feature width.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from flam_jax.modules.slot_attention import patch_position_embedding


class BroadcastMLP(nn.Module):
  """transformer.MLP(s^k + p^n) for every slot k and patch n, [B, K, D] and [N, D] ->
  [B, K, N, D], without forming the sum: the first layer is linear, fc1(s + p) = fc1(s) +
  W p, so it runs on B*K + N rows instead of B*K*N (the decoder's costliest matmul) and the
  two are added before the GELU. Same parameters as transformer.MLP."""

  hidden_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, slots_bkd: jnp.ndarray, pos_nd: jnp.ndarray) -> jnp.ndarray:
    fc1 = nn.Dense(self.hidden_dim, dtype=self.dtype, name="fc1")
    hidden_bkh = fc1(slots_bkd)
    kernel_dh = fc1.variables["params"]["kernel"].astype(self.dtype)
    hidden_nh = jnp.dot(pos_nd.astype(self.dtype), kernel_dh)
    hidden_bknh = nn.gelu(hidden_bkh[:, :, None, :] + hidden_nh)
    return nn.Dense(slots_bkd.shape[-1], dtype=self.dtype, name="fc2")(hidden_bknh)


class SpatialBroadcastDecoder(nn.Module):
  """slots [B, K, D] -> (features [B, N, F], alpha masks [B, K, N] summing to 1 over K)."""

  num_patches: int
  feature_dim: int
  hidden_dim: int = 0  # 0: 2 * D.
  position_embedding: str = "learned"  # or "grid" (slot_attention.patch_position_embedding).
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, slots_bkd: jnp.ndarray):
    chex.assert_rank(slots_bkd, 3)
    b, k, d = slots_bkd.shape
    pos_nd = patch_position_embedding(self, self.position_embedding, self.num_patches, d)
    x_bknd = nn.gelu(BroadcastMLP(self.hidden_dim or 2 * d, dtype=self.dtype, name="mlp")(
        slots_bkd.astype(jnp.float32), pos_nd))
    out_bknf = nn.Dense(self.feature_dim + 1, dtype=self.dtype, name="out")(x_bknd)
    out_bknf = out_bknf.astype(jnp.float32)
    alpha_bkn = jax.nn.softmax(out_bknf[..., -1], axis=1)
    features_bnf = jnp.einsum("bkn,bknf->bnf", alpha_bkn, out_bknf[..., :-1])
    chex.assert_shape(features_bnf, (b, self.num_patches, self.feature_dim))
    return features_bnf, alpha_bkn

"""Genie-style spatio-temporal inverse and forward dynamics models (FLAM Sec 4.2).

One IDM and one FDM are shared by all entities. An "entity" is a slot for FLAM
(K slots) or a patch token for the monolithic LAM baseline (K = N patches); the
code is the same. There is no positional embedding over entities, so both models
are permutation-equivariant over entities: the factorisation must come from the
slots, not from an ordering.

Each block is
  * spatial: self-attention across the K entities of frame t (interactions,
    "a person in a car moves because of the car"), then
  * temporal: per-entity cross-attention over a length-2 sequence. Entities are
    folded into the batch by giving the attention an extra batch axis
    ([B, K, 1, D] queries against [B, K, 2, D] keys), so there is no loop over K.
"""


import chex
import flax.linen as nn
import jax.numpy as jnp

from flam_jax.modules.transformer import CrossAttentionBlock
from flam_jax.modules.transformer import SelfAttentionBlock
from flam_jax.modules.transformer import maybe_remat


def _temporal_context(first_bkd: jnp.ndarray, second_bkd: jnp.ndarray) -> jnp.ndarray:
  """Stacks two per-entity tokens into a length-2 sequence: [B, K, 2, D]."""
  return jnp.stack([first_bkd, second_bkd.astype(first_bkd.dtype)], axis=-2)


class InverseDynamics(nn.Module):
  """IDM, Eq. 3: a_t^i = IDM(s_t^{1:K}, s_{t+1}^i), before the action bottleneck.

  Per block: s_t <- SelfAttention(s_t) over entities; then the query stream
  q^i (initialised to s_{t+1}^i) <- CrossAttention(query=q^i, key=[s_t^i, q^i]).
  Returns the final (LayerNormed) query stream, one feature vector per entity,
  which the bottleneck (latent_action.py) turns into a latent action.
  """

  num_blocks: int
  num_heads: int
  dtype: jnp.dtype = jnp.float32
  mlp_ratio: float = 4.0
  remat: bool = False  # Recompute block activations in the backward pass (memory).
  remat_chunks: int = 1  # With remat: recompute a slice of the batch at a time (transformer.maybe_remat).

  @nn.compact
  def __call__(self, slots_t_bkd: jnp.ndarray, slots_tp1_bkd: jnp.ndarray) -> jnp.ndarray:
    chex.assert_rank(slots_t_bkd, 3)
    chex.assert_equal_shape([slots_t_bkd, slots_tp1_bkd])
    x_bkd = slots_t_bkd  # Spatial stream, frame t.
    q_bkd = slots_tp1_bkd  # Query stream, frame t+1.
    for i in range(self.num_blocks):
      x_bkd = maybe_remat(SelfAttentionBlock, self.remat, self.remat_chunks)(
          num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dtype=self.dtype,
          name=f"spatial_{i}")(x_bkd)
      context_bk2d = _temporal_context(x_bkd, q_bkd)
      q_bk1d = maybe_remat(CrossAttentionBlock, self.remat, self.remat_chunks)(
          num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dtype=self.dtype,
          name=f"temporal_{i}")(q_bkd[:, :, None, :], context_bk2d)
      q_bkd = q_bk1d[:, :, 0, :]
    out_bkd = nn.LayerNorm(dtype=jnp.float32, name="ln_out")(q_bkd)
    chex.assert_shape(out_bkd, slots_t_bkd.shape)
    return out_bkd


class ForwardDynamics(nn.Module):
  """FDM, Eq. 4: s_hat_{t+1}^i = FDM(s_t^{1:K}, a_t^i), predicted as a residual.

  The action is embedded with a Dense to D. Per block: (with `additive_actions`,
  x^i <- x^i + Dense_b(a_t^i) first, so the action enters every entity's stream and
  cannot be ignored by an attention that looks only at x^i); x <- SelfAttention(x)
  over entities; x^i <- CrossAttention(query=x^i, key=[x^i, emb(a_t^i)]). Output
  s_hat_{t+1} = s_t + Dense(LN(x)).

  `actions_bka` may be [B, K, A] (one action per entity, FLAM) or [B, 1, A] (one
  scene-level action broadcast to all entities: monolithic LAM, WM baseline).
  """

  num_blocks: int
  num_heads: int
  dtype: jnp.dtype = jnp.float32
  mlp_ratio: float = 4.0
  remat: bool = False  # Recompute block activations in the backward pass (memory).
  remat_chunks: int = 1  # With remat: recompute a slice of the batch at a time (transformer.maybe_remat).
  additive_actions: bool = False
  # Zero-initialised action embeddings (as adaLN-zero / ControlNet's zero convolutions):
  # at the start the actions change nothing, so the FDM has no reason to push the IDM's
  # still uninformative codes towards a constant (the collapse of FSQ latent actions);
  # the embeddings grow only along what the codes say about the next frame. With
  # Gaussian actions, whose KL pulls them towards uninformative noise, a random init
  # lets the gradient reach the IDM from the first step (quickstart, flam_v2: Delta
  # PSNR_1 0.47 dB against 0.13 with the zero init; experiments/README.md).
  zero_init_actions: bool = True

  @nn.compact
  def __call__(self, slots_t_bkd: jnp.ndarray, actions_bka: jnp.ndarray) -> jnp.ndarray:
    chex.assert_rank([slots_t_bkd, actions_bka], 3)
    b, k, d = slots_t_bkd.shape
    if actions_bka.shape[0] != b or actions_bka.shape[1] not in (1, k):
      raise ValueError(
          f"actions must be [B, K, A] or [B, 1, A] for slots {slots_t_bkd.shape}, "
          f"got {actions_bka.shape}")
    action_init = (nn.initializers.zeros if self.zero_init_actions
                   else nn.initializers.lecun_normal())  # nn.Dense's default.
    act_bkd = nn.Dense(d, dtype=self.dtype, kernel_init=action_init,
                       name="action_embed")(actions_bka)
    act_bkd = jnp.broadcast_to(act_bkd, (b, k, d)).astype(slots_t_bkd.dtype)
    x_bkd = slots_t_bkd
    for i in range(self.num_blocks):
      if self.additive_actions:
        x_bkd = x_bkd + nn.Dense(d, dtype=self.dtype, kernel_init=action_init,
                                 name=f"action_add_{i}")(
            actions_bka).astype(x_bkd.dtype)
      x_bkd = maybe_remat(SelfAttentionBlock, self.remat, self.remat_chunks)(
          num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dtype=self.dtype,
          name=f"spatial_{i}")(x_bkd)
      context_bk2d = _temporal_context(x_bkd, act_bkd)
      x_bk1d = maybe_remat(CrossAttentionBlock, self.remat, self.remat_chunks)(
          num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dtype=self.dtype,
          name=f"temporal_{i}")(x_bkd[:, :, None, :], context_bk2d)
      x_bkd = x_bk1d[:, :, 0, :]
    h_bkd = nn.LayerNorm(dtype=jnp.float32, name="ln_out")(x_bkd)
    delta_bkd = nn.Dense(d, dtype=self.dtype, name="out")(h_bkd)
    next_bkd = slots_t_bkd + delta_bkd.astype(slots_t_bkd.dtype)
    chex.assert_shape(next_bkd, (b, k, d))
    return next_bkd


class SceneActionPool(nn.Module):
  """Pools per-entity action features into ONE scene-level feature, [B, K, D] -> [B, 1, D].

  For the monolithic LAM baseline (one latent action for the whole scene, Sec 5.2):
  a single learned query cross-attends to all K entity features (a
  CrossAttentionBlock). Attention pooling with no positional information is
  permutation-invariant over entities.
  """

  num_heads: int
  dtype: jnp.dtype = jnp.float32
  mlp_ratio: float = 4.0

  @nn.compact
  def __call__(self, action_features_bkd: jnp.ndarray) -> jnp.ndarray:
    chex.assert_rank(action_features_bkd, 3)
    b, _, d = action_features_bkd.shape
    query_d = self.param("query", nn.initializers.normal(stddev=0.02), (d,), jnp.float32)
    query_b1d = jnp.broadcast_to(query_d.astype(action_features_bkd.dtype), (b, 1, d))
    pooled_b1d = CrossAttentionBlock(
        num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dtype=self.dtype,
        name="pool")(query_b1d, action_features_bkd)
    pooled_b1d = nn.LayerNorm(dtype=jnp.float32, name="ln_out")(pooled_b1d)
    chex.assert_shape(pooled_b1d, (b, 1, d))
    return pooled_b1d


"""Slot Attention and the FLAM factorizer (Sec 4.2, Eq. 2; Sec 5.5; Appendix E).

`SlotAttention` is Locatello et al. (2020): K slots compete (softmax over slots)
for N input tokens for a few iterations, each a GRU update plus a residual MLP.

`Factorizer` turns the quantized tokenizer features of a clip, [B, T, N, Dz],
into K slots per frame, s_t = SlotAttention(z_{q,t}) (Eq. 2). Frame 0 starts
from learned slot embeddings (SAVi), or from slots sampled from one learned Gaussian
shared by all K (Locatello et al.; `slot_init="sampled"`); with `recursive_init` (the
paper's default, Sec 5.5 and Appendix E) frame t > 0 starts from frame t-1's final
slots, which gives the slots a consistent identity over time. With `temporal_attention` (the later
version of the paper) a causal self-attention block over time then mixes each
slot's history.

Precision: matmuls run in `dtype` (e.g. bfloat16); parameters, LayerNorms,
softmaxes and the slot state itself (GRU carry and residual stream) stay
float32, so a bf16 run cannot drift over iterations or frames.
"""

from typing import Optional, Tuple

import chex
import jax
import jax.numpy as jnp
import flax.linen as nn

from flam_jax.modules.transformer import MLP, SelfAttentionBlock

SLOT_INITS = ("learned", "sampled")  # Frame 0's slots; see Factorizer.slot_init.
POSITION_EMBEDDINGS = ("learned", "grid")  # See Factorizer.position_embedding.


def patch_grid(num_patches: int) -> jnp.ndarray:
  """[N, 4] coordinates (y, x, 1 - y, 1 - x) in [0, 1] of a square grid of N patches,
  row-major like the tokenizer's tokens (Locatello et al.'s `build_grid`)."""
  side = int(round(num_patches**0.5))
  if side * side != num_patches:
    raise ValueError(f"position_embedding='grid' needs a square token grid; got "
                     f"N={num_patches} patches (use position_embedding='learned')")
  ramp = jnp.linspace(0.0, 1.0, side)
  y_n, x_n = [a.reshape(-1) for a in jnp.meshgrid(ramp, ramp, indexing="ij")]
  return jnp.stack([y_n, x_n, 1.0 - y_n, 1.0 - x_n], axis=-1)


def patch_position_embedding(module: nn.Module, kind: str, num_patches: int,
                             dim: int) -> jnp.ndarray:
  """[N, dim] position vector of each patch, with its parameters in `module`.

  "learned": one free unit-scale vector per patch (param `pos_embedding`); "grid": a Dense
  of the patch's grid coordinates (`patch_grid`, submodule `pos_grid`), Slot Attention's
  soft position embedding, under which neighbouring patches start with similar vectors.
  Call it from `module`'s `nn.compact` method (the Dense is made in that scope).
  """
  if kind == "learned":
    return module.param("pos_embedding", nn.initializers.normal(1.0), (num_patches, dim),
                        jnp.float32)
  if kind == "grid":
    return nn.Dense(dim, dtype=jnp.float32, name="pos_grid")(patch_grid(num_patches))
  raise ValueError(f"unknown position_embedding {kind!r}; use one of {POSITION_EMBEDDINGS}")


class SlotAttention(nn.Module):
  """Iterative slot attention (Locatello et al., 2020, Alg. 1).

  Per iteration: q = W_q LN(slots); attn = softmax_K(q k^T / sqrt(D)) over SLOTS
  (so slots compete for tokens); updates = attention-weighted MEAN of v over
  tokens (weights + epsilon, renormalised over N); slots = GRU(slots, updates);
  slots += MLP(LN(slots)). All iterations share one set of parameters.

  Attributes:
    num_iterations: Number of attention iterations (unrolled, shared weights).
    mlp_dim: Hidden width of the residual MLP; None means 2 * slot dim.
    epsilon: Added to the attention before the weighted mean, for stability.
    dtype: Compute dtype of the matmuls.
  """

  num_iterations: int = 3
  mlp_dim: Optional[int] = None
  epsilon: float = 1e-8
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs_bnd: jnp.ndarray, slots_bkd: jnp.ndarray,
               num_iterations: Optional[int] = None) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """Refines `slots_bkd` [B, K, D] against `inputs_bnd` [B, N, Din].

    `num_iterations` overrides the attribute for this call (same parameters).

    Returns:
      (slots_bkd [B, K, D] float32, attn_bkn [B, K, N] float32): the refined
      slots and the last iteration's attention, which sums to 1 over K.
    """
    chex.assert_rank([inputs_bnd, slots_bkd], 3)
    chex.assert_equal_shape_prefix([inputs_bnd, slots_bkd], 1)
    batch, num_slots, slot_dim = slots_bkd.shape
    num_inputs = inputs_bnd.shape[1]
    mlp_dim = self.mlp_dim or 2 * slot_dim
    dense = lambda name: nn.Dense(
        slot_dim, use_bias=False, dtype=self.dtype, name=name)

    inputs_bnd = nn.LayerNorm(dtype=jnp.float32, name="ln_inputs")(inputs_bnd)
    k_bnd = dense("key")(inputs_bnd)  # [B, N, D]
    v_bnd = dense("value")(inputs_bnd)  # [B, N, D]

    # Shared submodules, reused by every (unrolled) iteration.
    ln_slots = nn.LayerNorm(dtype=jnp.float32, name="ln_slots")
    query = dense("query")
    gru = nn.GRUCell(slot_dim, dtype=self.dtype, name="gru")
    ln_mlp = nn.LayerNorm(dtype=jnp.float32, name="ln_mlp")
    mlp = MLP(mlp_dim, dtype=self.dtype, name="mlp")

    slots_bkd = slots_bkd.astype(jnp.float32)
    attn_bkn = None
    iterations = self.num_iterations if num_iterations is None else num_iterations
    for _ in range(iterations):
      q_bkd = query(ln_slots(slots_bkd)) * slot_dim**-0.5  # [B, K, D]
      logits_bkn = jnp.einsum("bkd,bnd->bkn", q_bkd, k_bnd).astype(jnp.float32)
      attn_bkn = jax.nn.softmax(logits_bkn, axis=1)  # Competition over slots.
      weights_bkn = attn_bkn + self.epsilon
      weights_bkn = weights_bkn / jnp.sum(weights_bkn, axis=-1, keepdims=True)
      updates_bkd = jnp.einsum(
          "bkn,bnd->bkd", weights_bkn.astype(self.dtype), v_bnd)
      slots_bkd, _ = gru(slots_bkd, updates_bkd)
      slots_bkd = slots_bkd.astype(jnp.float32)
      slots_bkd = slots_bkd + mlp(ln_mlp(slots_bkd)).astype(jnp.float32)

    if attn_bkn is None:  # 0 iterations: report the initial attention.
      q_bkd = query(ln_slots(slots_bkd)) * slot_dim**-0.5
      attn_bkn = jax.nn.softmax(
          jnp.einsum("bkd,bnd->bkn", q_bkd, k_bnd).astype(jnp.float32), axis=1)
    chex.assert_shape(slots_bkd, (batch, num_slots, slot_dim))
    chex.assert_shape(attn_bkn, (batch, num_slots, num_inputs))
    return slots_bkd, attn_bkn


def _slot_attention_step(module, carry_bkd, inputs_bnd):
  """One frame of the recursion: frame t-1's slots initialise frame t."""
  slots_bkd, attn_bkn = module(inputs_bnd, carry_bkd)
  return slots_bkd, (slots_bkd, attn_bkn)


class Factorizer(nn.Module):
  """Per-frame slot attention over tokenizer features (Eq. 2, Appendix E).

  Features are projected to `slot_dim`, given a positional embedding over the N
  patches (`position_embedding`), and passed through LN + MLP (as in Slot Attention / SAVi)
  before slot attention. Initial slots are learned embeddings [K, slot_dim]
  (deterministic, so they also break slot symmetry), or draws from a learned Gaussian
  (`slot_init`). The parameter tree is the same for every `recursive_init` /
  `temporal_attention` setting apart from the extra `temporal_attention` block.

  Attributes:
    num_slots: K, the number of factors.
    slot_dim: d_s, the width of a slot.
    num_iterations: Slot attention iterations per frame.
    init_iterations: Iterations for a frame whose slots start from the initial slots
      (frame 0 with `recursive_init`, every frame without); None means `num_iterations`.
      A frame carried over from t-1 starts near its answer, a frame from the initial
      slots does not, most of all with `slot_init="sampled"`. The iterations share
      their parameters, so the count can also be raised at evaluation only
      (`eval.init_slot_iterations`), as Locatello et al. do at test time.
    mlp_dim: Hidden width of the input and slot-attention MLPs; None means
      2 * slot_dim. (The temporal block uses the transformer's 4x MLP.)
    recursive_init: Frame t > 0 starts from frame t-1's final slots (paper
      default) instead of the learned embeddings.
    slot_init: "learned": K learned embeddings [K, slot_dim] (deterministic; each slot
      can specialise, e.g. to a region). "sampled": K draws from N(mu, sigma^2) with mu
      and sigma learned and shared by the slots (Locatello et al., 2020), so slots are
      exchangeable and compete for objects by content. The noise comes from the "slots"
      rng stream when one is given (training), else from a fixed key (evaluation is
      deterministic). Without `recursive_init` every frame of a clip starts from the
      clip's one draw.
    temporal_attention: Apply a causal self-attention block over time to each
      slot after slot attention (later version of the paper).
    position_embedding: How a patch's position enters its features. "learned": one free
      [N, slot_dim] vector per patch (unit scale), so neighbouring patches start unrelated.
      "grid": a Dense map of the patch's grid coordinates (the soft position embedding of
      Slot Attention and SAVi), so neighbouring patches start with similar keys and a slot
      that follows an object from frame t-1 to t meets a nearby position.
    num_heads: Heads of the temporal attention block.
    dtype: Compute dtype of the matmuls.
  """

  num_slots: int
  slot_dim: int
  num_iterations: int = 3
  init_iterations: Optional[int] = None
  mlp_dim: Optional[int] = None
  recursive_init: bool = True
  slot_init: str = "learned"
  temporal_attention: bool = False
  position_embedding: str = "learned"
  num_heads: int = 4
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, features_btnd: jnp.ndarray
              ) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """Factorizes `features_btnd` [B, T, N, Dz] into slots.

    Returns:
      (slots_btkd [B, T, K, slot_dim] float32, masks_btkn [B, T, K, N] float32):
      the slots of every frame and their last-iteration attention masks (each
      patch's mask sums to 1 over K).
    """
    chex.assert_rank(features_btnd, 4)
    batch, num_frames, num_patches, _ = features_btnd.shape
    mlp_dim = self.mlp_dim or 2 * self.slot_dim

    # Token encoding, applied to all frames at once.
    x_btnd = nn.Dense(self.slot_dim, dtype=self.dtype, name="input_proj")(
        features_btnd)
    # Unit-scale positions: slots must know WHERE a patch is, not only what it shows (two
    # frames of the same agents differ only in positions). At 0.02, the usual scale for
    # transformer tokens, the slots of different videos were nearly identical at init and
    # the latent actions collapsed to codes that depended on t and the slot only.
    pos_nd = patch_position_embedding(self, self.position_embedding, num_patches, self.slot_dim)
    x_btnd = x_btnd.astype(jnp.float32) + pos_nd
    x_btnd = MLP(mlp_dim, dtype=self.dtype, name="input_mlp")(
        nn.LayerNorm(dtype=jnp.float32, name="ln_input")(x_btnd))
    x_btnd = x_btnd.astype(jnp.float32)

    if self.slot_init == "learned":
      # Learned initial slots (SAVi's ParamStateInit, normal init), shared over B.
      init_kd = self.param("slots_init", nn.initializers.normal(1.0),
                           (self.num_slots, self.slot_dim), jnp.float32)
      init_bkd = jnp.broadcast_to(init_kd, (batch,) + init_kd.shape)
    elif self.slot_init == "sampled":
      mean_d = self.param("slots_init_mean", nn.initializers.normal(1.0),
                          (self.slot_dim,), jnp.float32)
      log_scale_d = self.param("slots_init_log_scale", nn.initializers.zeros,
                               (self.slot_dim,), jnp.float32)
      rng = (self.make_rng("slots") if self.has_rng("slots")
             else jax.random.PRNGKey(0))
      noise_bkd = jax.random.normal(rng, (batch, self.num_slots, self.slot_dim), jnp.float32)
      init_bkd = mean_d + jnp.exp(log_scale_d) * noise_bkd
    else:
      raise ValueError(f"unknown slot_init {self.slot_init!r}; use one of {SLOT_INITS}")

    slot_attention = SlotAttention(
        num_iterations=self.num_iterations, mlp_dim=mlp_dim, dtype=self.dtype,
        name="slot_attention")
    init_iterations = (self.num_iterations if self.init_iterations is None
                       else self.init_iterations)
    if self.recursive_init:
      if init_iterations > self.num_iterations:
        # Frame 0's extra iterations first; the scan then gives it the usual ones.
        init_bkd, _ = slot_attention(x_btnd[:, 0], init_bkd,
                                     num_iterations=init_iterations - self.num_iterations)
      elif init_iterations < self.num_iterations:
        raise ValueError(f"init_iterations={init_iterations} is below num_iterations="
                         f"{self.num_iterations}; use at least as many (or None)")
      # Sequential in T: scan over frames, carry = slots, params broadcast.
      scan = nn.scan(
          _slot_attention_step, variable_broadcast="params",
          split_rngs={"params": False}, in_axes=1, out_axes=1)
      _, (slots_btkd, masks_btkn) = scan(slot_attention, init_bkd, x_btnd)
    else:
      # Frames are independent: fold T into the batch, one parallel call.
      x_bnd = x_btnd.reshape((batch * num_frames, num_patches, self.slot_dim))
      init_bkd = jnp.repeat(init_bkd, num_frames, axis=0)
      slots_bkd, masks_bkn = slot_attention(x_bnd, init_bkd, num_iterations=init_iterations)
      slots_btkd = slots_bkd.reshape(
          (batch, num_frames, self.num_slots, self.slot_dim))
      masks_btkn = masks_bkn.reshape(
          (batch, num_frames, self.num_slots, num_patches))

    if self.temporal_attention:
      # Causal attention over time per slot: fold K into batch, mask over T.
      s_bktd = jnp.swapaxes(slots_btkd, 1, 2).reshape(
          (batch * self.num_slots, num_frames, self.slot_dim))
      causal = nn.make_causal_mask(jnp.zeros((1, num_frames)))  # [1,1,T,T]
      s_bktd = SelfAttentionBlock(
          num_heads=self.num_heads,
          dtype=self.dtype, name="temporal_attention")(s_bktd, mask=causal)
      slots_btkd = jnp.swapaxes(
          s_bktd.astype(jnp.float32).reshape(
              (batch, self.num_slots, num_frames, self.slot_dim)), 1, 2)

    chex.assert_shape(slots_btkd,
                      (batch, num_frames, self.num_slots, self.slot_dim))
    chex.assert_shape(masks_btkn,
                      (batch, num_frames, self.num_slots, num_patches))
    return slots_btkd, masks_btkn

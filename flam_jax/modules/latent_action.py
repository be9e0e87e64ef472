"""Latent action bottlenecks: per-entity IDM features -> latent actions a_t^i.

Without a bottleneck the IDM could copy s_{t+1} into the action and the FDM would
learn nothing (Sec 3). Two variants, chosen by config:

* "fsq" (paper, Sec 4.2 and Table 4): Dense to len(levels) channels then FSQ, so
  each entity's action is one of prod(levels) codes (e.g. [2,2] -> 4), from a
  codebook shared by all slots.
* "gaussian" (later version): a continuous per-slot latent of dimension d/K with
  a KL(q(a^i) || N(0, I)) penalty, weighted by beta in the loss:
  L = ||z - z_hat||^2 + beta * sum_i KL[q(a_t^i) || p(a_t^i)].

Both return a dict with `actions` [B, K, A] and `kl` [B] (zeros for FSQ) so the
loss can always add `beta * kl`; FSQ also returns `indices` [B, K] and the soft code
assignment `code_log_probs` [B, K, C] for the entropy regulariser (`code_entropy_loss`).
"""

from typing import Optional, Sequence, Tuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from flam_jax.modules import fsq

BOTTLENECK_KINDS = ("fsq", "gaussian")


class FSQActionBottleneck(nn.Module):
  """Dense(len(levels)) then FSQ: at most prod(levels) distinct actions per entity."""

  levels: Sequence[int] = (2, 2)
  dtype: jnp.dtype = jnp.float32
  # Temperature of the soft code assignment, in squared digit distances.
  soft_temperature: float = 0.1

  @nn.compact
  def __call__(self, features_bkd: jnp.ndarray, *, deterministic: bool = True) -> dict:
    """Returns dict(actions=[B,K,len(levels)] codes in [-1,1], indices=int32 [B,K], kl=zeros [B],
    code_log_probs=[B,K,C] soft assignment of the pre-quantisation value to the C codes).

    `deterministic` is accepted for interface parity with the Gaussian bottleneck;
    FSQ is deterministic.
    """
    del deterministic
    chex.assert_rank(features_bkd, 3)
    b, k, _ = features_bkd.shape
    # z = LN(x) . w / |w|, without a bias or a learnable scale: |z| stays ~1 whatever the
    # optimiser does to w, so no channel can saturate onto one code by a drift of its bias
    # or its weight norm (Adam moves both at the learning rate per step, and with a plain
    # Dense the [2, 2] actions saturated within ~50 steps). Codes can only become
    # constant if the IDM features themselves stop depending on the video.
    x_bkd = nn.LayerNorm(use_scale=False, use_bias=False, dtype=jnp.float32,
                         name="ln")(features_bkd.astype(jnp.float32))
    kernel_dl = self.param("proj", nn.initializers.normal(1.0),
                           (x_bkd.shape[-1], len(self.levels)), jnp.float32)
    kernel_dl = kernel_dl / jnp.linalg.norm(kernel_dl, axis=0, keepdims=True)
    z_bkl = jnp.einsum("bkd,dl->bkl", x_bkd, kernel_dl)
    codes_bkl = fsq.quantize(z_bkl, self.levels)
    indices_bk = fsq.codes_to_indices(codes_bkl, self.levels).astype(jnp.int32)
    chex.assert_shape(codes_bkl, (b, k, len(self.levels)))
    return dict(actions=codes_bkl, indices=indices_bk, kl=jnp.zeros((b,), jnp.float32),
                code_log_probs=soft_code_log_probs(z_bkl, self.levels, self.soft_temperature))


def soft_code_log_probs(z: jnp.ndarray, levels: Sequence[int], temperature: float) -> jnp.ndarray:
  """log q(c | z) [..., prod(levels)]: each channel's bounded value softly assigned to its
  digits, q_j(d) ~ exp(-(bound(z_j) - d)^2 / temperature), channels independent."""
  digits_cd = fsq.indices_to_codes(jnp.arange(fsq.codebook_size(levels)), levels)
  half = (jnp.asarray(levels, jnp.float32) - 1.0) / 2.0
  digits_cd = jnp.round(digits_cd * half + half).astype(jnp.int32)  # [C, d]
  u = fsq.bound(z, levels)
  log_probs = jnp.zeros(z.shape[:-1] + (digits_cd.shape[0],), jnp.float32)
  for j, level in enumerate(levels):  # Over channels (static, 2-4 in practice).
    logits = -jnp.square(u[..., j:j + 1] - jnp.arange(level, dtype=jnp.float32)) / temperature
    log_probs = log_probs + jax.nn.log_softmax(logits, axis=-1)[..., digits_cd[:, j]]
  return log_probs


def code_entropy_loss(code_log_probs_bxc: jnp.ndarray) -> jnp.ndarray:
  """Minus the entropy of the batch's mean (soft) code distribution: a code-usage penalty.

  The batch half of LFQ's entropy penalty (MAGVIT-v2). Without it a latent action
  bottleneck learns to emit one code for everything: while the actions carry no
  information yet, removing them is the quickest way to remove noise from the FDM's
  input. (The per-sample half, which sharpens each assignment, is left out: rounding
  already makes codes discrete, and sharpening pushes FSQ channels into saturation.)

  The batch distribution is taken over the leading (batch) axis only, separately for
  every other index (transition, entity) and averaged: over all slots and time steps at
  once, a code that depends only on the slot or on t (not on the video) would satisfy it.
  code_log_probs_bxc: [B, ..., C]. Minimum: -log C.
  """
  mean_p = jnp.mean(jnp.exp(code_log_probs_bxc), axis=0)  # [..., C]
  return jnp.mean(jnp.sum(mean_p * jnp.log(mean_p + 1e-10), axis=-1))


def gaussian_kl(mean: jnp.ndarray, log_var: jnp.ndarray) -> jnp.ndarray:
  """Elementwise KL(N(mean, exp(log_var)) || N(0, 1)) = 0.5 (mean^2 + var - 1 - log_var).

  Exactly zero at mean=0, log_var=0 and positive elsewhere. Sum over the axes you
  need (the bottleneck sums over K and latent dims).
  """
  mean = mean.astype(jnp.float32)
  log_var = log_var.astype(jnp.float32)
  return 0.5 * (jnp.square(mean) + jnp.exp(log_var) - 1.0 - log_var)


class GaussianActionBottleneck(nn.Module):
  """Continuous per-entity latent action with a KL to the N(0, I) prior (later FLAM version).

  Dense(2 * latent_dim) -> (mean, log_var), log_var clipped to
  [min_log_var, max_log_var] so exp() stays finite. Sampling uses the
  reparameterisation trick with the 'action' rng stream; deterministic mode
  returns the mean (evaluation, pseudo-labelling).
  """

  latent_dim: int
  dtype: jnp.dtype = jnp.float32
  min_log_var: float = -10.0
  max_log_var: float = 10.0

  @nn.compact
  def __call__(self, features_bkd: jnp.ndarray, *, deterministic: bool) -> dict:
    """Returns dict(actions, mean, log_var: [B,K,latent_dim]; kl: [B]; indices: None)."""
    chex.assert_rank(features_bkd, 3)
    b, k, _ = features_bkd.shape
    stats = nn.Dense(2 * self.latent_dim, dtype=self.dtype, name="proj")(features_bkd)
    mean_bka, log_var_bka = jnp.split(stats.astype(jnp.float32), 2, axis=-1)
    log_var_bka = jnp.clip(log_var_bka, self.min_log_var, self.max_log_var)
    if deterministic:
      actions_bka = mean_bka
    else:
      eps_bka = jax.random.normal(self.make_rng("action"), mean_bka.shape, jnp.float32)
      actions_bka = mean_bka + jnp.exp(0.5 * log_var_bka) * eps_bka
    kl_b = jnp.sum(gaussian_kl(mean_bka, log_var_bka), axis=(1, 2))
    chex.assert_shape([actions_bka, mean_bka, log_var_bka], (b, k, self.latent_dim))
    chex.assert_shape(kl_b, (b,))
    return dict(actions=actions_bka, mean=mean_bka, log_var=log_var_bka, kl=kl_b,
                indices=None)


def sample_random_actions(kind: str, rng: jax.Array, shape_bk: Tuple[int, ...],
                          levels_or_dim) -> jnp.ndarray:
  """Random latent actions for the Delta-PSNR controllability metric (Sec 5.6).

  "fsq": uniformly random codebook entries, [*shape_bk, len(levels)];
  "gaussian": draws from the prior N(0, I), [*shape_bk, latent_dim].
  `levels_or_dim` is the FSQ levels tuple or the Gaussian latent dim.
  """
  shape_bk = tuple(shape_bk)
  if kind == "fsq":
    levels = tuple(levels_or_dim)
    indices = jax.random.randint(rng, shape_bk, 0, fsq.codebook_size(levels))
    return fsq.indices_to_codes(indices, levels)
  if kind == "gaussian":
    return jax.random.normal(rng, shape_bk + (int(levels_or_dim),), jnp.float32)
  raise ValueError(f"unknown action bottleneck kind {kind!r}; valid kinds: {BOTTLENECK_KINDS}")


def make_action_bottleneck(kind: str,
                           *,
                           levels: Sequence[int] = (2, 2),
                           latent_dim: Optional[int] = None,
                           dtype: jnp.dtype = jnp.float32,
                           name: Optional[str] = None) -> nn.Module:
  """Builds the bottleneck named by the config: "fsq" (uses levels) or "gaussian" (latent_dim)."""
  if kind == "fsq":
    return FSQActionBottleneck(levels=tuple(levels), dtype=dtype, name=name)
  if kind == "gaussian":
    if latent_dim is None or int(latent_dim) < 1:
      raise ValueError(f"gaussian action bottleneck needs latent_dim >= 1, got {latent_dim}")
    return GaussianActionBottleneck(latent_dim=int(latent_dim), dtype=dtype, name=name)
  raise ValueError(f"unknown action bottleneck kind {kind!r}; valid kinds: {BOTTLENECK_KINDS}")


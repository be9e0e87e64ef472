"""Explicit slot-matching losses between consecutive frames (Appendix E).

The per-slot IDM/FDM assume slot k at time t and slot k at t+1 describe the same
entity. Appendix E tries three consistency losses on top of L_LAM (none helped,
so the paper's default is recursive slot initialisation, see `Factorizer`); they
are kept here for ablations:

- "distribution": D_KL(s_t^{1:K} || s_{t+1}^{1:K}) of the slot sets.
- "hungarian": matched cost under the optimal one-to-one assignment.
- "contrastive": greedy top-1 InfoNCE.

All functions take slots [..., K, D] (any leading batch dims), compute in
float32, are jittable, and return a scalar averaged over the leading dims.
"""

from typing import Callable, Dict

import chex
import jax
import jax.numpy as jnp
import optax

from flam_jax.errors import ConfigError

_VAR_EPS = 1e-6


def _check_pair(slots_t_bkd: jnp.ndarray, slots_tp1_bkd: jnp.ndarray):
  chex.assert_rank(slots_t_bkd, {2, 3, 4, 5})
  chex.assert_equal_shape([slots_t_bkd, slots_tp1_bkd])


def slot_distribution_loss(slots_t_bkd: jnp.ndarray,
                           slots_tp1_bkd: jnp.ndarray) -> jnp.ndarray:
  """D_KL(s_t^{1:K} || s_{t+1}^{1:K}) between consecutive slot sets (App. E).

  The paper leaves the distribution implicit; here each frame's K slot vectors
  are treated as samples of a diagonal Gaussian (mean and variance over K per
  channel, variance + 1e-6) and the loss is KL(N_t || N_{t+1}) summed over
  channels, averaged over leading dims. It is zero for identical sets and, by
  construction, invariant to permuting the slots of either frame.

  Args:
    slots_t_bkd: [..., K, D] slots at frame t.
    slots_tp1_bkd: [..., K, D] slots at frame t+1.

  Returns:
    Scalar float32 loss.
  """
  _check_pair(slots_t_bkd, slots_tp1_bkd)
  s_t = slots_t_bkd.astype(jnp.float32)
  s_tp1 = slots_tp1_bkd.astype(jnp.float32)
  mu_t, mu_tp1 = jnp.mean(s_t, axis=-2), jnp.mean(s_tp1, axis=-2)  # [..., D]
  var_t = jnp.var(s_t, axis=-2) + _VAR_EPS
  var_tp1 = jnp.var(s_tp1, axis=-2) + _VAR_EPS
  kl_bd = 0.5 * (jnp.log(var_tp1) - jnp.log(var_t)
                 + (var_t + jnp.square(mu_t - mu_tp1)) / var_tp1 - 1.0)
  return jnp.mean(jnp.sum(kl_bd, axis=-1))


def pairwise_sq_dist(slots_t_bkd: jnp.ndarray,
                     slots_tp1_bkd: jnp.ndarray) -> jnp.ndarray:
  """C_ij = mean_d (s_t^i - s_{t+1}^j)^2, [..., K, K] (float32).

  Expanded as (|a|^2 + |b|^2 - 2 a.b) / D so no [..., K, K, D] tensor is built;
  the dot product runs at full float32 precision (no TF32) against cancellation.
  """
  a_bkd = slots_t_bkd.astype(jnp.float32)
  b_bkd = slots_tp1_bkd.astype(jnp.float32)
  ab_bkk = jnp.einsum("...id,...jd->...ij", a_bkd, b_bkd,
                      precision=jax.lax.Precision.HIGHEST)
  sq_bkk = (jnp.sum(jnp.square(a_bkd), -1)[..., :, None]
            + jnp.sum(jnp.square(b_bkd), -1)[..., None, :] - 2.0 * ab_bkk)
  return jnp.maximum(sq_bkk, 0.0) / a_bkd.shape[-1]


def hungarian_matching_loss(slots_t_bkd: jnp.ndarray,
                            slots_tp1_bkd: jnp.ndarray) -> jnp.ndarray:
  """Hungarian matching loss, sum_i C_{i, sigma*(i)} (App. E).

  sigma* minimises the total cost over permutations of the K slots
  (`optax.assignment.hungarian_algorithm`, vmapped over the leading dims). The
  assignment is a constant for autodiff; gradients flow through the matched
  costs C_ij = mean_d (s_t^i - s_{t+1}^j)^2.

  Args:
    slots_t_bkd: [..., K, D] slots at frame t.
    slots_tp1_bkd: [..., K, D] slots at frame t+1.

  Returns:
    Scalar float32 loss: matched cost summed over slots, mean over leading dims.
  """
  _check_pair(slots_t_bkd, slots_tp1_bkd)
  num_slots = slots_t_bkd.shape[-2]
  cost_bkk = pairwise_sq_dist(slots_t_bkd, slots_tp1_bkd)
  cost_bkk = cost_bkk.reshape((-1, num_slots, num_slots))
  # Pairs (rows[m], cols[m]); optax does not promise rows == arange(K), so use
  # both index arrays.
  rows_bk, cols_bk = jax.vmap(optax.assignment.hungarian_algorithm)(
      jax.lax.stop_gradient(cost_bkk))
  matched_bk = jax.vmap(lambda c, i, j: c[i, j])(cost_bkk, rows_bk, cols_bk)
  chex.assert_shape(matched_bk, (cost_bkk.shape[0], num_slots))
  return jnp.mean(jnp.sum(matched_bk, axis=-1))


def contrastive_matching_loss(slots_t_bkd: jnp.ndarray,
                              slots_tp1_bkd: jnp.ndarray,
                              temperature: float = 0.1) -> jnp.ndarray:
  """Greedy top-1 InfoNCE matching loss (App. E).

  sim = cosine similarity; each s_t^i is a query against keys s_{t+1}^j;
  j* = argmax_j sim(s_t^i, s_{t+1}^j) (a constant for autodiff);
  L_i = -log softmax_j(sim_ij / temperature)[j*]; loss = mean over i and leading
  dims.

  Args:
    slots_t_bkd: [..., K, D] slots at frame t.
    slots_tp1_bkd: [..., K, D] slots at frame t+1.
    temperature: Softmax temperature tau.

  Returns:
    Scalar float32 loss.
  """
  _check_pair(slots_t_bkd, slots_tp1_bkd)
  normalize = lambda x: x * jax.lax.rsqrt(
      jnp.sum(jnp.square(x), axis=-1, keepdims=True) + 1e-12)
  q_bkd = normalize(slots_t_bkd.astype(jnp.float32))
  k_bkd = normalize(slots_tp1_bkd.astype(jnp.float32))
  sim_bkk = jnp.einsum("...id,...jd->...ij", q_bkd, k_bkd)
  j_star_bk = jnp.argmax(jax.lax.stop_gradient(sim_bkk), axis=-1)
  log_p_bkk = jax.nn.log_softmax(sim_bkk / temperature, axis=-1)
  nll_bk = -jnp.take_along_axis(
      log_p_bkk, j_star_bk[..., None], axis=-1)[..., 0]
  return jnp.mean(nll_bk)


class UnknownMatchingLossError(ConfigError, ValueError):
  """`matching_loss` got a name it does not know."""


_PAIR_LOSSES: Dict[str, Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]] = {
    "distribution": slot_distribution_loss,
    "hungarian": hungarian_matching_loss,
    "contrastive": contrastive_matching_loss,
}
MATCHING_LOSSES = ("none",) + tuple(_PAIR_LOSSES)


def matching_loss(name: str, slots_btkd: jnp.ndarray) -> jnp.ndarray:
  """Slot-matching loss `name` averaged over all consecutive frame pairs.

  Args:
    name: One of "none", "distribution", "hungarian", "contrastive".
    slots_btkd: [B, T, K, D] slots of a clip.

  Returns:
    Scalar float32 loss (0.0 for "none" or T < 2).

  Raises:
    UnknownMatchingLossError (a ValueError and a ConfigError): unknown `name`.
  """
  if name not in MATCHING_LOSSES:
    raise UnknownMatchingLossError(
        f"Unknown slot matching loss {name!r}; valid names: "
        f"{', '.join(MATCHING_LOSSES)}")
  chex.assert_rank(slots_btkd, 4)
  if name == "none" or slots_btkd.shape[1] < 2:
    return jnp.zeros((), jnp.float32)
  # Pairs (t, t+1) stay as a leading dim; every loss averages over [B, T-1].
  return _PAIR_LOSSES[name](slots_btkd[:, :-1], slots_btkd[:, 1:])

"""Finite Scalar Quantization (Mentzer et al., 2023), as small stateless functions.

FSQ bounds each of d channels to a fixed number of levels L_j and rounds it, with a
straight-through gradient. The implicit codebook is the grid prod_j L_j; a code maps
to an integer index by mixed-radix arithmetic. Used twice in FLAM: by the tokenizer
(Sec 4.1, levels [4,4,4,4,4] = 1024 codes) and, optionally, by the latent action
bottleneck (Table 4, e.g. [2,2] = 4 codes per slot).

Codes live in [-1, 1]: for L levels the values are (digit - L//2) / (L//2).
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

_EPS = 1e-3


def _levels_array(levels: Sequence[int]) -> jnp.ndarray:
  levels = tuple(int(l) for l in levels)
  if not levels or min(levels) < 2:
    raise ValueError(f"FSQ levels must be integers >= 2, got {levels}")
  return jnp.asarray(levels, dtype=jnp.int32)


def codebook_size(levels: Sequence[int]) -> int:
  """Number of implicit codes, prod(levels)."""
  return int(np.prod(levels))


def _basis(levels: Sequence[int]) -> jnp.ndarray:
  """Mixed-radix place values: [1, L0, L0*L1, ...]."""
  return jnp.asarray(np.concatenate([[1], np.cumprod(levels[:-1])]), dtype=jnp.int32)


def bound(z: jnp.ndarray, levels: Sequence[int]) -> jnp.ndarray:
  """Squashes z[..., d] so that rounding gives exactly L_j integer values per channel.

  As in the FSQ reference code: half_l = (L - 1)(1 - eps) / 2, shift = tan(offset / half_l).
  (With arctanh instead of tan, an L=2 channel starts saturated at z=0, its gradient
  ~0.002, and a [2, 2] latent action bottleneck collapses onto one code.)
  """
  levels_f = _levels_array(levels).astype(jnp.float32)
  half_l = (levels_f - 1.0) * (1.0 - _EPS) / 2.0
  offset = jnp.where(levels_f % 2 == 0, 0.5, 0.0)
  shift = jnp.tan(offset / half_l)
  z = z.astype(jnp.float32)
  return jnp.tanh(z + shift) * half_l - offset


def round_ste(x: jnp.ndarray) -> jnp.ndarray:
  """Rounds in the forward pass, identity gradient in the backward pass."""
  return x + jax.lax.stop_gradient(jnp.round(x) - x)


def quantize(z: jnp.ndarray, levels: Sequence[int]) -> jnp.ndarray:
  """Continuous z[..., d] -> codes[..., d] in [-1, 1] with straight-through gradients."""
  if z.shape[-1] != len(levels):
    raise ValueError(f"FSQ input has {z.shape[-1]} channels but {len(levels)} levels")
  half_width = (_levels_array(levels) // 2).astype(jnp.float32)
  return round_ste(bound(z, levels)) / half_width


def codes_to_indices(codes: jnp.ndarray, levels: Sequence[int]) -> jnp.ndarray:
  """codes[..., d] in [-1, 1] -> integer indices[...] in [0, prod(levels))."""
  half_width = (_levels_array(levels) // 2).astype(jnp.float32)
  digits = jnp.round(codes.astype(jnp.float32) * half_width + half_width).astype(jnp.int32)
  return jnp.sum(digits * _basis(levels), axis=-1)


def indices_to_codes(indices: jnp.ndarray, levels: Sequence[int]) -> jnp.ndarray:
  """indices[...] -> codes[..., d]; the inverse of `codes_to_indices`."""
  levels_i = _levels_array(levels)
  digits = (indices[..., None].astype(jnp.int32) // _basis(levels)) % levels_i
  half_width = (levels_i // 2).astype(jnp.float32)
  return (digits.astype(jnp.float32) - half_width) / half_width


def all_codes(levels: Sequence[int]) -> jnp.ndarray:
  """The whole implicit codebook, [prod(levels), d], in index order."""
  return indices_to_codes(jnp.arange(codebook_size(levels)), levels)


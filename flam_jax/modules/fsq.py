"""Finite Scalar Quantization (Mentzer et al., 2023), as small stateless functions.

FSQ bounds each of d channels to a fixed number of levels L_j and rounds it, with a
straight-through gradient. The implicit codebook is the grid prod_j L_j; a code maps
to an integer index by mixed-radix arithmetic. Used twice in FLAM: by the tokenizer
(Sec 4.1, levels [4,4,4,4,4] = 1024 codes) and, optionally, by the latent action
bottleneck (Table 4, e.g. [2,2] = 4 codes per slot).

The grid is symmetric about 0 for every L: digit d in [0, L) has the code
(2d - (L - 1)) / (L - 1) in [-1, 1], so L=2 gives {-1, +1} with its rounding boundary
at z = 0, and L=4 gives {-1, -1/3, 1/3, 1} with boundaries at tanh(z) = -2/3, 0, 2/3.
(The reference code shifts even L by tan(0.5 / half_l) instead: for L=2 the boundary
sits at z = -1.56 and 94% of unit-scale inputs land on one code, so a [2, 2] latent
action bottleneck starts collapsed.)
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


def _half_span(levels: Sequence[int]) -> jnp.ndarray:
  """(L - 1) / 2 per channel: digits are d in [0, L), codes (d - half_span) / half_span."""
  return (_levels_array(levels).astype(jnp.float32) - 1.0) / 2.0


def bound(z: jnp.ndarray, levels: Sequence[int]) -> jnp.ndarray:
  """Squashes z[..., d] into (0, L_j - 1): rounding gives exactly L_j digits, symmetric in z.

  digit = round(bound(z)); the boundaries between digits are symmetric about z = 0, and
  at z = 0 the gradient is (L - 1) / 2 * (1 - eps) for every L.
  """
  half = _half_span(levels)
  return jnp.tanh(z.astype(jnp.float32)) * half * (1.0 - _EPS) + half


def round_ste(x: jnp.ndarray) -> jnp.ndarray:
  """Rounds in the forward pass, identity gradient in the backward pass."""
  return x + jax.lax.stop_gradient(jnp.round(x) - x)


def quantize(z: jnp.ndarray, levels: Sequence[int]) -> jnp.ndarray:
  """Continuous z[..., d] -> codes[..., d] in [-1, 1] with straight-through gradients."""
  if z.shape[-1] != len(levels):
    raise ValueError(f"FSQ input has {z.shape[-1]} channels but {len(levels)} levels")
  half = _half_span(levels)
  return (round_ste(bound(z, levels)) - half) / half


def codes_to_indices(codes: jnp.ndarray, levels: Sequence[int]) -> jnp.ndarray:
  """codes[..., d] in [-1, 1] -> integer indices[...] in [0, prod(levels))."""
  half = _half_span(levels)
  digits = jnp.round(codes.astype(jnp.float32) * half + half).astype(jnp.int32)
  return jnp.sum(digits * _basis(levels), axis=-1)


def indices_to_codes(indices: jnp.ndarray, levels: Sequence[int]) -> jnp.ndarray:
  """indices[...] -> codes[..., d]; the inverse of `codes_to_indices`."""
  levels_i = _levels_array(levels)
  digits = (indices[..., None].astype(jnp.int32) // _basis(levels)) % levels_i
  half = _half_span(levels)
  return (digits.astype(jnp.float32) - half) / half


def all_codes(levels: Sequence[int]) -> jnp.ndarray:
  """The whole implicit codebook, [prod(levels), d], in index order."""
  return indices_to_codes(jnp.arange(codebook_size(levels)), levels)

"""Shared test helper: random parameters without compiling flax initialisers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def random_params(model, *args, seed=0, **kwargs):
  """Random float32 params for `model` without compiling its initialisers.

  The init is only traced (`jax.eval_shape`, which still runs all of flax's
  checks); values come from numpy: LayerNorm scales ~1, biases ~0.1, kernels
  ~N(0, 1/fan_in), embeddings and learned queries ~N(0, 1). Compiling the
  initialisers costs seconds per model on CPU.
  """
  shapes = jax.eval_shape(functools.partial(model.init, **kwargs), jax.random.key(0), *args)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    names = [getattr(p, "key", "") for p in path]
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if names[-1] == "scale":
      return jnp.asarray(1.0 + 0.1 * noise)
    if names[-1] == "bias":
      return jnp.asarray(0.1 * noise)
    if names[-1] == "kernel":
      fan_in = np.prod(leaf.shape[:2]) if (leaf.ndim == 3 and names[-2] == "out") else leaf.shape[0]
      return jnp.asarray(noise / np.sqrt(fan_in))
    return jnp.asarray(noise)

  return jax.tree_util.tree_map_with_path(fill, shapes)

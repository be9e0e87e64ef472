"""Shared test helpers: random parameters without compiling flax initialisers; a tokenizer fit."""

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


def reconstruction_losses(model, frames, steps: int = 40, learning_rate: float = 3e-3):
  """Adam on a tokenizer's reconstruction loss (Eq. 1) over fixed frames: the losses per step."""
  import optax  # pylint: disable=g-import-not-at-top
  from flam_jax.modules.tokenizer import reconstruction_loss  # pylint: disable=g-import-not-at-top
  params = model.init(jax.random.PRNGKey(0), frames)["params"]
  tx = optax.adam(learning_rate)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    loss, grads = jax.value_and_grad(
        lambda p: reconstruction_loss(frames, model.apply({"params": p}, frames)[0]))(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for _ in range(steps):  # Host loop over optimizer steps (each one jitted call).
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  return losses

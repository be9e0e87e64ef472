"""Image-quality metrics on pixels scaled to [0, 1] (Sec 5.6)."""

import jax.numpy as jnp


def psnr(target, prediction, axis=(-3, -2, -1)):
  """PSNR = 10 log10(1 / MSE) per image, reduced over `axis` (default H, W, C).

  Pixels must be in [0, 1]. The MSE is floored at 1e-10 so identical images give
  100 dB rather than infinity.
  """
  mse = jnp.mean(jnp.square(target.astype(jnp.float32) - prediction.astype(jnp.float32)), axis=axis)
  return 10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10))

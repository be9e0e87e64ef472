"""The jaxpr FLOP counter: matmul, conv and scan-aware counts against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np

from flam_jax.lib import flops


def test_matmul_and_backward():
  a, w = jnp.ones((8, 16)), jnp.ones((16, 32))
  assert flops.count(lambda a, w: a @ w, a, w).matmul == 2 * 8 * 16 * 32
  # Backward of a matmul is two more matmuls of the same size: 3x in all.
  loss = lambda w: jnp.sum(a @ w)
  assert flops.count(jax.value_and_grad(loss), w).matmul == 2 * 2 * 8 * 16 * 32
  # A jit with compiler options (the train step's on a CPU) is counted as the top-level jit.
  jitted = jax.jit(lambda a, w: a @ w, compiler_options={"xla_cpu_enable_fast_math": False})
  assert flops.count(jitted, a, w).matmul == 2 * 8 * 16 * 32


def test_scan_body_multiplied_by_length():
  w = jnp.ones((16, 16))

  def f(x):
    y, _ = jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=7)
    return y

  one_step = 2 * 4 * 16 * 16
  assert flops.count(f, jnp.ones((4, 16))).total == 7 * one_step
  # XLA's cost analysis counts the body once (the reason for this counter).
  xla = jax.jit(f).lower(jnp.ones((4, 16))).compile().cost_analysis()
  xla = xla[0] if isinstance(xla, (list, tuple)) else xla
  assert xla["flops"] < 2 * one_step


def test_conv_forward_and_gradients():
  x = jnp.ones((2, 10, 12, 3))
  k = jnp.ones((3, 3, 3, 5))
  conv = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  forward = 2 * (2 * 10 * 12 * 5) * (3 * 3 * 3)
  assert flops.count(conv, x, k).conv == forward
  # Input and kernel gradients are convolutions of the forward's size each.
  both = flops.count(jax.grad(lambda x, k: jnp.sum(conv(x, k)), argnums=(0, 1)), x, k)
  np.testing.assert_allclose(both.conv, 3 * forward)


def test_attention_counts_both_matmuls():
  b, s, h, d = 2, 6, 3, 4
  q = jnp.ones((b, s, h, d))
  c = flops.count(lambda q: jax.nn.dot_product_attention(q, q, q, is_causal=True), q)
  assert c.total == 4 * b * h * s * s * d  # Dense: the causal mask is not discounted.

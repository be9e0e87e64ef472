"""Decoder upsampling: nearest-resize + conv (ours) versus ConvTranspose, forward + backward.

    python benchmarks/bench_decoder.py --image_size=128 --batch_size=16

Both decoders have the same stages and channel widths; only the x2 upsampling op
differs. Reports ms per step and the ratio.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp
from absl import app, flags

from flam_jax.modules.tokenizer import ResidualBlock, UpsampleDecoder

_SIZE = flags.DEFINE_integer("image_size", 128, "Output image size.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Batch size.")
_CHANNELS = flags.DEFINE_list("channels", ["64", "128", "128"], "Encoder channels.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps.")


class ConvTransposeDecoder(nn.Module):
  channels: tuple

  @nn.compact
  def __call__(self, z):
    x = nn.Conv(self.channels[-1], (3, 3))(z)
    for c in reversed(self.channels):
      x = nn.ConvTranspose(c, (4, 4), strides=(2, 2))(x)
      x = ResidualBlock()(x)
      x = ResidualBlock()(x)
    return nn.Conv(3, (3, 3))(nn.relu(x))


def time_decoder(module, z, target):
  params = module.init(jax.random.PRNGKey(0), z)
  loss = lambda p: jnp.mean((module.apply(p, z) - target) ** 2)
  step = jax.jit(jax.value_and_grad(loss))
  jax.block_until_ready(step(params))
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    out = step(params)
  jax.block_until_ready(out)
  return 1e3 * (time.perf_counter() - start) / _STEPS.value


def main(argv):
  del argv
  channels = tuple(int(c) for c in _CHANNELS.value)
  grid = _SIZE.value // 2 ** len(channels)
  z = jax.random.normal(jax.random.PRNGKey(1), (_BATCH.value, grid, grid, 128))
  target = jax.random.uniform(jax.random.PRNGKey(2), (_BATCH.value, _SIZE.value, _SIZE.value, 3))
  resize_ms = time_decoder(UpsampleDecoder(channels), z, target)
  transpose_ms = time_decoder(ConvTransposeDecoder(channels), z, target)
  print(f"device {jax.devices()[0].device_kind}: batch {_BATCH.value}, {_SIZE.value}px, "
        f"channels {channels}")
  print(f"resize+conv: {resize_ms:.1f} ms/step, ConvTranspose: {transpose_ms:.1f} ms/step, "
        f"ConvTranspose/resize = {transpose_ms / resize_ms:.2f}x")


if __name__ == "__main__":
  app.run(main)

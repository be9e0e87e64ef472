"""MAGVIT-v2-style convolutional encoder and decoder: the real-video tokenizer of Table 4.

    Encoder: conv3x3 -> per stage: residual blocks, stride-2 conv (downsample)
             -> residual blocks -> GroupNorm, swish -> conv1x1 to z_channels
    Decoder: conv3x3 -> residual blocks -> per stage (reversed): residual blocks,
             conv to 4C + depth-to-space (x2 upsample) -> GroupNorm, swish -> conv3x3 to RGB
Residual block: GroupNorm, swish, conv3x3, GroupNorm, swish, conv3x3, plus the input
(through a 1x1 conv when the channel count changes). Stride 2^len(channels), as the IMPALA
encoder: 224 px with four stages gives 14x14 tokens. This is the 2-D (per-frame) image
tokenizer of MAGVIT-v2 (Yu et al., 2024) without its causal 3-D convolutions, adaptive
group norm in the decoder, or LFQ (FSQ is applied by `tokenizer.Tokenizer`).
"""

import math
from typing import Sequence

import jax.numpy as jnp
import flax.linen as nn


def _group_norm(channels: int, dtype) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=math.gcd(32, channels), dtype=dtype)


class ResBlock(nn.Module):
  """GroupNorm, swish, conv3x3, GroupNorm, swish, conv3x3; identity or 1x1 skip."""

  channels: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.swish(_group_norm(x.shape[-1], self.dtype)(x))
    h = nn.Conv(self.channels, (3, 3), dtype=self.dtype)(h)
    h = nn.swish(_group_norm(self.channels, self.dtype)(h))
    h = nn.Conv(self.channels, (3, 3), dtype=self.dtype)(h)
    if x.shape[-1] != self.channels:
      x = nn.Conv(self.channels, (1, 1), dtype=self.dtype)(x)
    return x + h


def depth_to_space(x_bhwc, factor: int = 2):
  """[B, h, w, C*f*f] -> [B, h*f, w*f, C] (pixel shuffle)."""
  b, h, w, c = x_bhwc.shape
  c_out = c // (factor * factor)
  x = x_bhwc.reshape(b, h, w, factor, factor, c_out)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * factor, w * factor, c_out)


class Encoder(nn.Module):
  """[B, H, W, 3] in [0, 1] -> [B, H/2^S, W/2^S, z_channels] for S = len(channels)."""

  channels: Sequence[int]
  z_channels: int
  num_res_blocks: int = 2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, frames_bHWc):
    x = frames_bHWc.astype(self.dtype) * 2.0 - 1.0
    x = nn.Conv(self.channels[0], (3, 3), dtype=self.dtype)(x)
    for c in self.channels:
      for _ in range(self.num_res_blocks):
        x = ResBlock(c, self.dtype)(x)
      x = nn.Conv(c, (4, 4), strides=(2, 2), dtype=self.dtype)(x)
    for _ in range(self.num_res_blocks):
      x = ResBlock(self.channels[-1], self.dtype)(x)
    x = nn.swish(_group_norm(x.shape[-1], self.dtype)(x))
    return nn.Conv(self.z_channels, (1, 1), dtype=self.dtype)(x)


class Decoder(nn.Module):
  """[B, h, w, D] -> [B, h*2^S, w*2^S, 3] in [0, 1] (float32 output for the loss)."""

  channels: Sequence[int]  # Listed from the encoder's side; used in reverse.
  num_res_blocks: int = 2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z_bhwd):
    x = nn.Conv(self.channels[-1], (3, 3), dtype=self.dtype)(z_bhwd.astype(self.dtype))
    for _ in range(self.num_res_blocks):
      x = ResBlock(self.channels[-1], self.dtype)(x)
    for c in reversed(self.channels):
      for _ in range(self.num_res_blocks):
        x = ResBlock(c, self.dtype)(x)
      x = depth_to_space(nn.Conv(4 * c, (3, 3), dtype=self.dtype)(x))
    x = nn.swish(_group_norm(x.shape[-1], self.dtype)(x))
    x = nn.Conv(3, (3, 3), dtype=self.dtype)(x)
    return (x.astype(jnp.float32) + 1.0) / 2.0

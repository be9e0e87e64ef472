"""Pictures people would rather look at than read: PNG grids and animated GIFs."""

import os
from typing import Sequence

import numpy as np
from PIL import Image


# Distinct colours for slot masks (K up to 16 distinct; repeats beyond).
SLOT_COLORS = np.array([
    [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
    [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0],
    [170, 255, 195]], np.float32) / 255.0


def slot_colors(num_slots: int) -> np.ndarray:
  """[K, 3] float colours of slots 0..K-1."""
  return SLOT_COLORS[np.arange(num_slots) % len(SLOT_COLORS)]


def upsample_masks(masks_kn, grid, size: int) -> np.ndarray:
  """Patch masks [..., K, N] on an h x w `grid` -> pixel masks [..., K, size, size]."""
  masks = np.asarray(masks_kn, np.float32)
  scale = size // grid[0]
  masks = masks.reshape(masks.shape[:-1] + tuple(grid))
  return masks.repeat(scale, axis=-2).repeat(scale, axis=-1)


def mask_overlay(masks_tkn, frames_tHWc, grid) -> np.ndarray:
  """Slot masks [T, K, N] coloured per slot over frames [T, H, W, 3] in [0, 1] (Figs. 7-9)."""
  frames = np.asarray(frames_tHWc, np.float32)
  masks = upsample_masks(masks_tkn, grid, frames.shape[1])
  return np.einsum("tkhw,kc->thwc", masks, slot_colors(masks.shape[1])) * 0.7 + frames * 0.3


def to_uint8(images) -> np.ndarray:
  """Float in [0, 1] (or uint8) -> uint8."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  return (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def grid(rows: Sequence[np.ndarray], pad: int = 2) -> np.ndarray:
  """Stacks rows of images [n, H, W, 3] into one [rows*(H+pad), n*(W+pad), 3] uint8 picture."""
  rows = [to_uint8(r) for r in rows]
  n = max(r.shape[0] for r in rows)
  h, w = rows[0].shape[1:3]
  canvas = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
  for i, row in enumerate(rows):
    for j, image in enumerate(row):
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      canvas[y:y + h, x:x + w] = image
  return canvas


def save_png(path: str, image: np.ndarray, upscale: int = 1) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  image = to_uint8(image)
  if upscale > 1:
    image = image.repeat(upscale, axis=0).repeat(upscale, axis=1)
  tmp = path + ".tmp.png"
  Image.fromarray(image).save(tmp)
  os.replace(tmp, path)
  return path


def save_gif(path: str, frames: np.ndarray, fps: int = 4, upscale: int = 1) -> str:
  """frames [T, H, W, 3] -> an endlessly looping animated GIF."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  frames = to_uint8(frames)
  if upscale > 1:
    frames = frames.repeat(upscale, axis=1).repeat(upscale, axis=2)
  pil = [Image.fromarray(f) for f in frames]
  tmp = path + ".tmp.gif"
  pil[0].save(tmp, save_all=True, append_images=pil[1:], duration=int(1000 / fps), loop=0)
  os.replace(tmp, path)
  return path

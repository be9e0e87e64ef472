"""Pictures people would rather look at than read: PNG grids and animated GIFs."""

import os
from typing import Sequence

import numpy as np
from PIL import Image


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

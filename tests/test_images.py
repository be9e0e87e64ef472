"""Pictures: uint8 conversion, grids, slot-mask overlays, PNG and GIF files."""

import numpy as np
from PIL import Image

from flam_jax.lib import images


def test_to_uint8_rounds_and_clips():
  out = images.to_uint8(np.array([-0.5, 0.0, 0.5, 1.0, 2.0], np.float32))
  np.testing.assert_array_equal(out, [0, 0, 128, 255, 255])
  raw = np.array([3, 7], np.uint8)
  assert images.to_uint8(raw) is raw


def test_grid_places_rows_with_padding():
  a = np.zeros((2, 4, 4, 3), np.float32)
  b = np.ones((1, 4, 4, 3), np.float32)
  canvas = images.grid([a, b], pad=2)
  assert canvas.shape == (2 * 6 + 2, 2 * 6 + 2, 3) and canvas.dtype == np.uint8
  np.testing.assert_array_equal(canvas[2:6, 2:6], 0)       # Row 0, image 0.
  np.testing.assert_array_equal(canvas[8:12, 2:6], 255)    # Row 1, image 0.
  np.testing.assert_array_equal(canvas[8:12, 8:12], 255)   # Row 1 has no image 1: background.
  np.testing.assert_array_equal(canvas[0, :], 255)         # Padding.


def test_mask_overlay_colours_each_slot():
  grid = (2, 2)
  masks_tkn = np.zeros((1, 2, 4), np.float32)
  masks_tkn[0, 0, :2] = 1.0  # Slot 0: top row of patches.
  masks_tkn[0, 1, 2:] = 1.0  # Slot 1: bottom row.
  frames = np.zeros((1, 4, 4, 3), np.float32)
  out = images.mask_overlay(masks_tkn, frames, grid)
  assert out.shape == (1, 4, 4, 3)
  np.testing.assert_allclose(out[0, 0, 0], images.SLOT_COLORS[0] * 0.7)
  np.testing.assert_allclose(out[0, 3, 3], images.SLOT_COLORS[1] * 0.7)
  assert images.slot_colors(20).shape == (20, 3)  # Colours repeat beyond the palette.
  np.testing.assert_array_equal(images.slot_colors(20)[16], images.SLOT_COLORS[0])


def test_png_and_gif_round_trip(tmp_path):
  frames = np.stack([np.full((3, 3, 3), v, np.uint8) for v in (0, 100, 200)])
  png = images.save_png(str(tmp_path / "a" / "x.png"), frames[1], upscale=2)
  with Image.open(png) as image:
    np.testing.assert_array_equal(np.asarray(image), np.full((6, 6, 3), 100, np.uint8))
  gif = images.save_gif(str(tmp_path / "x.gif"), frames, fps=5)
  with Image.open(gif) as image:
    assert image.n_frames == 3 and image.info["duration"] == 200
  assert not list(tmp_path.glob("**/*.tmp*"))  # Written atomically.

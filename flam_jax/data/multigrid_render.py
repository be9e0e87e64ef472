"""Multigrid's pictures: entity-id masks and their colours (see multigrid.py's rules).

Frames are rendered from the per-pixel entity-id mask (0 floor, 1 wall, 2 + k agent k)
through a colour lookup table, so frames and masks agree by construction; agent k is
a MiniGrid triangle pointing along its heading in colour `AGENT_COLORS[k]`.
"""

from __future__ import annotations

import numpy as np

from flam_jax.data.records import FIRST_AGENT_ID, FLOOR_ID, WALL_ID

FLOOR_COLOR = np.array([0, 0, 0], np.uint8)
WALL_COLOR = np.array([100, 100, 100], np.uint8)
# 16 well-separated colours (Trubetskoy's palette minus black/white/greys).
AGENT_COLORS = np.array(
    [
        [230, 25, 75],  # red
        [60, 180, 75],  # green
        [255, 225, 25],  # yellow
        [0, 130, 200],  # blue
        [245, 130, 48],  # orange
        [145, 30, 180],  # purple
        [70, 240, 240],  # cyan
        [240, 50, 230],  # magenta
        [210, 245, 60],  # lime
        [250, 190, 212],  # pink
        [0, 128, 128],  # teal
        [220, 190, 255],  # lavender
        [170, 110, 40],  # brown
        [255, 250, 200],  # beige
        [128, 0, 0],  # maroon
        [0, 0, 128],  # navy
    ],
    np.uint8,
)  # [16, 3]

# Entity id -> RGB: [2 + 16, 3].
COLOR_LUT = np.concatenate([FLOOR_COLOR[None], WALL_COLOR[None], AGENT_COLORS])


def agent_sprites(cell_size: int) -> np.ndarray:
  """MiniGrid triangles for the 4 headings: bool [4, c, c]."""
  c = cell_size
  y, x = (np.mgrid[0:c, 0:c] + 0.5) / c  # Pixel centres in [0, 1].
  # MiniGrid's agent triangle, pointing right (+x = +col).
  a, b, d = (0.12, 0.19), (0.87, 0.50), (0.12, 0.81)

  def side(p, q):
    return (x - q[0]) * (p[1] - q[1]) - (p[0] - q[0]) * (y - q[1])

  s1, s2, s3 = side(a, b), side(b, d), side(d, a)
  has_neg = (s1 < 0) | (s2 < 0) | (s3 < 0)
  has_pos = (s1 > 0) | (s2 > 0) | (s3 > 0)
  right_cc = ~(has_neg & has_pos)
  # Heading h is h quarter turns clockwise from right (down = +row).
  return np.stack([np.rot90(right_cc, k=-h) for h in range(4)])


def render_masks(cfg, walls_GG: np.ndarray,
                 positions: np.ndarray, headings: np.ndarray) -> np.ndarray:
  """Entity-id masks uint8 [L, H, W]; positions [L, K, 2], headings [L, K]."""
  c = cfg.cell_size
  l, k = headings.shape
  static_HW = np.where(walls_GG, WALL_ID, FLOOR_ID).astype(np.uint8)
  static_HW = np.repeat(np.repeat(static_HW, c, axis=0), c, axis=1)
  masks = np.repeat(static_HW[None], l, axis=0)  # [L, H, W]
  # Paste every agent sprite of every frame in one scatter.
  on_LKcc = agent_sprites(c)[headings]  # [L, K, c, c]
  ar = np.arange(c)
  t_idx = np.arange(l)[:, None, None, None]
  r_idx = positions[..., 0, None, None] * c + ar[:, None]  # [L, K, c, 1]
  c_idx = positions[..., 1, None, None] * c + ar[None, :]  # [L, K, 1, c]
  ids = (FIRST_AGENT_ID + np.arange(k, dtype=np.uint8))[None, :, None, None]
  shape = on_LKcc.shape
  masks[np.broadcast_to(t_idx, shape)[on_LKcc],
        np.broadcast_to(r_idx, shape)[on_LKcc],
        np.broadcast_to(c_idx, shape)[on_LKcc]] = np.broadcast_to(
            ids, shape)[on_LKcc]
  return masks

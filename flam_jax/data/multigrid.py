"""Multigrid: a MiniGrid-style world with several independently moving agents.

FLAM (Sec 5) extends MiniGrid to K agents that each pick an action per step; the
model only sees the frames and must factor the dynamics into per-entity latent
actions. This module is numpy only (no gym, no display): it simulates episodes,
renders them, and writes them in the dataset format of `records.py` that
`pipeline.py` reads.

World rules:
  * The grid has `grid_size` cells per side; the outer ring is wall, and a
    `wall_density` fraction of the interior cells are random wall cells. Free
    cells that are cut off from the largest free region are walled in too, so
    every free cell can reach every other one.
  * Each agent has a cell (row, col) and a heading as in MiniGrid: 0 right
    (+col), 1 down (+row), 2 left (-col), 3 up (-row).
  * Per step, each agent takes one action: 0 turn left (heading - 1), 1 turn
    right (heading + 1), 2 forward, 3 stay. With probability `sticky_prob` it
    repeats its previous action, otherwise it draws uniformly from the 4
    actions (the first action is always uniform).
  * Simultaneous moves: agents are processed one at a time in a permutation
    drawn fresh each step from the episode rng. A forward move succeeds only if
    the target cell is not a wall and no agent occupies it at that moment (a
    cell vacated earlier in the same step is free; one entered earlier is
    taken). Blocked forward moves leave the agent in place; forward never
    changes the heading.

Rendering (multigrid_render.py): floor black, walls grey, agent k a MiniGrid triangle pointing along
its heading in colour `AGENT_COLORS[k]`. Frames are rendered from the per-pixel
entity-id mask (0 floor, 1 wall, 2 + k agent k) through a colour lookup table,
so frames and masks agree by construction. With 1 pixel per cell the triangle
is that pixel and headings are not visible; use at least 4 pixels per cell.

Episode e of a dataset with seed s is drawn from np.random.default_rng([s, e]),
so any episode can be regenerated alone.

CLI:
  python -m flam_jax.data.multigrid --out DIR --num_agents 4 --episodes 10000
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from typing import Any

from absl import flags
import numpy as np
import tqdm

from flam_jax import cli, filesystem
from flam_jax.data import records
from flam_jax.data.multigrid_render import COLOR_LUT, render_masks
from flam_jax.errors import ConfigError

# Actions.
TURN_LEFT = 0
TURN_RIGHT = 1
FORWARD = 2
STAY = 3
NUM_ACTIONS = 4

# Headings (MiniGrid convention) and their (d_row, d_col) unit steps.
RIGHT, DOWN, LEFT, UP = 0, 1, 2, 3
HEADING_DELTAS = np.array([[0, 1], [1, 0], [0, -1], [-1, 0]],
                          np.int32)  # [4, 2]

# Entity ids in masks.
FLOOR_ID, WALL_ID, FIRST_AGENT_ID = records.FLOOR_ID, records.WALL_ID, records.FIRST_AGENT_ID
MAX_AGENTS = 16

# Order in which the arrays of an episode are concatenated in a record.
FIELDS = ("frames", "masks", "actions", "positions", "headings")
FIELD_DTYPES = {
    "frames": "uint8",
    "masks": "uint8",
    "actions": "int32",
    "positions": "int32",
    "headings": "int32",
}
# On-disk dtypes: explicit little-endian, whatever the host.
RECORD_DTYPES = {
    f: np.dtype(d).newbyteorder("<") for f, d in FIELD_DTYPES.items()
}


@dataclasses.dataclass(frozen=True)
class MultigridConfig:
  """World and rendering settings of a Multigrid dataset."""

  grid_size: int = 32  # Cells per side, including the outer wall ring.
  resolution: int = 128  # Pixels per side; a multiple of grid_size.
  num_agents: int = 4  # K, in [1, 16].
  episode_length: int = 32  # Frames per episode (L).
  sticky_prob: float = 0.5  # P(repeat the previous action).
  wall_density: float = 0.05  # Fraction of interior cells that are walls.

  def __post_init__(self):
    if self.grid_size < 3:
      raise ConfigError(
          f"grid_size={self.grid_size} leaves no interior inside the wall ring;"
          " use grid_size >= 3")
    if self.resolution <= 0 or self.resolution % self.grid_size:
      nearest = self.grid_size * max(1, round(self.resolution / self.grid_size))
      raise ConfigError(
          f"resolution={self.resolution} is not a multiple of"
          f" grid_size={self.grid_size}; pick a resolution divisible by the"
          f" grid size (e.g. {nearest})")
    if not 1 <= self.num_agents <= MAX_AGENTS:
      raise ConfigError(
          f"num_agents={self.num_agents} is out of range; use 1..{MAX_AGENTS}")
    if self.episode_length < 2:
      raise ConfigError(
          f"episode_length={self.episode_length} is too short; use at least 2")
    if not 0.0 <= self.sticky_prob <= 1.0:
      raise ConfigError(
          f"sticky_prob={self.sticky_prob} is not a probability; use [0, 1]")
    if not 0.0 <= self.wall_density < 1.0:
      raise ConfigError(
          f"wall_density={self.wall_density} is out of range; use [0, 1)")
    if self.num_free_cells < self.num_agents:
      raise ConfigError(
          f"only {self.num_free_cells} free cells for"
          f" {self.num_agents} agents; lower wall_density or raise grid_size")

  @property
  def cell_size(self) -> int:
    """Pixels per cell side."""
    return self.resolution // self.grid_size

  @property
  def num_interior_walls(self) -> int:
    """Random wall cells inside the ring (before pockets are walled in)."""
    return int(round(self.wall_density * (self.grid_size - 2)**2))

  @property
  def num_free_cells(self) -> int:
    return (self.grid_size - 2)**2 - self.num_interior_walls


def field_shapes(cfg: MultigridConfig) -> dict[str, tuple[int, ...]]:
  """Per-episode array shapes, keyed by field name."""
  l, k, r = cfg.episode_length, cfg.num_agents, cfg.resolution
  return {
      "frames": (l, r, r, 3),
      "masks": (l, r, r),
      "actions": (l - 1, k),
      "positions": (l, k, 2),
      "headings": (l, k),
  }


def _flood_fill(free_GG: np.ndarray, seed_rc: tuple[int, int]) -> np.ndarray:
  """Cells 4-connected to seed_rc through free cells: bool [G, G]."""
  reach = np.zeros_like(free_GG)
  reach[seed_rc] = True
  while True:
    grown = reach.copy()
    grown[1:] |= reach[:-1]
    grown[:-1] |= reach[1:]
    grown[:, 1:] |= reach[:, :-1]
    grown[:, :-1] |= reach[:, 1:]
    grown &= free_GG
    if (grown == reach).all():
      return reach
    reach = grown


def make_walls(cfg: MultigridConfig, rng: np.random.Generator) -> np.ndarray:
  """Outer ring + random interior walls, free area connected: bool [G, G] (also the goal task's)."""
  g = cfg.grid_size
  walls_GG = np.ones((g, g), bool)
  interior = np.zeros(((g - 2)**2,), bool)
  interior[rng.choice(interior.size, cfg.num_interior_walls,
                      replace=False)] = True
  walls_GG[1:-1, 1:-1] = interior.reshape(g - 2, g - 2)
  # Keep only the largest free component; wall in the pockets.
  remaining = ~walls_GG
  best = np.zeros_like(remaining)
  while remaining.sum() > best.sum():
    seed_rc = tuple(np.argwhere(remaining)[0])
    comp = _flood_fill(~walls_GG, seed_rc)
    if comp.sum() > best.sum():
      best = comp
    remaining &= ~comp
  # Pockets are tiny at sane densities; never wall in below num_agents cells.
  if best.sum() >= cfg.num_agents:
    walls_GG = ~best
  return walls_GG


def generate_episode(cfg: MultigridConfig,
                     rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Simulates and renders one episode (see the module docstring for rules).

  Returns:
    frames: uint8 [L, H, W, 3].
    actions: int32 [L-1, K]; action of agent k between frames t and t+1.
    positions: int32 [L, K, 2]; (row, col) cell.
    headings: int32 [L, K].
    masks: uint8 [L, H, W]; 0 floor, 1 wall, 2+k agent k's triangle pixels.
  """
  g, k, l = cfg.grid_size, cfg.num_agents, cfg.episode_length
  walls_GG = make_walls(cfg, rng)

  # Spawn on distinct free cells with random headings.
  free_cells = np.flatnonzero(~walls_GG)
  spawn = rng.choice(free_cells, k, replace=False)
  pos_K2 = np.stack([spawn // g, spawn % g], axis=-1).astype(np.int32)
  head_K = rng.integers(0, 4, k).astype(np.int32)
  occupant_GG = np.full((g, g), -1, np.int32)  # Agent id per cell, or -1.
  occupant_GG[pos_K2[:, 0], pos_K2[:, 1]] = np.arange(k)

  positions = np.zeros((l, k, 2), np.int32)
  headings = np.zeros((l, k), np.int32)
  actions = np.zeros((l - 1, k), np.int32)
  positions[0], headings[0] = pos_K2, head_K
  prev_K = None
  for t in range(l - 1):
    fresh_K = rng.integers(0, NUM_ACTIONS, k)
    sticky_K = rng.random(k) < cfg.sticky_prob
    act_K = fresh_K if prev_K is None else np.where(sticky_K, prev_K, fresh_K)
    order = rng.permutation(k)
    pos_K2, head_K = pos_K2.copy(), head_K.copy()
    for i in order:
      if act_K[i] == TURN_LEFT:
        head_K[i] = (head_K[i] - 1) % 4
      elif act_K[i] == TURN_RIGHT:
        head_K[i] = (head_K[i] + 1) % 4
      elif act_K[i] == FORWARD:
        r, q = pos_K2[i] + HEADING_DELTAS[head_K[i]]
        if not walls_GG[r, q] and occupant_GG[r, q] < 0:
          occupant_GG[pos_K2[i, 0], pos_K2[i, 1]] = -1
          occupant_GG[r, q] = i
          pos_K2[i] = (r, q)
    actions[t], positions[t + 1], headings[t + 1] = act_K, pos_K2, head_K
    prev_K = act_K

  masks = render_masks(cfg, walls_GG, positions, headings)
  return {
      "frames": COLOR_LUT[masks],
      "actions": actions,
      "positions": positions,
      "headings": headings,
      "masks": masks,
  }


def episode_rng(seed: int, episode: int) -> np.random.Generator:
  """The rng of episode `episode` in a dataset generated with `seed`."""
  return np.random.default_rng([seed, episode])


def write_dataset(out_dir: str,
                  cfg: MultigridConfig,
                  num_episodes: int,
                  seed: int = 0,
                  episodes_per_shard: int = 256,
                  progress: bool = True) -> dict[str, Any]:
  """Generates num_episodes episodes into ArrayRecord shards; returns metadata.

  Episodes 0..N-1 are laid out train, then validation, then test (see
  `split_counts`); each split is cut into shards of at most episodes_per_shard
  episodes, one record per episode. metadata.json is written last, atomically,
  so its presence means the shards are complete.
  """
  if num_episodes < 1:
    raise ConfigError(f"episodes={num_episodes}; generate at least 1 episode")
  if episodes_per_shard < 1:
    raise ConfigError(
        f"episodes_per_shard={episodes_per_shard}; use at least 1")
  os.makedirs(out_dir, exist_ok=True)
  records.remove_metadata(out_dir)

  counts = records.split_counts(num_episodes)
  splits_meta = {}
  first = 0
  bar = tqdm.tqdm(total=num_episodes, desc="episodes", disable=not progress)
  for split in records.SPLITS:
    n = counts[split]
    episodes = (generate_episode(cfg, episode_rng(seed, e)) for e in range(first, first + n))
    splits_meta[split] = records.write_split(out_dir, split, episodes, n, episodes_per_shard,
                                             FIELDS, dtypes=RECORD_DTYPES, bar=bar)
    splits_meta[split]["first_episode"] = first
    first += n
  bar.close()

  shapes = field_shapes(cfg)
  metadata = {
      "format_version": records.FORMAT_VERSION,
      "generator": "flam_jax.data.multigrid",
      "config": dataclasses.asdict(cfg),
      "seed": seed,
      "num_episodes": num_episodes,
      "episodes_per_shard": episodes_per_shard,
      "splits": splits_meta,
      "byte_order": "little",
      "fields": [{
          "name": f,
          "dtype": FIELD_DTYPES[f],
          "shape": list(shapes[f])
      } for f in FIELDS],
      "record_bytes": sum(
          math.prod(shapes[f]) * np.dtype(FIELD_DTYPES[f]).itemsize
          for f in FIELDS),
      "ground_truth": list(records.GROUND_TRUTH_FIELDS),
  }
  records.write_metadata(out_dir, metadata)
  return metadata


def _define_flags():
  """CLI flags; defined only when run as a script, to keep FLAGS clean."""
  defaults = MultigridConfig()
  flags.DEFINE_string("out", None, "Output directory.", required=True)
  flags.DEFINE_integer("episodes", 10000, "Number of episodes (all splits).")
  flags.DEFINE_integer("num_agents", defaults.num_agents, "Agents per episode.")
  flags.DEFINE_integer("grid_size", defaults.grid_size,
                       "Cells per side, including the outer wall ring.")
  flags.DEFINE_integer("resolution", defaults.resolution, "Pixels per side.")
  flags.DEFINE_integer("episode_length", defaults.episode_length,
                       "Frames per episode.")
  flags.DEFINE_float("sticky_prob", defaults.sticky_prob,
                     "Probability an agent repeats its previous action.")
  flags.DEFINE_float("wall_density", defaults.wall_density,
                     "Fraction of interior cells that are walls.")
  flags.DEFINE_integer("seed", 0, "Dataset seed.")
  flags.DEFINE_integer("episodes_per_shard", 256, "Episodes per shard file.")


def _main(argv):
  del argv  # Stray arguments are refused by cli.run; errors become one line, exit 2.
  flags_ = flags.FLAGS
  cfg = MultigridConfig(
      grid_size=flags_.grid_size,
      resolution=flags_.resolution,
      num_agents=flags_.num_agents,
      episode_length=flags_.episode_length,
      sticky_prob=flags_.sticky_prob,
      wall_density=flags_.wall_density)
  filesystem.check_output_dir(flags_.out, "--out")
  meta = write_dataset(flags_.out, cfg, flags_.episodes, seed=flags_.seed,
                       episodes_per_shard=flags_.episodes_per_shard)
  counts = ", ".join(
      f"{s}={meta['splits'][s]['num_episodes']}" for s in records.SPLITS)
  print(f"wrote {meta['num_episodes']} episodes to"
        f" {os.path.abspath(flags_.out)} ({counts})")


def _undash(argv: list[str]) -> list[str]:
  """Accepts --num-agents for --num_agents (absl knows only underscores)."""
  out = []
  for arg in argv:
    if arg.startswith("--") and len(arg) > 2:
      name, eq, value = arg[2:].partition("=")
      arg = "--" + name.replace("-", "_") + eq + value
    out.append(arg)
  return out


if __name__ == "__main__":
  cli.run(_main, _define_flags, "python -m flam_jax.data.multigrid --out=<dir> [--num_agents=4] "
          "[--episodes=10000] [--resolution=128] [--grid_size=32]", argv=_undash(sys.argv))

"""The library's datasets as TFDS datasets (ArrayRecord, no TensorFlow): datasets by name.

  flam_multigrid/agents{K}   generated Multigrid with K = 1, 2, 3, 4, 8 or 16 agents at the
                             paper's scale (128 px, 32x32 grid, 32 frames, 2000 episodes);
                             other sizes get a name that spells them out, e.g.
                             agents2_r32_g8_l16_e100
  flam_video/<name>          an imported record dataset (`import_video`, `procgen`)

    python -m flam_jax.data.tfds_builders --name flam_multigrid/agents4 --data_dir ~/tfds
    python -m flam_jax.data.tfds_builders --name flam_video/sports --src data/sports --data_dir D

Once prepared, `tfds.data_source("flam_multigrid/agents4", data_dir=D)` reads it (random
access, usable as a grain source) without this module or TensorFlow, and
`train.py --config.data.name=flam_multigrid/agents4 --config.data.tfds_data_dir=D` trains
on it (imported once into the run's record directory). Examples hold the episode's
fields: frames uint8 [L, H, W, 3] and its ground truth (Multigrid: masks, actions,
positions, headings). Splits are the 80/10/10 of the record format. TFDS orders the
examples of a split by a hash of their key (the episode index), not by episode.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from flam_jax.data import multigrid, records
from flam_jax.errors import ConfigError, DataError

MULTIGRID_AGENTS = (1, 2, 3, 4, 8, 16)
MULTIGRID_NAME = re.compile(r"agents(\d+)(?:_r(\d+)_g(\d+)_l(\d+)_e(\d+))?")
PAPER_SCALE = dict(resolution=128, grid_size=32, episode_length=32, episodes=2000)


def _tensor(shape, dtype) -> tfds.features.Tensor:
  """A numpy-encoded tensor feature; images compressed with zlib (no TensorFlow needed)."""
  big = len(shape) >= 3
  return tfds.features.Tensor(shape=tuple(shape), dtype=np.dtype(dtype),
                              encoding="zlib" if big else "none")


def multigrid_name(num_agents: int, resolution: int, grid_size: int, episode_length: int,
                   episodes: int) -> str:
  """The config name: agents{K} at the paper's scale, else one that lists the sizes."""
  if dict(resolution=resolution, grid_size=grid_size, episode_length=episode_length,
          episodes=episodes) == PAPER_SCALE:
    return f"agents{num_agents}"
  return f"agents{num_agents}_r{resolution}_g{grid_size}_l{episode_length}_e{episodes}"


class MultigridBuilderConfig(tfds.core.BuilderConfig):
  """One generated Multigrid dataset: world settings, episode count and seed."""

  def __init__(self, *, world: multigrid.MultigridConfig, episodes: int, seed: int = 0):
    super().__init__(
        name=multigrid_name(world.num_agents, world.resolution, world.grid_size,
                            world.episode_length, episodes),
        description=f"Multigrid {dataclasses.asdict(world)}, {episodes} episodes, seed {seed}")
    self.world, self.episodes, self.seed = world, episodes, seed


def multigrid_config(num_agents: int, **sizes) -> MultigridBuilderConfig:
  sizes = dict(PAPER_SCALE, **sizes)
  episodes = sizes.pop("episodes")
  seed = sizes.pop("seed", 0)
  return MultigridBuilderConfig(world=multigrid.MultigridConfig(
      num_agents=num_agents, wall_density=0.0, **sizes), episodes=episodes, seed=seed)


class FlamMultigrid(tfds.core.GeneratorBasedBuilder):
  """Generated Multigrid (flam_jax.data.multigrid), episode e drawn from rng([seed, e])."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [multigrid_config(k) for k in MULTIGRID_AGENTS]

  def _info(self) -> tfds.core.DatasetInfo:
    shapes = multigrid.field_shapes(self.builder_config.world)
    return tfds.core.DatasetInfo(
        builder=self, description=self.builder_config.description,
        features=tfds.features.FeaturesDict(
            {f: _tensor(shapes[f], multigrid.FIELD_DTYPES[f]) for f in multigrid.FIELDS}))

  def _split_generators(self, dl_manager):
    del dl_manager
    counts = records.split_counts(self.builder_config.episodes)
    out, first = {}, 0
    for split in records.SPLITS:
      if counts[split]:
        out[split] = self._generate_examples(first, counts[split])
      first += counts[split]
    return out

  def _generate_examples(self, first: int, count: int):
    cfg = self.builder_config
    for e in range(first, first + count):
      yield e, multigrid.generate_episode(cfg.world, multigrid.episode_rng(cfg.seed, e))


class VideoBuilderConfig(tfds.core.BuilderConfig):
  """An imported record dataset (its directory) under a name."""

  def __init__(self, *, name: str, source_dir: str):
    super().__init__(name=name, description=f"flam_jax record dataset {source_dir}")
    self.source_dir = source_dir


class FlamVideo(tfds.core.GeneratorBasedBuilder):
  """A record-format dataset (import_video, procgen) as TFDS: one example per episode."""

  VERSION = tfds.core.Version("1.0.0")

  def _meta(self) -> dict[str, Any]:
    from flam_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    return pipeline.load_metadata(self.builder_config.source_dir)

  def _info(self) -> tfds.core.DatasetInfo:
    if not getattr(self.builder_config, "source_dir", None):  # Read back from files.
      return tfds.core.DatasetInfo(builder=self)
    meta = self._meta()
    return tfds.core.DatasetInfo(
        builder=self, description=self.builder_config.description,
        features=tfds.features.FeaturesDict({
            fd["name"]: _tensor([None, *fd["shape"][1:]], fd["dtype"]) for fd in meta["fields"]}))

  def _split_generators(self, dl_manager):
    del dl_manager
    meta = self._meta()
    return {s: self._generate_examples(s) for s in records.SPLITS
            if meta["splits"][s]["num_episodes"]}

  def _generate_examples(self, split: str):
    from flam_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    source = pipeline.WindowSource(self.builder_config.source_dir, split, window_length=1)
    for e in range(source.num_episodes):
      yield e, source.read_episode(e)


def prepare(name: str, data_dir: str, *, src: str = "", **sizes) -> str:
  """Prepares dataset `name` in data_dir (reused if prepared); returns its builder directory.

  name: "flam_multigrid/agents{K}" (sizes: resolution, grid_size, episode_length, episodes,
  seed override the paper's scale and rename the config), or "flam_video/<name>" with src
  the imported record directory.
  """
  family, _, config_name = name.partition("/")
  if family == "flam_multigrid":
    match = MULTIGRID_NAME.fullmatch(config_name)
    if not match:
      raise ConfigError(f"{name!r}: use flam_multigrid/agents<K> (K in {MULTIGRID_AGENTS}) or"
                        " flam_multigrid/agents<K>_r<px>_g<grid>_l<frames>_e<episodes>")
    num_agents = int(match.group(1))
    if match.group(2):  # The name spells out the sizes.
      named = dict(zip(("resolution", "grid_size", "episode_length", "episodes"),
                       map(int, match.group(2, 3, 4, 5))))
      clash = {k: v for k, v in sizes.items() if k in named and named[k] != v}
      if clash:
        raise ConfigError(f"{name!r} names other sizes than {clash}; drop them or the suffix")
      sizes = dict(sizes, **named)
    builder = FlamMultigrid(config=multigrid_config(num_agents, **sizes), data_dir=data_dir,
                            file_format="array_record")
  elif family == "flam_video":
    if not config_name or not src:
      raise ConfigError(f"{name!r}: flam_video/<name> needs --src, an imported record dataset")
    builder = FlamVideo(config=VideoBuilderConfig(name=config_name, source_dir=src),
                        data_dir=data_dir, file_format="array_record")
  else:
    raise ConfigError(f"unknown dataset family {family!r} in {name!r}; use flam_multigrid/"
                      "agents<K> or flam_video/<name>")
  builder.download_and_prepare()
  return str(builder.data_path)


def _main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  sizes = {k: getattr(f, k) for k in ("resolution", "grid_size", "episode_length", "episodes",
                                      "seed") if getattr(f, k) is not None}
  try:
    path = prepare(f.name, os.path.expanduser(f.data_dir), src=f.src, **sizes)
  except (ConfigError, DataError) as e:
    sys.exit(f"error: {e}")
  print(f"prepared {f.name} in {path}; read it with tfds.data_source({f.name!r},"
        f" data_dir={os.path.expanduser(f.data_dir)!r})")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("name", None, "flam_multigrid/agents<K> or flam_video/<name>.",
                      required=True)
  flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "TFDS data directory.")
  flags.DEFINE_string("src", "", "flam_video: the imported record dataset directory.")
  for _key in ("resolution", "grid_size", "episode_length", "episodes", "seed"):
    flags.DEFINE_integer(_key, None, f"flam_multigrid: {_key} (default: the paper's scale).")
  app.run(_main)

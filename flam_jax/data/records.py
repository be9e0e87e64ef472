"""The on-disk dataset format every source writes and `pipeline.py` reads.

A dataset directory holds, per split, ArrayRecord shards with one record per episode
(the raw little-endian bytes of each field, concatenated in the order of
`metadata.json`'s "fields"), and `metadata.json`, written last and atomically so its
presence means the shards are complete. Sources (the Multigrid simulator, the token
cache, other generators or importers) produce episode dicts and call `write_split`
/ `write_metadata`.

Entity-id masks, where a source has them: 0 floor, 1 wall, 2 + k agent k.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Sequence

from array_record.python import array_record_module
import numpy as np

from flam_jax.errors import ConfigError

FORMAT_VERSION = 1
SPLITS = ("train", "validation", "test")
METADATA_FILE = "metadata.json"
# group_size:1 makes each record its own chunk, so random access is one read.
WRITER_OPTIONS = "group_size:1"

# Entity ids of the per-pixel masks.
FLOOR_ID = 0
WALL_ID = 1
FIRST_AGENT_ID = 2


def split_counts(num_episodes: int) -> dict[str, int]:
  """Episodes per split, 80/10/10.

  validation and test get floor(10%) each, raised to 1 when num_episodes >= 3;
  train gets the rest. Fewer than 3 episodes all go to train.
  """
  if num_episodes < 3:
    return {"train": num_episodes, "validation": 0, "test": 0}
  n_eval = max(1, num_episodes // 10)
  return {
      "train": num_episodes - 2 * n_eval,
      "validation": n_eval,
      "test": n_eval,
  }


def shard_bounds(n: int, index: int, count: int) -> tuple[int, int]:
  """Contiguous [lo, hi) of n items for shard `index` of `count` (sizes differ by <= 1)."""
  if not 0 <= index < count:
    raise ConfigError(f"shard_index={index} is out of range for"
                      f" shard_count={count}")
  return n * index // count, n * (index + 1) // count


def serialize_episode(episode: dict[str, np.ndarray], fields: Sequence[str],
                      dtypes: dict[str, np.dtype] | None = None) -> bytes:
  """Raw little-endian bytes of `fields`, concatenated in order (`dtypes` override)."""
  dtypes = dtypes or {}
  return b"".join(
      np.ascontiguousarray(
          episode[f],
          dtype=dtypes.get(f, np.dtype(episode[f].dtype).newbyteorder("<"))).tobytes()
      for f in fields)


def write_split(out_dir: str, split: str, episodes: Iterable[dict[str, np.ndarray]],
                num_episodes: int, episodes_per_shard: int, fields: Sequence[str], *,
                dtypes: dict[str, np.dtype] | None = None, bar=None) -> dict[str, Any]:
  """Writes one split's episodes (in order) as ArrayRecord shards; returns its metadata."""
  num_shards = math.ceil(num_episodes / episodes_per_shard)
  episodes = iter(episodes)
  shards, sizes = [], []
  for i in range(num_shards):
    name = f"{split}-{i:05d}-of-{num_shards:05d}.array_record"
    size = min(episodes_per_shard, num_episodes - i * episodes_per_shard)
    writer = array_record_module.ArrayRecordWriter(os.path.join(out_dir, name), WRITER_OPTIONS)
    for _ in range(size):
      writer.write(serialize_episode(next(episodes), fields, dtypes))
      if bar is not None:
        bar.update(1)
    writer.close()
    shards.append(name)
    sizes.append(size)
  return {"num_episodes": num_episodes, "shards": shards, "shard_num_episodes": sizes}


def write_metadata(out_dir: str, metadata: dict[str, Any]) -> None:
  """metadata.json, written last and atomically: its presence means the shards are complete."""
  meta_path = os.path.join(out_dir, METADATA_FILE)
  tmp_path = meta_path + ".tmp"
  with open(tmp_path, "w") as f:
    json.dump(metadata, f, indent=2)
  os.replace(tmp_path, meta_path)


def remove_metadata(out_dir: str) -> None:
  """Deletes a stale metadata.json before rewriting shards, so it never describes half-new ones."""
  meta_path = os.path.join(out_dir, METADATA_FILE)
  if os.path.exists(meta_path):
    os.remove(meta_path)

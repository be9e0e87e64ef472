"""The library's record format: episodes as ArrayRecord shards plus metadata.json.

Any source (the Multigrid generator, `import_video`, Procgen, the token cache) writes
episodes through this module and `pipeline.WindowSource` reads them back:

  <dir>/metadata.json                     written last, atomically: present = complete
  <dir>/<split>-<i>-of-<n>.array_record   one record per episode, group_size:1

A record is the raw little-endian bytes of the episode's fields, concatenated in the
order of `metadata["fields"]`. Every field leads with time: L frames, or L-1 transitions
for `actions`. Field shapes in metadata give the per-frame tail; their first entry is
L (fixed-length datasets) or null (episodes of different lengths, listed per split in
`splits[split]["episode_lengths"]`).

Metadata keys every dataset has:
  format_version, generator, num_episodes, episodes_per_shard, seed, byte_order,
  config: {resolution (frame side, px), episode_length (the shortest episode),
           num_agents (columns of `actions`; 0 without actions), ...source settings},
  splits: {split: {num_episodes, shards, shard_num_episodes, first_episode
                   [, episode_lengths]}},
  fields: [{name, dtype, shape}],
  ground_truth: the optional ground-truth fields present (subset of GROUND_TRUTH_FIELDS);
    evaluation skips the metrics whose ground truth is absent.

Entity-id masks, where a source has them: 0 floor, 1 wall, 2 + k agent k.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping, Sequence

from array_record.python import array_record_module
import numpy as np

from flam_jax import filesystem
from flam_jax.errors import ConfigError, DataError

FORMAT_VERSION = 1
SPLITS = ("train", "validation", "test")
METADATA_FILE = "metadata.json"
# group_size:1 makes each record its own chunk, so random access is one read.
WRITER_OPTIONS = "group_size:1"
# Ground truth a dataset may carry beside `frames` (Multigrid also has `headings`).
# actions [L-1] or [L-1, K]; masks uint8 [L, H, W] entity id per pixel; positions [L, K, 2].
GROUND_TRUTH_FIELDS = ("actions", "masks", "positions", "headings")

# Entity ids of the per-pixel masks.
FLOOR_ID = 0
WALL_ID = 1
FIRST_AGENT_ID = 2


def time_length(field: str, episode_length: int) -> int:
  """Leading dimension of `field` in an episode of `episode_length` frames."""
  return episode_length - 1 if field == "actions" else episode_length


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


def split_of(index: int, counts: Mapping[str, int]) -> str:
  """The split of episode `index` when episodes are laid out train, validation, test."""
  for split in SPLITS:
    if index < counts.get(split, 0):
      return split
    index -= counts.get(split, 0)
  raise IndexError(f"episode {index} beyond the {sum(counts.values())} counted")


def shard_bounds(n: int, index: int, count: int) -> tuple[int, int]:
  """Contiguous [lo, hi) of n items for shard `index` of `count` (sizes differ by <= 1)."""
  if not 0 <= index < count:
    raise ConfigError(f"shard_index={index} is out of range for"
                      f" shard_count={count}")
  return n * index // count, n * (index + 1) // count


def _le(dtype) -> np.dtype:
  return np.dtype(dtype).newbyteorder("<")


def serialize_episode(episode: Mapping[str, np.ndarray], fields: Sequence[str],
                      dtypes: Mapping[str, Any] | None = None) -> bytes:
  """Raw little-endian bytes of `fields`, concatenated in order (cast to `dtypes` if given)."""
  dtypes = dtypes or {}
  return b"".join(
      np.ascontiguousarray(episode[f], dtype=_le(dtypes.get(f, episode[f].dtype))).tobytes()
      for f in fields)


def shard_name(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}.array_record"


def write_split(out_dir: str, split: str, episodes: Iterable[Mapping[str, np.ndarray]],
                num_episodes: int, episodes_per_shard: int, fields: Sequence[str], *,
                dtypes: Mapping[str, Any] | None = None, bar=None) -> dict[str, Any]:
  """Writes one split's episodes (in order) as ArrayRecord shards; returns its metadata."""
  num_shards = math.ceil(num_episodes / episodes_per_shard)
  episodes = iter(episodes)
  shards, sizes = [], []
  for i in range(num_shards):
    name = shard_name(split, i, num_shards)
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
  filesystem.write_json(os.path.join(out_dir, METADATA_FILE), metadata)


def remove_metadata(out_dir: str) -> None:
  """Makes `out_dir` and deletes a stale metadata.json, so it never describes half-new shards."""
  os.makedirs(out_dir, exist_ok=True)
  meta_path = os.path.join(out_dir, METADATA_FILE)
  if os.path.exists(meta_path):
    os.remove(meta_path)


def episode_lengths(meta: Mapping[str, Any], split: str) -> list[int]:
  """Frames per episode of `split` (fixed-length datasets list none: all are config's)."""
  info = meta["splits"][split]
  if "episode_lengths" in info:
    return [int(n) for n in info["episode_lengths"]]
  return [int(meta["config"]["episode_length"])] * int(info["num_episodes"])


def ground_truth(meta: Mapping[str, Any]) -> tuple[str, ...]:
  """The ground-truth fields a dataset holds (older Multigrid metadata: all its fields)."""
  if "ground_truth" in meta:
    return tuple(meta["ground_truth"])
  names = [fd["name"] for fd in meta["fields"]]
  return tuple(f for f in GROUND_TRUTH_FIELDS if f in names)


class EpisodeWriter:
  """Streams episodes into the record format, split by split; `finish` writes metadata.

  Shards are written under temporary names and renamed to `<split>-<i>-of-<n>` by
  `finish`, so split sizes need not be known up front. The first episode fixes each
  field's dtype and per-frame shape; a later episode that differs is a DataError naming
  its source. On any error `abort` deletes the shards written, and metadata.json (removed
  at the start) is never written, so nothing half-written is marked complete.
  """

  def __init__(self, out_dir: str, *, episodes_per_shard: int = 256, min_length: int = 2,
               primary: str = "frames"):
    self.out_dir = out_dir
    self.primary = primary  # The field every episode has (token caches: "tokens").
    self.episodes_per_shard = int(episodes_per_shard)
    self.min_length = int(min_length)
    remove_metadata(out_dir)
    self._written: list[str] = []
    self._writers: dict[str, Any] = {}
    self._splits = {s: dict(num_episodes=0, shards=[], shard_num_episodes=[],
                            episode_lengths=[]) for s in SPLITS}
    self._specs: dict[str, tuple[np.dtype, tuple[int, ...]]] | None = None
    self._order: tuple[str, ...] = ()

  def _check(self, episode: Mapping[str, np.ndarray], source: str) -> int:
    """Validates one episode against the first; returns its length."""
    if self.primary not in episode:
      raise DataError(f"{source} has no {self.primary}")
    frames = episode[self.primary]
    if self.primary == "frames" and (frames.ndim != 4 or frames.shape[-1] != 3
                                     or frames.dtype != np.uint8):
      raise DataError(f"{source}: frames are {frames.dtype} {frames.shape}, expected uint8"
                      " [T, H, W, 3]")
    length = frames.shape[0]
    if length < self.min_length:
      raise DataError(f"{source} has {length} frames, fewer than the {self.min_length} needed"
                      " (--min_frames, at least the training window); drop it, lower"
                      " --min_frames, or pass --skip_short")
    specs = {}
    for name, arr in episode.items():
      want = time_length(name, length)
      if arr.shape[:1] != (want,):
        raise DataError(f"{source}: {name} has {arr.shape[0] if arr.ndim else 0} steps for"
                        f" {length} frames; expected {want}")
      specs[name] = (np.dtype(arr.dtype), tuple(arr.shape[1:]))
    if self._specs is None:
      self._specs = specs
      self._order = (self.primary,) + tuple(sorted(set(specs) - {self.primary}))
    elif specs != self._specs:
      diff = sorted(n for n in set(specs) | set(self._specs) if specs.get(n) != self._specs.get(n))
      raise DataError(f"{source}: fields {diff} differ from the first episode's"
                      f" ({ {n: self._specs.get(n) for n in diff} } vs"
                      f" { {n: specs.get(n) for n in diff} }); give every episode the same"
                      " fields and frame size")
    return length

  def write(self, split: str, episode: Mapping[str, np.ndarray], source: str = "episode") -> None:
    """Appends one episode to `split`."""
    if split not in SPLITS:
      raise ValueError(f"split {split!r} is not one of {SPLITS}")
    length = self._check(episode, source)
    info = self._splits[split]
    if split not in self._writers:
      path = os.path.join(self.out_dir, f"{split}-{len(info['shards']):05d}.array_record.tmp")
      self._writers[split] = array_record_module.ArrayRecordWriter(path, WRITER_OPTIONS)
      self._written.append(path)
      info["shards"].append(path)
      info["shard_num_episodes"].append(0)
    self._writers[split].write(serialize_episode(episode, self._order))
    info["num_episodes"] += 1
    info["shard_num_episodes"][-1] += 1
    info["episode_lengths"].append(int(length))
    if info["shard_num_episodes"][-1] == self.episodes_per_shard:
      self._writers.pop(split).close()

  def abort(self) -> None:
    """Closes and deletes everything written; the directory holds no complete dataset."""
    for writer in self._writers.values():
      writer.close()
    self._writers.clear()
    for path in self._written:
      if os.path.exists(path):
        os.remove(path)

  def finish(self, *, generator: str, config: Mapping[str, Any], seed: int = 0,
             **extra) -> dict[str, Any]:
    """Renames the shards to their final names and writes metadata.json (last, atomically)."""
    for writer in self._writers.values():
      writer.close()
    self._writers.clear()
    if self._specs is None:
      self.abort()
      raise DataError(f"no episodes to write into {self.out_dir}")
    splits, first = {}, 0
    for split in SPLITS:
      info = self._splits[split]
      names = [shard_name(split, i, len(info["shards"])) for i in range(len(info["shards"]))]
      for tmp, name in zip(info["shards"], names):
        final = os.path.join(self.out_dir, name)
        os.replace(tmp, final)
        self._written.append(final)
      splits[split] = dict(info, shards=names, first_episode=first)
      first += info["num_episodes"]
    lengths = [n for info in splits.values() for n in info["episode_lengths"]]
    fixed = len(set(lengths)) == 1
    if fixed:
      for info in splits.values():
        del info["episode_lengths"]
    config = dict(config, episode_length=int(min(lengths)))
    if "frames" in self._specs:
      config["resolution"] = int(self._specs["frames"][1][0])
    actions = self._specs.get("actions")
    config["num_agents"] = 0 if actions is None else int(np.prod(actions[1]) or 1)
    metadata = dict(
        format_version=FORMAT_VERSION, generator=generator, config=config,
        seed=int(seed), num_episodes=len(lengths), episodes_per_shard=self.episodes_per_shard,
        splits=splits, byte_order="little",
        fields=[dict(name=n, dtype=self._specs[n][0].name,
                     shape=[time_length(n, lengths[0]) if fixed else None,
                            *self._specs[n][1]]) for n in self._order],
        ground_truth=[n for n in self._order if n in GROUND_TRUTH_FIELDS],
        **extra)
    if fixed:
      metadata["record_bytes"] = sum(
          int(np.prod(fd["shape"])) * np.dtype(fd["dtype"]).itemsize for fd in metadata["fields"])
    write_metadata(self.out_dir, metadata)
    return metadata

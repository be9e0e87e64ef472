"""Grain input pipeline over record-format shards: batches of fixed-length windows.

A dataset directory (`flam_jax.data.records`: written by the Multigrid generator,
`import_video`, Procgen or the token cache) holds metadata.json and, per split,
ArrayRecord shards with one record per episode. Training reads windows of
`window_length` consecutive frames whose starts are `window_stride` frames apart
inside an episode; episode e of L_e frames has W_e = (L_e - T) // stride + 1 windows,
and window indices run over the episodes of a split in order.

Pipeline (`make_dataset`):
  MapDataset.source(WindowSource)   # index -> window dict (read + decode)
  -> [lo:hi] slice for this process  # disjoint, contiguous, sizes differ <= 1
  -> shuffle(seed)                   # grain reseeds per epoch: seed + epoch
  -> repeat(num_epochs)              # None: forever
  -> batch(batch_size)               # per-process batch; may span epochs
  -> to_iter_dataset(read_options)
Everything before `to_iter_dataset` is index arithmetic, so the iterator state
is one integer per worker and `set_state` resumes exactly.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Iterator, Sequence

from absl import flags
from array_record.python import array_record_module
import grain
import numpy as np

from flam_jax.data import records
from flam_jax.errors import ConfigError
from flam_jax.errors import DataError

_GEN_CMD = ("python -m flam_jax.data.multigrid --out {dir} --num_agents K"
            " --episodes N")


def _regen_hint(data_dir: str, meta: dict[str, Any] | None = None) -> str:
  """The fix for a broken dataset: the exact command when metadata is known."""
  if meta is None:
    return "regenerate it with `" + _GEN_CMD.format(dir=data_dir) + "`"
  if meta.get("command"):  # Imported data records the command that wrote it.
    return f"re-create it with `{meta['command']}`"
  if meta.get("generator") != "flam_jax.data.multigrid":
    return f"re-create it with the command that wrote it ({meta.get('generator')})"
  cfg = meta["config"]
  args = " ".join(f"--{k} {v}" for k, v in cfg.items())
  return (f"regenerate it with `python -m flam_jax.data.multigrid --out"
          f" {data_dir} --episodes {meta['num_episodes']} {args}"
          f" --seed {meta['seed']}`")


def _shard_lists(
    meta: dict[str, Any]) -> list[tuple[list[str], list[int], int]]:
  """(shards, episodes per shard, episodes) per split; raises if malformed."""
  for value in (meta["config"]["resolution"], meta["config"]["episode_length"],
                meta["config"].get("num_agents", 0), meta["num_episodes"],
                meta["seed"]):
    int(value)
  for fd in meta["fields"]:
    np.dtype(fd["dtype"])
    list(fd["shape"])
  return [(list(s["shards"]), list(s["shard_num_episodes"]), s["num_episodes"])
          for s in meta["splits"].values()]


def load_metadata(data_dir: str) -> dict[str, Any]:
  """Reads metadata.json and checks that every listed shard is present."""
  if not os.path.isdir(data_dir):
    raise DataError(f"dataset directory {data_dir} does not exist;"
                    f" generate it with `{_GEN_CMD.format(dir=data_dir)}`")
  path = os.path.join(data_dir, records.METADATA_FILE)
  if not os.path.isfile(path):
    raise DataError(
        f"{data_dir} has no {records.METADATA_FILE} (not a dataset, or"
        f" generation did not finish); generate it with"
        f" `{_GEN_CMD.format(dir=data_dir)}`")
  try:
    with open(path) as f:
      meta = json.load(f)
    version = meta["format_version"]
    shard_lists = _shard_lists(meta)
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise DataError(f"cannot read {path} ({type(e).__name__}: {e});"
                    f" {_regen_hint(data_dir)}") from e
  for split, (_, _, total) in zip(meta["splits"], shard_lists):
    if "episode_lengths" in meta["splits"][split] and len(
        meta["splits"][split]["episode_lengths"]) != total:
      raise DataError(f"{path} lists {len(meta['splits'][split]['episode_lengths'])} episode"
                      f" lengths for {total} {split} episodes; {_regen_hint(data_dir, meta)}")
  if version != records.FORMAT_VERSION:
    raise DataError(
        f"{path} has format_version={version}, this code reads"
        f" {records.FORMAT_VERSION}; {_regen_hint(data_dir)}")
  for shards, sizes, total in shard_lists:
    if len(shards) != len(sizes) or sum(sizes) != total:
      raise DataError(f"{path} lists inconsistent shard sizes;"
                      f" {_regen_hint(data_dir, meta)}")
    for name in shards:
      shard_path = os.path.join(data_dir, name)
      if not os.path.isfile(shard_path):
        raise DataError(f"shard {shard_path} listed in {path} is missing;"
                        f" {_regen_hint(data_dir, meta)}")
      if os.path.getsize(shard_path) == 0:
        raise DataError(f"shard {shard_path} is empty;"
                        f" {_regen_hint(data_dir, meta)}")
  return meta


def _check_window_length(metadata: dict[str, Any], window_length: int):
  if window_length < 1:
    raise ConfigError(f"window_length={window_length}; use at least 1")
  length = metadata["config"]["episode_length"]  # The shortest episode.
  if window_length > length:
    fix = (f"regenerate with --episode_length {window_length}"
           if metadata.get("generator") == "flam_jax.data.multigrid" else
           f"re-import with --min_frames {window_length} (or --skip_short)")
    raise DataError(
        f"window_length={window_length} is longer than the dataset's shortest"
        f" episode ({length} frames); {fix} or use a window of at most {length} frames")


def validate(metadata: dict[str, Any],
             *,
             image_size: int,
             window_length: int,
             num_agents: int | None = None) -> None:
  """Checks that a dataset matches the model config; DataError if not."""
  cfg = metadata["config"]
  res = cfg["resolution"]
  if res != image_size:
    raise DataError(
        f"dataset frames are {res}x{res} but"
        f" config.data.image_size={image_size}; regenerate or set"
        f" --config.data.image_size={res}")
  _check_window_length(metadata, window_length)
  if num_agents is not None and num_agents != cfg.get("num_agents", 0):
    raise DataError(
        f"dataset has {cfg.get('num_agents', 0)} agents but the config asks for"
        f" num_agents={num_agents}; regenerate with --num_agents {num_agents}"
        f" or set num_agents={cfg.get('num_agents', 0)}")


def _short_reason(e: Exception) -> str:
  """First clause of a (riegeli) error message, e.g. 'chunk hash mismatch'."""
  text = str(e).strip().splitlines()[0] if str(e).strip() else ""
  text = text.split(" (")[0].split(";")[0][:100]
  return text or type(e).__name__


class WindowSource:
  """Random access over the windows of one split: index -> dict of arrays.

  Items: frames uint8 [T,H,W,3] and whatever ground truth the dataset holds, e.g.
  Multigrid's masks uint8 [T,H,W], actions int32 [T-1,K], positions int32 [T,K,2],
  headings int32 [T,K] (or the subset in `fields`). Episodes may differ in length.
  Picklable for grain workers: it holds paths and a grain ArrayRecordDataSource,
  whose readers are reopened lazily after unpickling; nothing is cached.
  """

  def __init__(self,
               data_dir: str,
               split: str,
               *,
               window_length: int,
               window_stride: int = 1,
               fields: Sequence[str] | None = None,
               metadata: dict[str, Any] | None = None):
    meta = load_metadata(data_dir) if metadata is None else metadata
    if split not in meta["splits"]:
      raise DataError(f"{data_dir} has no split {split!r}; use one of"
                      f" {', '.join(meta['splits'])}")
    info = meta["splits"][split]
    if info["num_episodes"] == 0:
      raise DataError(
          f"split {split!r} of {data_dir} has no episodes; regenerate with"
          " --episodes >= 3 so that every split gets one")
    lengths = np.asarray(records.episode_lengths(meta, split), np.int64)
    _check_window_length(meta, window_length)
    if window_stride < 1:
      raise ConfigError(f"window_stride={window_stride}; use at least 1")
    known = [fd["name"] for fd in meta["fields"]]
    fields = tuple(known if fields is None else fields)
    unknown = sorted(set(fields) - set(known))
    if unknown:
      raise ConfigError(f"unknown fields {unknown}; pick from {known}")

    self.data_dir = data_dir
    self._meta = {k: meta.get(k) for k in ("config", "num_episodes", "seed", "generator",
                                             "command")}
    self.split = split
    self.window_length = window_length
    self.window_stride = window_stride
    self.fields = fields
    self.num_episodes = info["num_episodes"]
    self.episode_lengths = lengths
    per_episode = (lengths - window_length) // window_stride + 1
    # Equal for fixed-length datasets (Multigrid); None when episodes differ.
    self.windows_per_episode = int(per_episode[0]) if len(set(per_episode)) == 1 else None
    self._window_ends = np.cumsum(per_episode)
    self._paths = [os.path.join(data_dir, n) for n in info["shards"]]
    self._shard_ends = np.cumsum(info["shard_num_episodes"]).tolist()
    # (name, little-endian dtype, per-frame shape) per field, in record order.
    self._fields = [(fd["name"], np.dtype(fd["dtype"]).newbyteorder("<"), tuple(fd["shape"][1:]))
                    for fd in meta["fields"]]
    self._check_shards(info["shard_num_episodes"])
    # "path[0:n]" tells the source the record count, so it opens no file here.
    self._records = grain.sources.ArrayRecordDataSource([
        f"{p}[0:{n}]" for p, n in zip(self._paths, info["shard_num_episodes"])
    ])

  def _check_shards(self, sizes: Sequence[int]) -> None:
    """Opens each shard once: it must be readable and hold its episodes."""
    for path, size in zip(self._paths, sizes):
      try:
        reader = array_record_module.ArrayRecordReader(path)
        ok, n = reader.ok(), reader.num_records()
        reader.close()
      except (RuntimeError, ValueError, OSError) as e:
        raise DataError(f"shard {path} is unreadable ({_short_reason(e)});"
                        f" {_regen_hint(self.data_dir, self._meta)}") from e
      if not ok or n != size:
        raise DataError(
            f"shard {path} is corrupt (holds {n} readable episodes, metadata"
            f" says {size}); {_regen_hint(self.data_dir, self._meta)}")

  def __len__(self) -> int:
    return int(self._window_ends[-1])

  def __repr__(self) -> str:
    return (f"WindowSource({self.data_dir!r}, {self.split!r},"
            f" window_length={self.window_length},"
            f" window_stride={self.window_stride})")

  def window_index(self, index: int) -> tuple[int, int]:
    """Window index -> (episode in split, first frame)."""
    if not 0 <= index < len(self):
      raise IndexError(f"window {index} out of range [0, {len(self)})")
    episode = int(np.searchsorted(self._window_ends, index, side="right"))
    first = int(self._window_ends[episode - 1]) if episode else 0
    return episode, (int(index) - first) * self.window_stride

  def episode_of(self, indices: np.ndarray) -> np.ndarray:
    """Window indices -> their episodes in the split (vectorised `window_index`)."""
    return np.searchsorted(self._window_ends, np.asarray(indices), side="right")

  def _shard_path(self, episode: int) -> str:
    return self._paths[int(np.searchsorted(self._shard_ends, episode,
                                           side="right"))]

  def read_episode(self, episode: int) -> dict[str, np.ndarray]:
    """Full episode arrays (selected fields), e.g. for evaluation."""
    return self._decode(episode, 0, None)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    episode, start = self.window_index(index)
    return self._decode(episode, start, self.window_length)

  def _decode(self, episode: int, start: int,
              length: int | None) -> dict[str, np.ndarray]:
    """Reads one record and slices frames [start, start + length)."""
    try:
      raw = self._records[episode]
    except (RuntimeError, ValueError, OSError) as e:
      raise DataError(
          f"shard {self._shard_path(episode)} is corrupt ({_short_reason(e)});"
          f" {_regen_hint(self.data_dir, self._meta)}") from e
    num_frames = int(self.episode_lengths[episode])
    layout, offset = [], 0
    for name, dtype, tail in self._fields:
      shape = (records.time_length(name, num_frames),) + tail
      layout.append((name, dtype, shape, offset))
      offset += int(np.prod(shape)) * dtype.itemsize
    if len(raw) != offset:
      raise DataError(
          f"shard {self._shard_path(episode)} has a record of {len(raw)}"
          f" bytes, expected {offset};"
          f" {_regen_hint(self.data_dir, self._meta)}")
    out = {}
    for name, dtype, shape, offset in layout:
      if name not in self.fields:
        continue
      full = np.frombuffer(raw, dtype, int(np.prod(shape)), offset).reshape(shape)
      if length is None:
        stop = None
      else:  # Actions are transitions: one fewer than frames.
        stop = start + length - (1 if name == "actions" else 0)
      out[name] = np.array(full[start:stop], dtype=dtype.newbyteorder("="))
    return out


def make_dataset(data_dir: str,
                 split: str,
                 *,
                 window_length: int,
                 batch_size: int,
                 seed: int,
                 shuffle: bool = True,
                 num_epochs: int | None = None,
                 window_stride: int = 1,
                 shard_by_process: bool = True,
                 shard_index: int | None = None,
                 shard_count: int | None = None,
                 drop_remainder: bool = True,
                 fields: Sequence[str] | None = None,
                 read_options: grain.ReadOptions | None = None
                ) -> grain.IterDataset:
  """Batches of windows for this process, as a grain IterDataset.

  Args:
    data_dir: dataset directory with metadata.json.
    split: "train", "validation" or "test".
    window_length: frames per window (T).
    batch_size: per-process batch size.
    seed: shuffle seed in [0, 2**32); epoch e is shuffled with seed + e.
    shuffle: shuffle windows (off: dataset order, for evaluation).
    num_epochs: passes over the windows; None repeats forever.
    window_stride: frames between consecutive window starts in an episode.
    shard_by_process: give each JAX process a disjoint slice of the windows
      (call after jax.distributed.initialize on multi-host runs).
    shard_index: this process's slice (default jax.process_index()).
    shard_count: number of slices (default jax.process_count()).
    drop_remainder: drop a final partial batch (only matters if finite).
    fields: subset of the record fields to return (default all).
    read_options: thread prefetch of batches; default none (synchronous).

  Returns:
    IterDataset of dicts of [B, ...] numpy arrays.
  """
  if batch_size < 1:
    raise ConfigError(f"batch_size={batch_size}; use at least 1")
  if num_epochs is not None and num_epochs < 1:
    raise ConfigError(f"num_epochs={num_epochs}; use None or at least 1")
  if shuffle and not 0 <= seed < 2**32:
    raise ConfigError(f"seed={seed}; the shuffle seed must be in [0, 2**32)")
  source = WindowSource(data_dir, split, window_length=window_length,
                        window_stride=window_stride, fields=fields)
  ds = grain.MapDataset.source(source)
  if shard_by_process:
    if shard_index is None or shard_count is None:
      import jax  # pylint: disable=g-import-not-at-top
      shard_index = jax.process_index() if shard_index is None else shard_index
      shard_count = jax.process_count() if shard_count is None else shard_count
    lo, hi = records.shard_bounds(len(ds), shard_index, shard_count)
    ds = ds[lo:hi]
    if len(ds) == 0:  # pylint: disable=g-explicit-length-test
      raise DataError(
          f"split {split!r} of {data_dir} has {len(source)} windows, too few"
          f" for {shard_count} processes; generate more episodes")
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  if len(ds) == 0:  # pylint: disable=g-explicit-length-test
    raise DataError(
        f"split {split!r} of {data_dir} gives this process fewer windows than"
        f" batch_size={batch_size}; lower the batch size or generate more"
        " episodes")
  if read_options is None:
    read_options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  return ds.to_iter_dataset(read_options)


def make_iterator(data_dir: str,
                  split: str,
                  *,
                  window_length: int,
                  batch_size: int,
                  seed: int,
                  num_workers: int = 0,
                  prefetch_buffer_size: int = 2,
                  num_threads: int = 2,
                  **kwargs) -> grain.DatasetIterator:
  """Checkpointable iterator over `make_dataset` batches.

  Args:
    data_dir, split, window_length, batch_size, seed: see `make_dataset`.
    num_workers: > 0 prepares batches in that many worker processes
      (mp_prefetch; each worker reads synchronously); 0 uses `num_threads`
      threads in this process.
    prefetch_buffer_size: batches buffered (per worker when num_workers > 0).
    num_threads: reader threads when num_workers == 0.
    **kwargs: the remaining `make_dataset` arguments.

  Returns:
    A grain DatasetIterator; `get_state()`/`set_state()` resume exactly, and the
    batch sequence does not depend on num_workers.
  """
  if num_workers < 0:
    raise ConfigError(f"num_workers={num_workers}; use 0 or more")
  if num_workers > 0:
    read_options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  else:
    read_options = grain.ReadOptions(num_threads=num_threads,
                                     prefetch_buffer_size=prefetch_buffer_size)
  ds = make_dataset(data_dir, split, window_length=window_length,
                    batch_size=batch_size, seed=seed, read_options=read_options,
                    **kwargs)
  if num_workers > 0:
    # Grain workers read absl flags; outside app.run nothing parsed them.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(
        grain.MultiprocessingOptions(
            num_workers=num_workers,
            per_worker_buffer_size=prefetch_buffer_size))
  return iter(ds)


def measure_throughput(iterator: Iterator[dict[str, np.ndarray]],
                       num_batches: int,
                       warmup: int = 1) -> float:
  """Frames per second (batch * window frames) over num_batches batches.

  Frames are counted on `frames`, or on `tokens` for a token-cache dataset. The first
  `warmup` batches are drawn untimed (worker start-up, file opens).
  """
  for _ in range(warmup):
    next(iterator)
  frames = 0
  start = time.perf_counter()
  for _ in range(num_batches):
    batch = next(iterator)
    frames += int(np.prod(batch["frames" if "frames" in batch else "tokens"].shape[:2]))
  return frames / max(time.perf_counter() - start, 1e-9)

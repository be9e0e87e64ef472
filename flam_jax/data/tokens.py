"""Token cache: a frozen tokenizer's codebook indices for every frame, extracted once.

The latent action stage never looks at pixels: it reads `tokens` int32 [L, h, w] per
episode (plus whatever ground truth the source has besides masks: actions, positions,
headings, for the WM baseline and the metrics) from a dataset in the same record format
as the frames (`flam_jax.data.records`), so the same grain pipeline serves it.
`metadata.json` records which tokenizer checkpoint made it from which dataset (its path
and a hash of its metadata); a cache made by another checkpoint or from other data is
rebuilt. Runs that share a dataset and a tokenizer may share one cache directory
(`config.lam.token_cache_dir`): a lock file beside it makes concurrent runs on one
host build it once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from typing import Any, Callable, Iterator

import numpy as np
import tqdm

from flam_jax.data import pipeline, records

# Ground truth not copied into the cache: pixel masks are read from the frames dataset.
PIXEL_FIELDS = ("frames", "masks")


def data_fingerprint(data_dir: str) -> dict[str, str]:
  """Which dataset a cache was made from: its absolute path and a hash of its metadata."""
  with open(os.path.join(data_dir, records.METADATA_FILE), "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()[:16]
  return dict(data=os.path.realpath(data_dir), data_metadata=digest)


@contextlib.contextmanager
def _locked(out_dir: str):
  """Holds an exclusive lock on `<out_dir>.lock` (one builder per cache on this host)."""
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  with open(os.path.abspath(out_dir) + ".lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _matches(out_dir: str, tag: dict[str, Any]) -> bool:
  try:
    return pipeline.load_metadata(out_dir).get("tokens", {}).get("tag") == tag
  except Exception:  # pylint: disable=broad-except
    return False


def _stability_counts(frames_elHWc: np.ndarray, tokens_elhw: np.ndarray) -> np.ndarray:
  """[patch transitions, pixel-identical patches, of those the ones whose token is kept].

  A tokenizer that is stable for unchanged content keeps the token of every patch whose
  pixels do not change between consecutive frames; the copy baseline and the world
  model's easy default both rely on it.
  """
  e, l, height, width, _ = frames_elHWc.shape
  h, w = tokens_elhw.shape[2:]
  patches = frames_elHWc.reshape(e, l, h, height // h, w, width // w, 3)
  unchanged = np.all(patches[:, 1:] == patches[:, :-1], axis=(3, 5, 6))  # [E, L-1, h, w]
  kept = tokens_elhw[:, 1:] == tokens_elhw[:, :-1]
  return np.array([unchanged.size, unchanged.sum(), (unchanged & kept).sum()], np.int64)


def _encoded(source: pipeline.WindowSource, encode: Callable[[np.ndarray], np.ndarray],
             frames_per_call: int, stability: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
  """Episodes of `source` with frames replaced by tokens; frames_per_call frames an encode.

  Adds each episode's `_stability_counts` to `stability` in place.
  """
  pending: list[dict[str, np.ndarray]] = []

  def flush():
    frames = np.concatenate([ep["frames"] for ep in pending])  # [F, H, W, 3]
    tokens = []
    for lo in range(0, len(frames), frames_per_call):
      chunk = frames[lo:lo + frames_per_call]
      padded = np.zeros((frames_per_call,) + chunk.shape[1:], np.uint8)
      padded[:len(chunk)] = chunk
      tokens.append(np.asarray(encode(padded))[:len(chunk)].astype(np.int32))
    tokens = np.concatenate(tokens)
    first = 0
    for ep in pending:
      n = len(ep["frames"])
      stability[:] += _stability_counts(ep["frames"][None], tokens[None, first:first + n])
      yield dict({k: v for k, v in ep.items() if k not in PIXEL_FIELDS},
                 tokens=tokens[first:first + n])
      first += n
    pending.clear()

  buffered = 0
  for e in range(source.num_episodes):
    pending.append(source.read_episode(e))
    buffered += len(pending[-1]["frames"])
    if buffered >= frames_per_call:
      yield from flush()
      buffered = 0
  if pending:
    yield from flush()


def cache_tokens(data_dir: str, out_dir: str,
                 encode_fn: Callable[[np.ndarray], np.ndarray], *,
                 tag: dict[str, Any], frames_per_call: int = 256,
                 progress: bool = True) -> dict[str, Any]:
  """Encodes every frame of `data_dir` into `out_dir` unless a cache with `tag` is there.

  Args:
    data_dir: a frames dataset (Multigrid or imported).
    out_dir: where the token dataset goes.
    encode_fn: frames uint8 [F, H, W, 3] -> indices [F, h, w]; called with F =
      `frames_per_call` always (the last call is padded), so it compiles once.
    tag: identifies the tokenizer (`loading.tokenizer_cache_tag`: checkpoint path, step,
      fingerprint of its parameters); stored in metadata with the dataset's fingerprint
      (`data_fingerprint`).
    frames_per_call: frames per encode call.
    progress: show a progress bar.

  Returns:
    The token dataset's metadata.
  """
  tag = dict(tag, **data_fingerprint(data_dir))
  if _matches(out_dir, tag):  # The common case, without the lock.
    return pipeline.load_metadata(out_dir)
  with _locked(out_dir):
    if _matches(out_dir, tag):  # Another run built it while this one waited.
      return pipeline.load_metadata(out_dir)
    return _build(data_dir, out_dir, encode_fn, tag, frames_per_call, progress)


def _build(data_dir: str, out_dir: str, encode_fn: Callable[[np.ndarray], np.ndarray],
           tag: dict[str, Any], frames_per_call: int, progress: bool) -> dict[str, Any]:
  """Encodes `data_dir` into `out_dir` (replacing what is there); see `cache_tokens`."""
  source_meta = pipeline.load_metadata(data_dir)
  if os.path.isdir(out_dir):
    shutil.rmtree(out_dir)
  fields = [fd["name"] for fd in source_meta["fields"] if fd["name"] not in ("masks",)]
  sizes = {s: info["num_episodes"] for s, info in source_meta["splits"].items()}
  writer = records.EpisodeWriter(out_dir, episodes_per_shard=source_meta["episodes_per_shard"],
                                 min_length=1, primary="tokens")
  bar = tqdm.tqdm(total=source_meta["num_episodes"], desc="tokenizing", disable=not progress)
  grid = None
  stability = np.zeros(3, np.int64)  # [patch transitions, pixel-unchanged, ... token kept too]
  try:
    for split, n in sizes.items():
      if not n:
        continue
      source = pipeline.WindowSource(data_dir, split, window_length=1, fields=fields,
                                     metadata=source_meta)
      for episode in _encoded(source, encode_fn, frames_per_call, stability):
        grid = list(episode["tokens"].shape[1:])
        writer.write(split, episode, source=data_dir)
        bar.update(1)
  except BaseException:
    writer.abort()
    raise
  finally:
    bar.close()
  token_stability = dict(
      unchanged_patch_fraction=float(stability[1] / max(stability[0], 1)),
      token_kept_if_unchanged=float(stability[2] / max(stability[1], 1)))
  if progress:
    print(f"token stability: {100 * token_stability['token_kept_if_unchanged']:.1f}% of the "
          f"patches whose pixels do not change keep their token "
          f"({100 * token_stability['unchanged_patch_fraction']:.1f}% of patches do not change)",
          flush=True)
  keep = {k: v for k, v in source_meta.items()
          if k not in ("splits", "fields", "record_bytes", "ground_truth", "format_version",
                       "generator", "config", "seed", "num_episodes", "episodes_per_shard",
                       "byte_order")}
  return writer.finish(generator=source_meta["generator"], config=source_meta["config"],
                       seed=source_meta["seed"], **keep,
                       tokens=dict(tag=tag, source=os.path.abspath(data_dir), grid=grid,
                                   stability=token_stability))

"""Token cache: a frozen tokenizer's codebook indices for every frame, extracted once.

The latent action stage never looks at pixels: it reads `tokens` int32 [L, h, w] per
episode (plus the ground-truth actions, positions and headings for the WM baseline and
the metrics) from a dataset in the same ArrayRecord format as the frames, so the same
grain pipeline (`flam_jax.data.pipeline`) serves it. `metadata.json` records which
tokenizer checkpoint made it; a cache made by another checkpoint is rebuilt.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Callable

import numpy as np
import tqdm

from flam_jax.data import pipeline, records

TOKEN_FIELDS = ("tokens", "actions", "positions", "headings")


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


def cache_tokens(data_dir: str, out_dir: str,
                 encode_fn: Callable[[np.ndarray], np.ndarray], *,
                 tag: dict[str, Any], frames_per_call: int = 256,
                 progress: bool = True) -> dict[str, Any]:
  """Encodes every frame of `data_dir` into `out_dir` unless a cache with `tag` is there.

  Args:
    data_dir: a Multigrid dataset (frames).
    out_dir: where the token dataset goes.
    encode_fn: frames uint8 [F, H, W, 3] -> indices [F, h, w]; called with F =
      `frames_per_call` always (the last call is padded), so it compiles once.
    tag: identifies the tokenizer (checkpoint path and step); stored in metadata.
    frames_per_call: frames per encode call.
    progress: show a progress bar.

  Returns:
    The token dataset's metadata.
  """
  if _matches(out_dir, tag):
    return pipeline.load_metadata(out_dir)
  source_meta = pipeline.load_metadata(data_dir)
  if os.path.isdir(out_dir):
    shutil.rmtree(out_dir)
  os.makedirs(out_dir)

  length = source_meta["config"]["episode_length"]
  size = source_meta["config"]["resolution"]
  probe = encode_fn(np.zeros((frames_per_call, size, size, 3), np.uint8))
  grid = tuple(probe.shape[1:])
  episodes_per_call = max(1, frames_per_call // length)
  stability = np.zeros(3, np.int64)  # [patch transitions, pixel-unchanged, ... token kept too]

  def encoded_episodes(split: str):
    source = pipeline.WindowSource(
        data_dir, split, window_length=length,
        fields=("frames", "actions", "positions", "headings"), metadata=source_meta)
    for first in range(0, source.num_episodes, episodes_per_call):
      chunk = [source.read_episode(e)
               for e in range(first, min(first + episodes_per_call, source.num_episodes))]
      frames = np.concatenate([ep["frames"] for ep in chunk])  # [E*L, H, W, 3]
      padded = np.zeros((frames_per_call,) + frames.shape[1:], np.uint8)
      padded[:len(frames)] = frames
      tokens = np.asarray(encode_fn(padded))[:len(frames)].astype(np.int32)
      stability[:] += _stability_counts(frames.reshape((len(chunk), length) + frames.shape[1:]),
                                        tokens.reshape((len(chunk), length) + grid))
      for i, ep in enumerate(chunk):
        yield dict(tokens=tokens[i * length:(i + 1) * length], actions=ep["actions"],
                   positions=ep["positions"], headings=ep["headings"])

  splits = {}
  bar = tqdm.tqdm(total=source_meta["num_episodes"], desc="tokenizing", disable=not progress)
  for split, info in source_meta["splits"].items():
    splits[split] = records.write_split(
        out_dir, split, encoded_episodes(split), info["num_episodes"],
        source_meta["episodes_per_shard"], fields=TOKEN_FIELDS, bar=bar) if info["num_episodes"] else dict(
            num_episodes=0, shards=[], shard_num_episodes=[])
    splits[split]["first_episode"] = info.get("first_episode", 0)
  bar.close()

  token_stability = dict(
      unchanged_patch_fraction=float(stability[1] / max(stability[0], 1)),
      token_kept_if_unchanged=float(stability[2] / max(stability[1], 1)))
  if progress:
    print(f"token stability: {100 * token_stability['token_kept_if_unchanged']:.1f}% of the "
          f"patches whose pixels do not change keep their token "
          f"({100 * token_stability['unchanged_patch_fraction']:.1f}% of patches do not change)",
          flush=True)
  shapes = {fd["name"]: fd["shape"] for fd in source_meta["fields"]}
  shapes["tokens"] = [length, *grid]
  fields = [dict(name=f, dtype="int32", shape=list(shapes[f])) for f in TOKEN_FIELDS]
  metadata = dict(
      source_meta, splits=splits, fields=fields,
      record_bytes=sum(int(np.prod(fd["shape"])) * 4 for fd in fields),
      tokens=dict(tag=tag, source=os.path.abspath(data_dir), grid=list(grid),
                  stability=token_stability))
  records.write_metadata(out_dir, metadata)
  return metadata

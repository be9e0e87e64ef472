"""Imports video into the library's record format, so `train.py` trains on it.

    python -m flam_jax.data.import_video --src DIR_OR_FILE --format mp4 --out data/myvideo \
        [--image_size 128] [--frame_skip 2] [--max_episodes N] [--chunk_length 64] ...
    python train.py --config=configs/video.py:tokenizer --workdir=W --config.data.dir=data/myvideo

Each source episode (a file, a folder of frames, a Minari episode, a TFDS example) is read
by `video_readers`, then:
  * every `frame_skip`-th frame is kept (ground truth likewise; the action kept for a
    skipped interval is the one taken at its first frame);
  * frames are centre-cropped to a square and resized to image_size x image_size
    (bilinear; masks nearest); positions are stored as given, not rescaled;
  * with `chunk_length`, cut into consecutive episodes of that many frames (a remainder
    shorter than min_frames is dropped);
  * split: the source's own split if it defines one (TFDS/RLDS), else 80/10/10 by
    source episode in listed (natural filename) order, so chunks of one video never
    straddle splits; a source of fewer than 3 episodes is split by its chunks instead.
The result is written atomically (metadata.json last); a second run with the same
arguments on unchanged files reuses it.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import sys
import time
from typing import Any, Iterator, Sequence

import numpy as np
import tqdm

from flam_jax.data import records, video_readers
from flam_jax.errors import ConfigError, DataError

GENERATOR = "flam_jax.data.import_video"


def center_crop_resize(frames_thwc: np.ndarray, image_size: int, nearest: bool = False
                       ) -> np.ndarray:
  """[T, H, W(, C)] -> centre square crop, resized to image_size (0: crop only)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h, w = frames_thwc.shape[1:3]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  crop = frames_thwc[:, top:top + side, left:left + side]
  if not image_size or image_size == side:
    return np.ascontiguousarray(crop)
  method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
  return np.stack([np.asarray(Image.fromarray(f).resize((image_size, image_size), method))
                   for f in crop])


def preprocess(episode: dict[str, np.ndarray], *, image_size: int,
               frame_skip: int) -> dict[str, np.ndarray]:
  """Frame skip, then centre crop + resize of frames (and masks)."""
  out = {}
  frames = episode["frames"][::frame_skip]
  out["frames"] = center_crop_resize(frames, image_size)
  t = len(frames)
  if "actions" in episode:
    out["actions"] = np.asarray(episode["actions"])[::frame_skip][:max(t - 1, 0)]
  if "masks" in episode:
    out["masks"] = center_crop_resize(np.asarray(episode["masks"], np.uint8)[::frame_skip],
                                      image_size, nearest=True)
  if "positions" in episode:
    out["positions"] = np.asarray(episode["positions"])[::frame_skip]
  for key in ("actions", "positions"):  # int64 sources -> int32; floats -> float32.
    if key in out:
      kind = out[key].dtype.kind
      out[key] = out[key].astype(np.int32 if kind in "iub" else np.float32)
  return out


def chunks(episode: dict[str, np.ndarray], length: int, min_frames: int
           ) -> list[dict[str, np.ndarray]]:
  """Consecutive pieces of `length` frames (0: the whole episode); short remainders dropped."""
  t = len(episode["frames"])
  if not length or t <= length:
    return [episode]
  out = []
  for lo in range(0, t, length):
    hi = min(lo + length, t)
    if hi - lo < min_frames and out:
      break
    out.append({k: v[lo:(hi - 1 if k == "actions" else hi)] for k, v in episode.items()})
  return out


def _signature(src: str, fmt: str, args: dict[str, Any]) -> dict[str, Any]:
  """What a reusable import must match: the arguments and the source files' sizes and times."""
  src = os.path.abspath(src)
  paths = [src] if os.path.isfile(src) else sorted(
      os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs)
  h = hashlib.sha1()
  for p in paths:
    st = os.stat(p)
    h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return dict(src=src, format=fmt, args=args, files=len(paths), files_sha1=h.hexdigest())


def _reusable(out: str, signature: dict[str, Any]) -> dict[str, Any] | None:
  from flam_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(os.path.join(out, records.METADATA_FILE)):
    return None
  try:
    meta = pipeline.load_metadata(out)
  except DataError:
    return None
  return meta if meta.get("source") == signature else None


def command_line(src: str, fmt: str, out: str, args: dict[str, Any]) -> str:
  defaults = dict(DEFAULTS)
  extra = " ".join(f"--{k} {shlex.quote(str(v))}" for k, v in args.items()
                   if v != defaults.get(k))
  return (f"python -m {GENERATOR} --src {shlex.quote(os.path.abspath(src))} --format {fmt}"
          f" --out {shlex.quote(os.path.abspath(out))} {extra}").strip()


DEFAULTS = dict(image_size=128, frame_skip=1, max_episodes=0, chunk_length=0, min_frames=2,
                skip_short=False, hdf5_key="", tfds_name="", frames_key="",
                episodes_per_shard=64)


def import_dataset(src: str, fmt: str, out: str, *, progress: bool = True,
                   **kwargs) -> dict[str, Any]:
  """Imports `src` (format `fmt`) into `out`; returns the dataset's metadata.

  kwargs: the DEFAULTS keys (image_size, frame_skip, max_episodes, chunk_length,
  min_frames, skip_short, hdf5_key, tfds_name, frames_key, episodes_per_shard).
  The metadata's `import` entry records frames read and written and the seconds taken.
  """
  unknown = sorted(set(kwargs) - set(DEFAULTS))
  if unknown:
    raise ConfigError(f"unknown import options {unknown}; use {sorted(DEFAULTS)}")
  args = dict(DEFAULTS, **kwargs)
  if fmt not in video_readers.FORMATS:
    raise DataError(f"unknown --format {fmt!r}; use one of {', '.join(video_readers.FORMATS)}")
  for key, low in (("frame_skip", 1), ("min_frames", 2), ("episodes_per_shard", 1),
                   ("image_size", 0), ("max_episodes", 0), ("chunk_length", 0)):
    if int(args[key]) < low:
      raise ConfigError(f"--{key}={args[key]}; use at least {low}")
  if args["chunk_length"] and args["chunk_length"] < args["min_frames"]:
    raise ConfigError(f"--chunk_length={args['chunk_length']} is below --min_frames="
                      f"{args['min_frames']}; raise it")
  if not os.path.exists(src):
    raise DataError(f"{src} does not exist; pass --src an existing file or folder")
  if os.path.abspath(out) == os.path.abspath(src):
    raise ConfigError("--out is --src; write the dataset to another folder")

  signature = _signature(src, fmt, args)
  reused = _reusable(out, signature)
  if reused is not None:
    if progress:
      print(f"{out} already holds this import (same source and arguments); reusing it")
    return reused

  opts = video_readers.ReadOptions(
      hdf5_key=args["hdf5_key"], tfds_name=args["tfds_name"], frames_key=args["frames_key"],
      chunk_frames=args["chunk_length"] * args["frame_skip"])
  refs = video_readers.list_episodes(src, fmt, opts)
  if args["max_episodes"]:
    refs = refs[:args["max_episodes"]]

  def episodes(ref) -> list[dict[str, np.ndarray]]:
    ep = preprocess(ref.load(), image_size=args["image_size"], frame_skip=args["frame_skip"])
    return chunks(ep, args["chunk_length"], args["min_frames"])

  def labelled() -> Iterator[tuple[str, str, dict[str, np.ndarray], int]]:
    """(split, name, episode, source frames) in order."""
    if any(r.split for r in refs):  # The source's own splits.
      for ref in refs:
        eps = episodes(ref)
        for i, ep in enumerate(eps):
          yield ref.split or "train", ref.name, ep, (len(ep["frames"]) * args["frame_skip"])
    elif len(refs) >= 3:  # 80/10/10 by source episode.
      counts = records.split_counts(len(refs))
      for n, ref in enumerate(refs):
        for ep in episodes(ref):
          yield records.split_of(n, counts), ref.name, ep, len(ep["frames"]) * args["frame_skip"]
    else:  # One or two long sources: 80/10/10 by chunk.
      pieces = [(ref.name, ep) for ref in refs for ep in episodes(ref)]
      counts = records.split_counts(len(pieces))
      for n, (name, ep) in enumerate(pieces):
        yield records.split_of(n, counts), name, ep, len(ep["frames"]) * args["frame_skip"]

  writer = records.EpisodeWriter(out, episodes_per_shard=args["episodes_per_shard"],
                                 min_length=args["min_frames"])
  bar = tqdm.tqdm(total=len(refs), desc=f"importing {fmt}", unit="episode", disable=not progress)
  start, frames_in, frames_out, skipped = time.perf_counter(), 0, 0, []
  last_name, num_actions = None, 0
  try:
    for split, name, ep, source_frames in labelled():
      if name != last_name:
        bar.update(1 if last_name is not None else 0)
        last_name = name
      if len(ep["frames"]) < args["min_frames"] and args["skip_short"]:
        skipped.append(name)
        continue
      writer.write(split, ep, source=name)
      if "actions" in ep and ep["actions"].dtype.kind == "i" and ep["actions"].size:
        num_actions = max(num_actions, int(ep["actions"].max()) + 1)
      frames_in += source_frames
      frames_out += len(ep["frames"])
      bar.set_postfix(frames_per_s=f"{frames_in / (time.perf_counter() - start):.0f}")
    bar.update(1 if last_name is not None else 0)
    seconds = time.perf_counter() - start
    config = dict(format=fmt, image_size=args["image_size"], frame_skip=args["frame_skip"])
    if num_actions:  # Discrete actions: 0..num_actions-1 seen (WM's one-hot width).
      config["num_actions"] = num_actions
    meta = writer.finish(
        generator=GENERATOR, config=config,
        source=signature, command=command_line(src, fmt, out, args),
        **{"import": dict(frames_read=int(frames_in), frames_written=int(frames_out),
                          seconds=round(seconds, 3), skipped_short=skipped[:20],
                          num_skipped_short=len(skipped))})
  except BaseException:
    writer.abort()
    raise
  finally:
    bar.close()
  return meta


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("src", None, "Source file or folder.", required=True)
  flags.DEFINE_enum("format", None, video_readers.FORMATS, "Source format.", required=True)
  flags.DEFINE_string("out", None, "Output dataset directory.", required=True)
  flags.DEFINE_integer("image_size", DEFAULTS["image_size"],
                       "Frame side after centre crop + resize (0: crop only).")
  flags.DEFINE_integer("frame_skip", DEFAULTS["frame_skip"], "Keep every n-th frame.")
  flags.DEFINE_integer("max_episodes", DEFAULTS["max_episodes"],
                       "Import at most this many source episodes (0: all).")
  flags.DEFINE_integer("chunk_length", DEFAULTS["chunk_length"],
                       "Cut episodes into pieces of this many frames (0: keep whole).")
  flags.DEFINE_integer("min_frames", DEFAULTS["min_frames"],
                       "Fewest frames an episode may have (at least the training window).")
  flags.DEFINE_bool("skip_short", DEFAULTS["skip_short"],
                    "Drop episodes shorter than --min_frames instead of stopping.")
  flags.DEFINE_string("hdf5_key", DEFAULTS["hdf5_key"], "HDF5 frames dataset (default: found).")
  flags.DEFINE_string("tfds_name", DEFAULTS["tfds_name"],
                      "tfds/rlds: dataset name in data dir --src (default: --src is a builder"
                      " directory).")
  flags.DEFINE_string("frames_key", DEFAULTS["frames_key"],
                      "tfds/rlds: feature path of the frames, e.g. observation/image.")
  flags.DEFINE_integer("episodes_per_shard", DEFAULTS["episodes_per_shard"],
                       "Episodes per ArrayRecord shard.")


def _main(argv: Sequence[str]) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {list(argv[1:])}")
  f = flags.FLAGS
  try:
    meta = import_dataset(f.src, f.format, f.out, **{k: getattr(f, k) for k in DEFAULTS})
  except (DataError, ConfigError) as e:
    sys.exit(f"error: {e}")
  counts = ", ".join(f"{s}={meta['splits'][s]['num_episodes']}" for s in records.SPLITS)
  info = meta.get("import", {})
  rate = (f", {info['frames_read'] / info['seconds']:.0f} source frames/s"
          if info.get("seconds") else "")
  print(f"{os.path.abspath(f.out)}: {meta['num_episodes']} episodes ({counts}) of"
        f" {meta['config']['resolution']}px frames, shortest {meta['config']['episode_length']}"
        f" frames; ground truth: {', '.join(meta['ground_truth']) or 'none'}{rate}")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(_main)

"""Import throughput per format (source frames/s) and the pipeline's frames/s on imported data.

    python benchmarks/bench_import.py [--episodes 8] [--frames 64] [--source_size 256]
        [--image_size 128] [--formats npz,mp4,webm,png,jpeg,hdf5,minari,tfds,rlds]

Writes `episodes` synthetic videos (a square sliding over a gradient) of `frames` frames at
source_size x source_size in each format with the test fixtures' writers, imports each
with `import_video` (read, crop + resize to image_size, write ArrayRecord) and reports
source frames per second of the import (writing the source is not timed). Then reads the
imported npz dataset through the training pipeline (`pipeline.make_iterator`) as the
tokenizer (window 1, batch 16) and the latent action stage (window 10, batch 8) see it.
Prints a markdown table.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from flam_jax.data import import_video, pipeline  # pylint: disable=wrong-import-position
from tests import video_fixtures as vf  # pylint: disable=wrong-import-position

FORMATS = ("npz", "mp4", "webm", "png", "jpeg", "hdf5", "minari", "tfds", "rlds")


def write_source(fmt: str, root: str, videos) -> tuple[str, str]:
  """Writes the videos in `fmt` under root; returns (src, import format)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  src = os.path.join(root, fmt)
  os.makedirs(src)
  if fmt == "npz":
    for i, v in enumerate(videos):
      np.savez(os.path.join(src, f"ep{i}.npz"), frames=v)
    return src, "npz"
  if fmt in ("mp4", "webm"):
    for i, v in enumerate(videos):
      vf.write_video(os.path.join(src, f"ep{i}.{fmt}"), v)
    return src, "mp4"
  if fmt in ("png", "jpeg"):
    for i, v in enumerate(videos):
      os.makedirs(os.path.join(src, f"ep{i}"))
      ext = "png" if fmt == "png" else "jpg"
      for j, frame in enumerate(v):
        Image.fromarray(frame).save(os.path.join(src, f"ep{i}", f"{j}.{ext}"))
    return src, "frames"
  if fmt == "hdf5":  # One long stream (nuPlan-like), cut back into episodes.
    path = os.path.join(src, "cam.hdf5")
    vf.write_hdf5_frames(path, np.concatenate(videos))
    return path, "hdf5"
  if fmt == "minari":
    import h5py  # pylint: disable=g-import-not-at-top
    path = os.path.join(src, "main_data.hdf5")
    with h5py.File(path, "w") as f:
      for i, v in enumerate(videos):
        g = f.create_group(f"episode_{i}")
        g.create_group("observations").create_dataset("image", data=v)
        g.create_dataset("actions", data=np.zeros(len(v) - 1, np.int64))
    return path, "hdf5"
  if fmt in ("tfds", "rlds"):
    episodes = {"train": [dict(frames=v, actions=np.zeros(len(v) - 1, np.int64))
                          for v in videos]}
    builder_dir = vf.write_tfds(os.path.join(src, "data"), episodes, rlds=fmt == "rlds",
                                size=videos[0].shape[1:3])
    if fmt == "rlds":
      vf.convert_to_tfrecord(builder_dir)
    return builder_dir, fmt
  raise ValueError(fmt)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--episodes", type=int, default=8)
  parser.add_argument("--frames", type=int, default=64)
  parser.add_argument("--source_size", type=int, default=256)
  parser.add_argument("--image_size", type=int, default=128)
  parser.add_argument("--formats", default=",".join(FORMATS))
  parser.add_argument("--pipeline_batches", type=int, default=20)
  args = parser.parse_args()
  videos = [vf.moving_square_video(args.frames, args.source_size, args.source_size, seed=i)
            for i in range(args.episodes)]
  root = tempfile.mkdtemp(prefix="bench_import_")
  npz_out = None
  print(f"\nimport: {args.episodes} episodes x {args.frames} frames,"
        f" {args.source_size}px -> {args.image_size}px\n")
  print("| format | source frames | seconds | frames/s |\n|---|---|---|---|", flush=True)
  try:
    for fmt in args.formats.split(","):
      src, kind = write_source(fmt, root, videos)
      out = os.path.join(root, f"out_{fmt}")
      kwargs = dict(chunk_length=args.frames) if fmt == "hdf5" else {}
      start = time.perf_counter()
      meta = import_video.import_dataset(src, kind, out, image_size=args.image_size,
                                         progress=False, **kwargs)
      seconds = time.perf_counter() - start
      frames = meta["import"]["frames_read"]
      print(f"| {fmt} | {frames} | {seconds:.2f} | {frames / seconds:.0f} |", flush=True)
      if fmt == "npz":
        npz_out = out
    if npz_out:
      print("\n| pipeline (imported npz) | window | batch | frames/s |\n|---|---|---|---|")
      for window, batch in ((1, 16), (10, 8)):
        it = pipeline.make_iterator(npz_out, "train", window_length=window, batch_size=batch,
                                    seed=0, shard_index=0, shard_count=1, num_threads=2)
        fps = pipeline.measure_throughput(it, args.pipeline_batches)
        print(f"| {args.image_size}px | {window} | {batch} | {fps:.0f} |")
  finally:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  main()

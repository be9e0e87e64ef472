"""Readers of video sources: each lists a source's episodes cheaply, then loads one at a time.

A reader turns `--src` into a list of `EpisodeRef`s (name for messages, the split the
source defines or None, and a `load()` returning the episode's arrays at source
resolution): frames uint8 [T, H, W, 3] plus whatever ground truth it has, actions
[T-1] or [T-1, K], masks [T, H, W], positions [T, K, 2]. `import_video` resizes, skips
frames and writes the record format. Every unreadable input is a DataError naming the
file and the fix.

Formats:
  npz     a file, or a folder of files, one episode each: `frames` and optional ground truth
  mp4     a video file or a folder of them (.mp4 .webm .mkv .avi .mov), decoded with PyAV
  frames  a folder of PNG/JPEG frames (one episode) or of such folders (one episode each)
  hdf5    a file or folder of .h5/.hdf5: Minari's layout (episode_* groups with
          observations and actions) or a frames dataset [N, H, W, 3] (e.g. nuPlan's
          train_CAM_F0.hdf5; chosen with hdf5_key, else the first uint8 image dataset)
  tfds    a TFDS dataset in ArrayRecord: a builder directory, or `tfds_name` in data dir
          `src`, read with tfds' data sources (no TensorFlow); video features or RLDS steps
  rlds    an RLDS/TFDS builder directory of TFRecord files, read sequentially (no TensorFlow)
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import struct
from typing import Any, Callable, Sequence

import numpy as np

from flam_jax.errors import DataError

FORMATS = ("npz", "mp4", "frames", "hdf5", "tfds", "rlds")
VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov")
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
HDF5_EXTS = (".h5", ".hdf5")
OPTIONAL_FIELDS = ("actions", "masks", "positions")
# Keys searched for frames in TFDS/RLDS examples and HDF5 observation groups, in order.
FRAME_KEYS = ("frames", "video", "image", "rgb", "pixels", "observation", "observations")
# Source split names -> ours.
SPLIT_NAMES = {"train": "train", "validation": "validation", "valid": "validation",
               "val": "validation", "test": "test"}


@dataclasses.dataclass(frozen=True)
class ReadOptions:
  """Reader settings from the command line."""

  hdf5_key: str = ""          # HDF5 frames dataset; "": found automatically.
  tfds_name: str = ""         # tfds: dataset name ("name[/config][:version]") in data dir src.
  frames_key: str = ""        # tfds/rlds: feature holding the frames; "": found automatically.
  chunk_frames: int = 0       # hdf5 frame datasets: source frames per episode (0: all).


@dataclasses.dataclass(frozen=True)
class EpisodeRef:
  name: str                   # For messages: file, or file#episode.
  split: str | None           # The split the source defines, if any.
  load: Callable[[], dict[str, np.ndarray]]


def _natural_key(path: str):
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", os.path.basename(path))]


def _files(src: str, exts: Sequence[str], what: str) -> list[str]:
  """src itself, or the files under folder src with one of `exts`, in natural order."""
  if not os.path.exists(src):
    raise DataError(f"{src} does not exist; pass --src an existing {what} file or folder")
  if os.path.isfile(src):
    return [src]
  found = sorted((p for p in glob.glob(os.path.join(src, "**", "*"), recursive=True)
                  if p.lower().endswith(tuple(exts)) and os.path.isfile(p)), key=_natural_key)
  if not found:
    raise DataError(f"{src} holds no {what} files ({', '.join(exts)}); check --src and --format")
  return found


def _frames_array(frames: Any, name: str) -> np.ndarray:
  """Frames as uint8 [T, H, W, 3] (channels-first and grey accepted); DataError otherwise."""
  frames = np.asarray(frames)
  if frames.ndim == 4 and frames.shape[1] in (1, 3) and frames.shape[-1] not in (1, 3):
    frames = np.moveaxis(frames, 1, -1)  # [T, C, H, W] -> [T, H, W, C].
  if frames.ndim == 3:
    frames = frames[..., None]
  if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
    raise DataError(f"{name}: frames have shape {frames.shape}; expected [T, H, W, 3]")
  if frames.shape[-1] == 1:
    frames = np.repeat(frames, 3, axis=-1)
  frames = frames[..., :3]
  if frames.dtype != np.uint8:
    if np.issubdtype(frames.dtype, np.floating) and frames.size and frames.max() <= 1.0:
      frames = frames * 255.0  # Floats in [0, 1].
    frames = np.clip(np.round(frames), 0, 255).astype(np.uint8)
  return frames


# ---- npz ----
def _load_npz(path: str) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as data:
      keys = list(data.keys())
      if "frames" not in keys:
        raise DataError(f"{path} has no 'frames' array (it has {keys}); save frames uint8"
                        " [T, H, W, 3] under the key 'frames'")
      out = {k: np.asarray(data[k]) for k in ("frames",) + OPTIONAL_FIELDS if k in keys}
  except DataError:
    raise
  except Exception as e:  # zipfile/pickle/OS errors: one line.
    raise DataError(f"{path} is not a readable .npz ({type(e).__name__}: {e}); re-save it with"
                    " numpy.savez") from e
  out["frames"] = _frames_array(out["frames"], path)
  return out


def list_npz(src: str, opts: ReadOptions) -> list[EpisodeRef]:
  del opts
  return [EpisodeRef(p, None, lambda p=p: _load_npz(p)) for p in _files(src, (".npz",), "npz")]


# ---- mp4 / webm (PyAV) ----
def _load_video(path: str) -> dict[str, np.ndarray]:
  import av  # pylint: disable=g-import-not-at-top
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise DataError(f"{path} has no video stream; pass a video file")
      stream = container.streams.video[0]
      declared = stream.frames
      frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
  except DataError:
    raise
  except Exception as e:  # av.error.FFmpegError and OS errors.
    raise DataError(f"{path} is unreadable or truncated ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}); re-encode or re-download it")
  if not frames:
    raise DataError(f"{path} decodes to no frames (empty or truncated); re-encode it")
  if declared and len(frames) < declared:
    raise DataError(f"{path} is truncated: {len(frames)} of its {declared} frames decode;"
                    " re-download or re-encode it")
  return {"frames": np.stack(frames)}


def list_mp4(src: str, opts: ReadOptions) -> list[EpisodeRef]:
  del opts
  return [EpisodeRef(p, None, lambda p=p: _load_video(p))
          for p in _files(src, VIDEO_EXTS, "video")]


# ---- folders of PNG / JPEG frames ----
def _load_frame_folder(paths: Sequence[str], name: str) -> dict[str, np.ndarray]:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  frames = []
  for path in paths:
    try:
      with Image.open(path) as img:
        frame = np.asarray(img.convert("RGB"))
    except Exception as e:  # PIL.UnidentifiedImageError, truncated files.
      raise DataError(f"{path} is not a readable image ({type(e).__name__}); replace or"
                      " remove it") from e
    if frames and frame.shape != frames[0].shape:
      raise DataError(f"{path} is {frame.shape[1]}x{frame.shape[0]} but the episode's first"
                      f" frame {paths[0]} is {frames[0].shape[1]}x{frames[0].shape[0]};"
                      f" give every frame of {name} the same size")
    frames.append(frame)
  return {"frames": np.stack(frames)}


def list_frames(src: str, opts: ReadOptions) -> list[EpisodeRef]:
  del opts
  images = _files(src, IMAGE_EXTS, "PNG/JPEG")
  folders: dict[str, list[str]] = {}
  for path in images:
    folders.setdefault(os.path.dirname(path), []).append(path)
  return [EpisodeRef(folder, None, lambda p=paths, f=folder: _load_frame_folder(p, f))
          for folder, paths in sorted(folders.items(), key=lambda kv: _natural_key(kv[0]))]


# ---- HDF5: Minari episodes or a frames dataset ----
def _image_datasets(group) -> list[tuple[str, Any]]:
  """(name, dataset) of the image-like datasets under an h5py group, preferred keys first."""
  import h5py  # pylint: disable=g-import-not-at-top
  found = []

  def visit(name, obj):
    if isinstance(obj, h5py.Dataset) and obj.ndim == 4 and (
        obj.shape[-1] in (1, 3, 4) or obj.shape[1] in (1, 3)):
      found.append((name, obj))

  group.visititems(visit)
  rank = lambda item: next((i for i, k in enumerate(FRAME_KEYS)
                            if k in item[0].lower().split("/")[-1]), len(FRAME_KEYS))
  return sorted(found, key=rank)


def _all_datasets(f) -> str:
  import h5py  # pylint: disable=g-import-not-at-top
  names = []
  f.visititems(lambda n, o: names.append(f"{n} {list(o.shape)}")
               if isinstance(o, h5py.Dataset) else None)
  return ", ".join(names[:8]) + (" ..." if len(names) > 8 else "") or "none"


def _load_minari(path: str, key: str) -> dict[str, np.ndarray]:
  import h5py  # pylint: disable=g-import-not-at-top
  with h5py.File(path, "r") as f:
    group = f[key]
    images = _image_datasets(group["observations"]) if "observations" in group else []
    if not images:
      raise DataError(f"{path}#{key} has no image observations (observations of"
                      " [T+1, H, W, 3]); Minari datasets must be recorded with pixel"
                      " observations to import them as video")
    out = {"frames": _frames_array(images[0][1][()], f"{path}#{key}")}
    if "actions" in group and isinstance(group["actions"], h5py.Dataset):
      actions = np.asarray(group["actions"][()])
      out["actions"] = actions[:len(out["frames"]) - 1]
  return out


def _load_hdf5_frames(path: str, key: str, lo: int, hi: int | None) -> dict[str, np.ndarray]:
  import h5py  # pylint: disable=g-import-not-at-top
  with h5py.File(path, "r") as f:
    return {"frames": _frames_array(f[key][lo:hi], f"{path}:{key}")}


def list_hdf5(src: str, opts: ReadOptions) -> list[EpisodeRef]:
  import h5py  # pylint: disable=g-import-not-at-top
  refs = []
  for path in _files(src, HDF5_EXTS, "HDF5"):
    try:
      f = h5py.File(path, "r")
    except Exception as e:  # OSError: truncated or not HDF5.
      raise DataError(f"{path} is not a readable HDF5 file ({type(e).__name__}); re-download"
                      " or re-export it") from e
    with f:
      episodes = sorted((k for k in f.keys() if k.startswith("episode_")), key=_natural_key)
      if episodes and not opts.hdf5_key:
        refs += [EpisodeRef(f"{path}#{k}", None, lambda p=path, k=k: _load_minari(p, k))
                 for k in episodes]
        continue
      if opts.hdf5_key:
        if opts.hdf5_key not in f:
          raise DataError(f"{path} has no dataset {opts.hdf5_key!r} (datasets: "
                          f"{_all_datasets(f)}); pass --hdf5_key with one of them")
        key, n = opts.hdf5_key, f[opts.hdf5_key].shape[0]
      else:
        images = _image_datasets(f)
        if not images:
          raise DataError(f"{path} has no frames dataset ([N, H, W, 3] images) and no Minari"
                          f" episode_* groups (datasets: {_all_datasets(f)}); pass --hdf5_key"
                          " NAME of the frames dataset")
        key, n = images[0][0], images[0][1].shape[0]
    step = opts.chunk_frames or n
    refs += [EpisodeRef(f"{path}:{key}[{lo}:{min(lo + step, n)}]", None,
                        lambda p=path, k=key, lo=lo, hi=lo + step: _load_hdf5_frames(p, k, lo, hi))
             for lo in range(0, n, step)]
  return refs


# ---- TFDS / RLDS ----
def _pick_frames(example: dict[str, Any], frames_key: str, name: str) -> tuple[str, Any]:
  """(key path, value) of the frames in a (nested) example."""
  flat = {}

  def walk(prefix, node):
    if isinstance(node, dict):
      for k, v in node.items():
        walk(f"{prefix}/{k}" if prefix else k, v)
    else:
      flat[prefix] = node

  walk("", example)
  if frames_key:
    if frames_key not in flat:
      raise DataError(f"{name} has no feature {frames_key!r} (features: {sorted(flat)});"
                      " pass --frames_key with one of them")
    return frames_key, flat[frames_key]
  for want in FRAME_KEYS:
    for key in flat:
      value = np.asarray(flat[key]) if not isinstance(flat[key], (bytes, str)) else None
      if key.split("/")[-1] == want and value is not None and value.ndim == 4:
        return key, value
  raise DataError(f"{name} has no video feature ([T, H, W, 3] under one of {FRAME_KEYS});"
                  f" features: {sorted(flat)}; pass --frames_key")


def _stack_steps(steps) -> dict[str, Any]:
  """RLDS `steps` (a dict of stacked arrays, or a sequence of step dicts) -> stacked arrays."""
  if isinstance(steps, dict):
    return steps
  items = [steps[i] for i in range(len(steps))]
  if not items:
    return {}

  def stack(nodes):
    if isinstance(nodes[0], dict):
      return {k: stack([n[k] for n in nodes]) for k in nodes[0]}
    return np.stack([np.asarray(n) for n in nodes])

  return stack(items)


def episode_from_example(example: dict[str, Any], frames_key: str,
                         name: str) -> dict[str, np.ndarray]:
  """A TFDS video example or RLDS episode -> frames (+ actions when the steps have them)."""
  out = {}
  if "steps" in example:  # RLDS: one step per frame; step t's action leads to frame t+1.
    steps = _stack_steps(example["steps"])
    _, frames = _pick_frames(steps, frames_key, name)
    out["frames"] = _frames_array(frames, name)
    if "action" in steps and not isinstance(steps["action"], dict):
      out["actions"] = np.asarray(steps["action"])[:-1]
    return out
  _, frames = _pick_frames(example, frames_key, name)
  out["frames"] = _frames_array(frames, name)
  for key in OPTIONAL_FIELDS:
    if key in example:
      out[key] = np.asarray(example[key])
  return out


def tfds_builder(src: str, opts: ReadOptions):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    if opts.tfds_name:
      return tfds.builder(opts.tfds_name, data_dir=src)
    if not os.path.isfile(os.path.join(src, "dataset_info.json")):
      raise DataError(f"{src} is not a TFDS builder directory (no dataset_info.json); pass"
                      " the <data_dir>/<name>/<config>/<version> folder, or --tfds_name NAME"
                      " with --src DATA_DIR")
    return tfds.builder_from_directory(src)
  except DataError:
    raise
  except Exception as e:  # DatasetNotFoundError and friends.
    what = opts.tfds_name or src
    raise DataError(f"TFDS dataset {what!r} not found in {src} ({type(e).__name__}:"
                    f" {str(e).splitlines()[0][:160] if str(e) else ''}); check the name and"
                    " that it was prepared in that data_dir") from e


def _our_split(split: str) -> str | None:
  return SPLIT_NAMES.get(split.split("[")[0].lower())


def list_tfds(src: str, opts: ReadOptions) -> list[EpisodeRef]:
  if not os.path.exists(src):
    raise DataError(f"{src} does not exist; pass --src a TFDS data_dir or builder directory")
  builder = tfds_builder(src, opts)
  if not builder.is_prepared():
    raise DataError(f"TFDS dataset {builder.name} is not prepared in {src}; prepare it (with"
                    " file_format='array_record') or check --src")
  if str(builder.info.file_format).split(".")[-1].lower() not in ("array_record",):
    raise DataError(f"{builder.data_dir} is stored as {builder.info.file_format}, which tfds"
                    " data sources cannot read without TensorFlow; use --format rlds to read"
                    " its TFRecord files sequentially")
  refs = []
  for split in builder.info.splits:
    ours = _our_split(split)
    source = builder.as_data_source(split=split)
    refs += [EpisodeRef(f"{builder.name}[{split}]#{i}", ours or "train",
                        lambda s=source, i=i, n=f"{builder.name}[{split}]#{i}":
                        episode_from_example(s[i], opts.frames_key, n))
             for i in range(len(source))]
  return refs


def tfrecord_index(path: str) -> list[tuple[int, int]]:
  """(offset, length) of each record of a TFRecord file, by one pass over the headers.

  A record is u64 length, u32 crc, data, u32 crc (CRCs are not checked).
  """
  index, size = [], os.path.getsize(path)
  with open(path, "rb") as f:
    offset = 0
    while offset < size:
      header = f.read(12)
      if len(header) < 12:
        raise DataError(f"{path} is truncated (partial record header); re-download it")
      (length,) = struct.unpack("<Q", header[:8])
      if offset + 12 + length + 4 > size:
        raise DataError(f"{path} is truncated (a record of {length} bytes is cut short);"
                        " re-download it")
      index.append((offset + 12, length))
      offset += 12 + length + 4
      f.seek(offset)
  return index


def _load_tfrecord_episode(path: str, offset: int, length: int, builder, opts: ReadOptions,
                           name: str) -> dict[str, np.ndarray]:
  from tensorflow_datasets.core import example_parser  # pylint: disable=g-import-not-at-top
  with open(path, "rb") as f:
    f.seek(offset)
    record = f.read(length)
  features = builder.info.features
  try:
    parsed = example_parser.ExampleParserNp(features.get_serialized_info()).parse_example(record)
    example = features.decode_example_np(parsed)
  except Exception as e:  # Protobuf decode errors: a corrupt record.
    raise DataError(f"{name} does not parse as {builder.name}'s examples ({type(e).__name__});"
                    " re-download the file") from e
  return episode_from_example(example, opts.frames_key, name)


def list_rlds(src: str, opts: ReadOptions) -> list[EpisodeRef]:
  """One ref per TFRecord record (episode), found by reading each file's headers in order."""
  if not os.path.exists(src):
    raise DataError(f"{src} does not exist; pass --src an RLDS builder directory")
  builder = tfds_builder(src, opts)
  refs = []
  for split, info in builder.info.splits.items():
    for fname in info.filenames:
      path = os.path.join(builder.data_dir, fname)
      if not os.path.isfile(path):
        raise DataError(f"{path} listed in {builder.data_dir}/dataset_info.json is missing;"
                        " re-download the dataset")
      refs += [EpisodeRef(f"{path}#{i}", _our_split(split) or "train",
                          lambda p=path, o=o, n=n, name=f"{path}#{i}": _load_tfrecord_episode(
                              p, o, n, builder, opts, name))
               for i, (o, n) in enumerate(tfrecord_index(path))]
  if not refs:
    raise DataError(f"{builder.data_dir} lists no TFRecord files; check --src")
  return refs


LISTERS = dict(npz=list_npz, mp4=list_mp4, frames=list_frames, hdf5=list_hdf5, tfds=list_tfds,
               rlds=list_rlds)


def list_episodes(src: str, fmt: str, opts: ReadOptions) -> list[EpisodeRef]:
  """The source's episodes, in order."""
  if fmt not in LISTERS:
    raise DataError(f"unknown --format {fmt!r}; use one of {', '.join(FORMATS)}")
  return LISTERS[fmt](src, opts)

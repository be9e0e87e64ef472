"""Small video sources written by the tests themselves: npz, mp4/webm, PNG folders, HDF5, TFDS."""

import json
import os
import struct

import numpy as np


def moving_square_video(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
  """uint8 [T, H, W, 3]: a bright square sliding over a smooth background (codec friendly)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width]
  base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                   np.full_like(x, 60 + 40 * seed % 120)], -1).astype(np.uint8)
  frames = np.repeat(base[None], num_frames, axis=0)
  side = max(2, min(height, width) // 4)
  r0, c0 = rng.integers(0, min(height, width) - side, 2)
  for t in range(num_frames):
    r, c = (r0 + t) % (height - side), (c0 + 2 * t) % (width - side)
    frames[t, r:r + side, c:c + side] = (250, 250, 250)
  return frames


def write_npz_episodes(folder: str, lengths, size=(20, 16), with_truth=True, num_agents=2):
  """One npz per episode: frames [T,H,W,3] (+ actions [T-1,K], masks [T,H,W], positions)."""
  os.makedirs(folder, exist_ok=True)
  episodes = []
  for i, t in enumerate(lengths):
    rng = np.random.default_rng(i)
    ep = dict(frames=moving_square_video(t, *size, seed=i))
    if with_truth:
      ep["actions"] = rng.integers(0, 4, (t - 1, num_agents)).astype(np.int64)
      ep["masks"] = rng.integers(0, 2 + num_agents, (t,) + size).astype(np.uint8)
      ep["positions"] = rng.integers(0, 8, (t, num_agents, 2)).astype(np.int32)
    np.savez(os.path.join(folder, f"episode_{i}.npz"), **ep)
    episodes.append(ep)
  return episodes


def write_video(path: str, frames: np.ndarray, fps: int = 10):
  """Encodes frames uint8 [T,H,W,3] with PyAV (mp4: h264 yuv444 near-lossless; webm: vp9)."""
  import av  # pylint: disable=g-import-not-at-top
  webm = path.endswith(".webm")
  with av.open(path, "w") as container:
    stream = container.add_stream("libvpx-vp9" if webm else "libx264", rate=fps)
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = "yuv420p" if webm else "yuv444p"
    stream.options = {"lossless": "1"} if webm else {"crf": "0"}
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def write_png_folders(root: str, lengths, size=(20, 16)):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  videos = []
  for i, t in enumerate(lengths):
    folder = os.path.join(root, f"clip{i}")
    os.makedirs(folder, exist_ok=True)
    frames = moving_square_video(t, *size, seed=i)
    for j, frame in enumerate(frames):  # Unpadded numbers: natural order must sort 2 < 10.
      Image.fromarray(frame).save(os.path.join(folder, f"frame_{j}.png"))
    videos.append(frames)
  return videos


def write_hdf5_frames(path: str, frames: np.ndarray, key: str = "images"):
  import h5py  # pylint: disable=g-import-not-at-top
  with h5py.File(path, "w") as f:
    f.create_dataset(key, data=frames)
    f.create_dataset("timestamps", data=np.arange(len(frames)))


def write_minari(path: str, lengths, size=(16, 16)):
  """Minari's main_data.hdf5 layout: episode_i/{observations/image [T+1,...], actions [T]}."""
  import h5py  # pylint: disable=g-import-not-at-top
  episodes = []
  with h5py.File(path, "w") as f:
    for i, t in enumerate(lengths):
      g = f.create_group(f"episode_{i}")
      frames = moving_square_video(t, *size, seed=i)
      actions = np.arange(t - 1) % 3
      g.create_group("observations").create_dataset("image", data=frames)
      g.create_dataset("actions", data=actions)
      g.create_dataset("rewards", data=np.zeros(t - 1))
      episodes.append(dict(frames=frames, actions=actions))
  return episodes


def _tfds_builder_class(rlds: bool, size):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  h, w = size

  class TinyVideo(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Video examples ({frames, actions}) or RLDS episodes ({steps: {observation, action}})."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, episodes, **kwargs):
      self._episodes = episodes
      super().__init__(**kwargs)

    def _info(self):
      if rlds:
        features = {"steps": tfds.features.Dataset({
            "observation": {"image": tfds.features.Tensor(shape=(h, w, 3), dtype=np.uint8)},
            "action": tfds.features.Scalar(dtype=np.int64)})}
      else:
        features = {"frames": tfds.features.Tensor(shape=(None, h, w, 3), dtype=np.uint8,
                                                   encoding="zlib"),
                    "actions": tfds.features.Tensor(shape=(None,), dtype=np.int64)}
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(split) for split in self._episodes}

    def _generate_examples(self, split):
      for i, ep in enumerate(self._episodes[split]):
        if rlds:  # Step t holds frame t and the action after it (the last one a dummy 0).
          acts = list(ep["actions"]) + [0]
          yield i, {"steps": [{"observation": {"image": f}, "action": int(a)}
                              for f, a in zip(ep["frames"], acts)]}
        else:
          yield i, {"frames": ep["frames"], "actions": ep["actions"]}

  return TinyVideo


def make_episodes(split_lengths, size=(16, 16)):
  out = {}
  for split, lengths in split_lengths.items():
    out[split] = [dict(frames=moving_square_video(t, *size, seed=i + 10 * len(out)),
                       actions=np.arange(t - 1, dtype=np.int64) % 5) for i, t in enumerate(lengths)]
  return out


def write_tfds(data_dir: str, episodes, rlds: bool = False, size=(16, 16)) -> str:
  """Prepares a TFDS dataset in ArrayRecord (no TensorFlow); returns its builder directory."""
  builder = _tfds_builder_class(rlds, size)(episodes=episodes, data_dir=data_dir,
                                           file_format="array_record")
  builder.download_and_prepare()
  return str(builder.data_path)


def _crc_table():
  table = []
  for i in range(256):
    crc = i
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    table.append(crc)
  return table


_CRC_TABLE = _crc_table()


def _masked_crc(data: bytes) -> int:
  """TFRecord's masked CRC32-C (table-driven pure Python)."""
  crc, table = 0xFFFFFFFF, _CRC_TABLE
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  crc ^= 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def convert_to_tfrecord(builder_dir: str) -> None:
  """Rewrites an ArrayRecord TFDS directory as TFRecord files (same serialized Examples)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  info_path = os.path.join(builder_dir, "dataset_info.json")
  with open(info_path) as f:
    info = json.load(f)
  for name in os.listdir(builder_dir):
    if ".array_record-" not in name:
      continue
    reader = array_record_module.ArrayRecordReader(os.path.join(builder_dir, name))
    recs = reader.read_all()
    reader.close()
    with open(os.path.join(builder_dir, name.replace(".array_record-", ".tfrecord-")), "wb") as f:
      for rec in recs:
        header = struct.pack("<Q", len(rec))
        f.write(header + struct.pack("<I", _masked_crc(header)) + rec
                + struct.pack("<I", _masked_crc(rec)))
    os.remove(os.path.join(builder_dir, name))
  info["fileFormat"] = "tfrecord"
  with open(info_path, "w") as f:
    json.dump(info, f)

"""import_video: each reader on files the tests write, the round trip into windows, bad input."""

import json
import os

import numpy as np
import pytest

from flam_jax.data import import_video as iv
from flam_jax.data import pipeline, records
from flam_jax.errors import DataError
from tests import video_fixtures as vf


def _episodes(out, split):
  src = pipeline.WindowSource(out, split, window_length=2)
  return [src.read_episode(e) for e in range(src.num_episodes)]


def _all_episodes(out):
  return [ep for s in records.SPLITS
          if pipeline.load_metadata(out)["splits"][s]["num_episodes"]
          for ep in _episodes(out, s)]


def test_npz_round_trip_ground_truth_and_windows(tmp_path):
  src, out = str(tmp_path / "npz"), str(tmp_path / "out")
  written = vf.write_npz_episodes(src, [6, 9, 7, 8], size=(16, 16))
  meta = iv.import_dataset(src, "npz", out, image_size=0, progress=False)
  assert meta["ground_truth"] == ["actions", "masks", "positions"]
  assert [meta["splits"][s]["num_episodes"] for s in records.SPLITS] == [2, 1, 1]
  assert meta["config"]["num_agents"] == 2 and meta["config"]["episode_length"] == 6
  got = _all_episodes(out)
  for g, w in zip(got, written):  # Lossless: exact, ground truth carried through.
    for key in ("frames", "actions", "masks", "positions"):
      np.testing.assert_array_equal(g[key], w[key])
  # Variable-length windows: episode lengths 6 and 9 give 6-4+1 + 9-4+1 windows of 4.
  src_train = pipeline.WindowSource(out, "train", window_length=4)
  assert len(src_train) == 3 + 6 and src_train.windows_per_episode is None
  window = src_train[4]  # Episode 1, frame 1.
  np.testing.assert_array_equal(window["frames"], written[1]["frames"][1:5])
  np.testing.assert_array_equal(window["actions"], written[1]["actions"][1:4])
  batch = next(iter(pipeline.make_dataset(out, "train", window_length=4, batch_size=3, seed=0,
                                          shard_index=0, shard_count=1)))
  assert batch["frames"].shape == (3, 4, 16, 16, 3) and batch["actions"].shape == (3, 3, 2)


def test_resize_crop_and_frame_skip(tmp_path):
  src, out = str(tmp_path / "npz"), str(tmp_path / "out")
  written = vf.write_npz_episodes(src, [9], size=(20, 16))
  iv.import_dataset(src, "npz", out, image_size=8, frame_skip=2, progress=False)
  (ep,) = _episodes(out, "train")
  assert ep["frames"].shape == (5, 8, 8, 3) and ep["masks"].shape == (5, 8, 8)
  np.testing.assert_array_equal(ep["actions"], written[0]["actions"][::2][:4])
  expected = iv.center_crop_resize(written[0]["frames"][::2], 8)
  np.testing.assert_array_equal(ep["frames"], expected)
  # Centre crop: 20x16 -> rows 2..18.
  np.testing.assert_array_equal(iv.center_crop_resize(written[0]["frames"], 0),
                                written[0]["frames"][:, 2:18])


@pytest.mark.parametrize("ext", [".mp4", ".webm"])
def test_video_round_trip_within_codec_loss(tmp_path, ext):
  src, out = tmp_path / "videos", str(tmp_path / "out")
  src.mkdir()
  videos = [vf.moving_square_video(8 + i, 32, 32, seed=i) for i in range(3)]
  for i, v in enumerate(videos):
    vf.write_video(str(src / f"clip{i}{ext}"), v)
  meta = iv.import_dataset(str(src), "mp4", out, image_size=32, progress=False)
  assert meta["ground_truth"] == [] and meta["config"]["num_agents"] == 0
  for got, want in zip(_all_episodes(out), videos):
    assert got["frames"].shape == want.shape
    assert np.abs(got["frames"].astype(int) - want).mean() < 4.0  # Codec's rounding only.


def test_evaluation_on_an_action_free_copy_skips_what_needs_ground_truth(tmp_path, capsys):
  """A tiny FLAM trained on npz episodes with ground truth, evaluated on an action-free
  copy of the same frames: ARI-FG, disentanglement and the probe are skipped and said so
  (metrics.json, the table, one console line each); PSNR and the rest are finite."""
  from flam_jax import train  # pylint: disable=g-import-not-at-top
  from ml_collections import ConfigDict  # pylint: disable=g-import-not-at-top
  from tests import stage_fixtures  # pylint: disable=g-import-not-at-top
  lengths = [6] * 10
  for name, with_truth in (("truth", True), ("free", False)):
    vf.write_npz_episodes(str(tmp_path / f"{name}_npz"), lengths, size=(16, 16),
                          with_truth=with_truth)
    iv.import_dataset(str(tmp_path / f"{name}_npz"), "npz", str(tmp_path / name), image_size=0,
                      progress=False)
  config = stage_fixtures.tiny_config("lam")
  config.stage, config.data.dir = "tokenizer,lam", str(tmp_path / "truth")
  config.data.num_workers, config.progress_bar = 0, False
  config.batch_size, config.num_train_steps = 2, 2
  config.log_every_steps, config.image_every_steps, config.checkpoint_every_steps = 1, 100, 100
  workdir = str(tmp_path / "work")
  train.run(config, workdir)

  config.stage, config.data.dir = "eval", str(tmp_path / "free")
  config.eval = ConfigDict(dict(batch_size=2))
  capsys.readouterr()
  out = train.run(config, workdir)
  printed = capsys.readouterr().out
  with open(out["metrics_path"]) as f:
    saved = json.load(f)
  assert set(saved["skipped"]) == {"ari_fg", "disentanglement", "probe"}
  assert saved["ari_fg"] is None and saved["probe_accuracy"] is None
  for key in ("psnr_t", "delta_psnr_t", "token_accuracy_t", "copy_psnr_t",
              "copy_token_accuracy_t"):
    assert np.all(np.isfinite(saved[key])), key
  assert np.isfinite(saved["tokenizer_psnr"]) and saved["num_windows"] == 3
  assert "| ARI-FG | skipped |" in out["table"]
  for metric in saved["skipped"]:
    assert f"skipped {metric}: the dataset has no ground-truth" in printed


def test_png_folders_in_natural_order(tmp_path):
  src, out = str(tmp_path / "frames"), str(tmp_path / "out")
  videos = vf.write_png_folders(src, [12, 5, 6])
  iv.import_dataset(src, "frames", out, image_size=0, progress=False)
  for got, want in zip(_all_episodes(out), videos):
    np.testing.assert_array_equal(got["frames"], want[:, 2:18])


def test_hdf5_frames_chunked_and_minari(tmp_path):
  frames = vf.moving_square_video(40, 16, 16)
  path, out = str(tmp_path / "cam.hdf5"), str(tmp_path / "out")
  vf.write_hdf5_frames(path, frames)
  meta = iv.import_dataset(path, "hdf5", out, image_size=0, chunk_length=10, progress=False)
  assert meta["num_episodes"] == 4  # One stream cut into 4 chunks, split 2/1/1.
  np.testing.assert_array_equal(np.concatenate([e["frames"] for e in _all_episodes(out)]),
                                frames)
  minari, out2 = str(tmp_path / "main_data.hdf5"), str(tmp_path / "out2")
  written = vf.write_minari(minari, [5, 6, 7])
  meta = iv.import_dataset(minari, "hdf5", out2, image_size=0, progress=False)
  assert meta["ground_truth"] == ["actions"]
  for got, want in zip(_all_episodes(out2), written):
    np.testing.assert_array_equal(got["frames"], want["frames"])
    np.testing.assert_array_equal(got["actions"], want["actions"])


def test_tfds_and_rlds_keep_the_source_splits(tmp_path):
  episodes = vf.make_episodes({"train": [6, 7, 5], "test": [5]})
  builder_dir = vf.write_tfds(str(tmp_path / "tfds"), episodes)
  meta = iv.import_dataset(builder_dir, "tfds", str(tmp_path / "o1"), image_size=0,
                           progress=False)
  assert {s: meta["splits"][s]["num_episodes"] for s in records.SPLITS} == dict(
      train=3, validation=0, test=1)
  (test_ep,) = _episodes(str(tmp_path / "o1"), "test")
  np.testing.assert_array_equal(test_ep["frames"], episodes["test"][0]["frames"])
  np.testing.assert_array_equal(test_ep["actions"], episodes["test"][0]["actions"])

  rlds_dir = vf.write_tfds(str(tmp_path / "rlds"), episodes, rlds=True)
  vf.convert_to_tfrecord(rlds_dir)
  meta = iv.import_dataset(rlds_dir, "rlds", str(tmp_path / "o2"), image_size=0, progress=False)
  assert meta["ground_truth"] == ["actions"]
  got = sorted(_episodes(str(tmp_path / "o2"), "train"), key=lambda e: len(e["frames"]))
  want = sorted(episodes["train"], key=lambda e: len(e["frames"]))
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g["frames"], w["frames"])
    np.testing.assert_array_equal(g["actions"], w["actions"])
  with pytest.raises(DataError, match="TFRECORD.*--format rlds"):
    iv.import_dataset(rlds_dir, "tfds", str(tmp_path / "o3"), progress=False)
  with pytest.raises(DataError, match="not found"):
    iv.import_dataset(str(tmp_path / "tfds"), "tfds", str(tmp_path / "o4"),
                      tfds_name="no_such_dataset", progress=False)


def test_second_identical_run_reuses(tmp_path, capsys):
  src, out = str(tmp_path / "npz"), str(tmp_path / "out")
  vf.write_npz_episodes(src, [5, 5, 5], with_truth=False)
  iv.import_dataset(src, "npz", out, image_size=8, progress=False)
  mtime = os.path.getmtime(os.path.join(out, "metadata.json"))
  iv.import_dataset(src, "npz", out, image_size=8, progress=True)
  assert "reusing" in capsys.readouterr().out
  assert os.path.getmtime(os.path.join(out, "metadata.json")) == mtime
  iv.import_dataset(src, "npz", out, image_size=4, progress=False)  # Other args: rebuilt.
  assert os.path.getmtime(os.path.join(out, "metadata.json")) != mtime


def _no_dataset(out):
  assert not os.path.exists(os.path.join(out, "metadata.json"))
  assert not [f for f in os.listdir(out) if "array_record" in f] if os.path.isdir(out) else True


def test_bad_inputs_one_line_nothing_marked_complete(tmp_path):
  out = str(tmp_path / "out")
  cases = []
  cases.append((str(tmp_path / "missing"), "npz", {}, "does not exist"))
  bad_video = tmp_path / "bad"
  bad_video.mkdir()
  good = tmp_path / "good.mp4"
  vf.write_video(str(good), vf.moving_square_video(20, 32, 32))
  data = good.read_bytes()
  (bad_video / "a.mp4").write_bytes(data[:len(data) // 2])
  cases.append((str(bad_video), "mp4", {}, "unreadable or truncated|truncated"))
  (tmp_path / "junk.mp4").write_bytes(b"not a video at all")
  cases.append((str(tmp_path / "junk.mp4"), "mp4", {}, "unreadable or truncated"))
  shapes = tmp_path / "shapes"
  vf.write_png_folders(str(shapes), [4])
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(shapes / "clip0" / "frame_2.png")
  cases.append((str(shapes), "frames", {}, "frame_2.png is 9x9.*same size"))
  import h5py  # pylint: disable=g-import-not-at-top
  with h5py.File(tmp_path / "nof.hdf5", "w") as f:
    f.create_dataset("speed", data=np.zeros(10))
  cases.append((str(tmp_path / "nof.hdf5"), "hdf5", {}, "no frames dataset.*--hdf5_key"))
  (tmp_path / "trunc.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 20)
  cases.append((str(tmp_path / "trunc.hdf5"), "hdf5", {}, "not a readable HDF5"))
  short = tmp_path / "short"
  vf.write_npz_episodes(str(short), [6, 3, 6])
  cases.append((str(short), "npz", dict(min_frames=5), "episode_1.npz has 3 frames.*skip_short"))
  cases.append((str(short), "avi", {}, "unknown --format"))
  np.savez(tmp_path / "noframes.npz", video=np.zeros((3, 4, 4, 3), np.uint8))
  cases.append((str(tmp_path / "noframes.npz"), "npz", {}, "no 'frames' array"))
  for src, fmt, kwargs, pattern in cases:
    with pytest.raises(DataError, match=pattern) as err:
      iv.import_dataset(src, fmt, out, progress=False, **kwargs)
    assert "\n" not in str(err.value), str(err.value)
    _no_dataset(out)
  # --skip_short drops the short episode instead.
  meta = iv.import_dataset(str(short), "npz", out, min_frames=5, skip_short=True, image_size=0,
                           progress=False)
  assert meta["num_episodes"] == 2 and meta["import"]["num_skipped_short"] == 1


def test_window_longer_than_shortest_episode(tmp_path):
  src, out = str(tmp_path / "npz"), str(tmp_path / "out")
  vf.write_npz_episodes(src, [5, 8, 8], with_truth=False)
  iv.import_dataset(src, "npz", out, image_size=0, progress=False)
  with pytest.raises(DataError, match="shortest episode \\(5 frames\\).*--min_frames 6"):
    pipeline.WindowSource(out, "train", window_length=6)


def test_cli_one_line_error(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  proc = subprocess.run([sys.executable, "-m", "flam_jax.data.import_video", "--src",
                         str(tmp_path / "nope"), "--format", "mp4", "--out", str(tmp_path / "o")],
                        capture_output=True, text=True, check=False)
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines() == [
      f"error: {tmp_path / 'nope'} does not exist; pass --src an existing file or folder"]


def test_metadata_is_plain_json(tmp_path):
  src, out = str(tmp_path / "npz"), str(tmp_path / "out")
  vf.write_npz_episodes(src, [4, 4, 4], with_truth=False)
  iv.import_dataset(src, "npz", out, image_size=0, progress=False)
  with open(os.path.join(out, "metadata.json")) as f:
    meta = json.load(f)
  assert meta["fields"] == [dict(name="frames", dtype="uint8", shape=[4, 16, 16, 3])]
  assert meta["command"].startswith("python -m flam_jax.data.import_video")


def test_training_on_imported_action_free_video(tmp_path):
  """tokenizer (MAGVIT-v2 kind) then FLAM, end to end on imported mp4 of uneven lengths."""
  from flam_jax import train  # pylint: disable=g-import-not-at-top
  from configs import video  # pylint: disable=g-import-not-at-top
  src, data = tmp_path / "videos", str(tmp_path / "data")
  src.mkdir()
  for i, t in enumerate([9, 7, 8, 6]):
    vf.write_video(str(src / f"clip{i}.mp4"), vf.moving_square_video(t, 24, 32, seed=i))
  iv.import_dataset(str(src), "mp4", data, image_size=16, min_frames=4, progress=False)
  config = video.get_config("flam")
  config.stage = "tokenizer,lam"
  config.data.dir = data
  config.data.image_size, config.data.window_length = 16, 4
  config.data.num_workers, config.progress_bar = 0, False
  config.batch_size, config.num_train_steps = 2, 2
  config.log_every_steps, config.image_every_steps, config.checkpoint_every_steps = 1, 100, 100
  config.tokenizer.update(dict(encoder_channels=(8, 8), z_channels=8, codebook_dim=8,
                               levels=(4, 4, 2)))
  config.lam.update(dict(d_model=16, num_heads=2, num_blocks=1, aggregator_blocks=1, num_slots=2,
                         slot_iterations=1, prediction_steps=2, subtoken_sizes=(4, 8), remat=False))
  config.optim.warmup_steps = 1
  summary = train.run(config, str(tmp_path / "work"))
  assert summary["step"] == 2 and np.isfinite(summary["metrics"]["loss"])
  token_meta = pipeline.load_metadata(str(tmp_path / "work" / "tokens"))
  assert token_meta["ground_truth"] == [] and [fd["name"] for fd in token_meta["fields"]] == [
      "tokens"]
  assert token_meta["splits"]["train"]["episode_lengths"] == [9, 7]

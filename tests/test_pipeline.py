"""Tests for metadata checks, the window source and the grain pipeline."""

import hashlib
import json
import os
import pickle
import shutil

import numpy as np
import pytest

from flam_jax.data import multigrid as mg
from flam_jax.data import pipeline as pl
from flam_jax.errors import DataError

CFG = mg.MultigridConfig(
    grid_size=8, resolution=32, num_agents=3, episode_length=12)
SEED = 3
T = 5  # Window length.
STRIDE = 3  # -> windows per episode: (12 - 5) // 3 + 1 = 3.
NUM_TRAIN = 10  # Of 12 episodes.
NUM_WINDOWS = NUM_TRAIN * 3


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("multigrid"))
  mg.write_dataset(out, CFG, num_episodes=12, seed=SEED, episodes_per_shard=4,
                   progress=False)
  return out


@pytest.fixture
def copy_dir(data_dir, tmp_path):
  out = str(tmp_path / "copy")
  shutil.copytree(data_dir, out)
  return out


def _kwargs(**overrides):
  kwargs = dict(window_length=T, window_stride=STRIDE, batch_size=4, seed=SEED,
                shard_index=0, shard_count=1)
  kwargs.update(overrides)
  return kwargs


def _window_keys(batches):
  """One hash per window, in iteration order."""
  keys = []
  for b in batches:
    for i in range(b["frames"].shape[0]):
      h = hashlib.sha1()
      for name in sorted(b):
        h.update(np.ascontiguousarray(b[name][i]).tobytes())
      keys.append(h.hexdigest())
  return keys


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_load_metadata(data_dir):
  meta = pl.load_metadata(data_dir)
  assert meta["config"]["resolution"] == 32
  assert meta["splits"]["train"]["num_episodes"] == NUM_TRAIN


def test_load_metadata_errors(tmp_path, copy_dir):
  with pytest.raises(DataError, match="does not exist.*data.multigrid"):
    pl.load_metadata(str(tmp_path / "nope"))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(DataError, match="no metadata.json.*--out"):
    pl.load_metadata(str(empty))

  meta_path = os.path.join(copy_dir, "metadata.json")
  with open(meta_path) as f:
    good = f.read()
  with open(meta_path, "w") as f:
    f.write(good[:50])
  with pytest.raises(DataError, match="cannot read"):
    pl.load_metadata(copy_dir)
  with open(meta_path, "w") as f:
    json.dump({"format_version": 1}, f)
  with pytest.raises(DataError, match="cannot read"):
    pl.load_metadata(copy_dir)
  with open(meta_path, "w") as f:
    f.write(good)

  shard = os.path.join(copy_dir, "train-00001-of-00003.array_record")
  with open(shard, "wb"):
    pass
  with pytest.raises(DataError, match="train-00001-of-00003.*empty"):
    pl.load_metadata(copy_dir)
  os.remove(shard)
  with pytest.raises(DataError, match="train-00001-of-00003.*missing") as info:
    pl.load_metadata(copy_dir)
  msg = str(info.value)
  assert "\n" not in msg
  assert "--episodes 12" in msg and "--num_agents 3" in msg  # Exact command.


def test_validate(data_dir):
  meta = pl.load_metadata(data_dir)
  pl.validate(meta, image_size=32, window_length=12, num_agents=3)
  with pytest.raises(DataError) as info:
    pl.validate(meta, image_size=128, window_length=T)
  assert str(info.value) == (
      "dataset frames are 32x32 but config.data.image_size=128; regenerate or"
      " set --config.data.image_size=32")
  with pytest.raises(DataError, match="window_length=13 .*12 frames"):
    pl.validate(meta, image_size=32, window_length=13)
  with pytest.raises(DataError, match="3 agents .*num_agents=4"):
    pl.validate(meta, image_size=32, window_length=T, num_agents=4)


def test_window_source(data_dir):
  meta = pl.load_metadata(data_dir)
  src = pl.WindowSource(data_dir, "train", window_length=T,
                        window_stride=STRIDE)
  assert len(src) == NUM_WINDOWS and src.windows_per_episode == 3
  assert src.window_index(0) == (0, 0)
  assert src.window_index(5) == (1, 6)
  with pytest.raises(IndexError):
    src.window_index(NUM_WINDOWS)
  w = src[5]
  assert {k: (v.dtype, v.shape) for k, v in w.items()} == {
      "frames": (np.uint8, (T, 32, 32, 3)),
      "masks": (np.uint8, (T, 32, 32)),
      "actions": (np.int32, (T - 1, 3)),
      "positions": (np.int32, (T, 3, 2)),
      "headings": (np.int32, (T, 3)),
  }
  # Windows equal slices of the regenerated episodes, in every shard.
  for index in (0, 5, 13, NUM_WINDOWS - 1):
    episode, start = src.window_index(index)
    ep = mg.generate_episode(CFG, mg.episode_rng(SEED, episode))
    w = src[index]
    for name in mg.FIELDS:
      stop = start + T - (name == "actions")
      np.testing.assert_array_equal(w[name], ep[name][start:stop])
  # The test split starts at episode 11 of the dataset.
  test_src = pl.WindowSource(data_dir, "test", window_length=12,
                             metadata=meta, fields=("positions",))
  assert len(test_src) == 1 and set(test_src[0]) == {"positions"}
  np.testing.assert_array_equal(
      test_src[0]["positions"],
      mg.generate_episode(CFG, mg.episode_rng(SEED, 11))["positions"])
  # Picklable for worker processes; no reader is carried along.
  clone = pickle.loads(pickle.dumps(src))
  np.testing.assert_array_equal(clone[13]["frames"], src[13]["frames"])


def test_batches(data_dir):
  it = iter(pl.make_dataset(data_dir, "train", **_kwargs()))
  b = next(it)
  assert b["frames"].shape == (4, T, 32, 32, 3)
  assert b["frames"].dtype == np.uint8
  assert b["actions"].shape == (4, T - 1, 3) and b["actions"].dtype == np.int32
  assert b["masks"].shape == (4, T, 32, 32)
  # Default sharding asks JAX: a single process here.
  it = iter(pl.make_dataset(data_dir, "train", window_length=T, batch_size=2,
                            seed=0, fields=("headings",)))
  assert next(it)["headings"].shape == (2, T, 3)


def test_single_ordered_pass(data_dir):
  src = pl.WindowSource(data_dir, "train", window_length=T,
                        window_stride=STRIDE)
  ds = pl.make_dataset(data_dir, "train", **_kwargs(
      shuffle=False, num_epochs=1, drop_remainder=False, batch_size=7))
  batches = list(ds)
  assert [b["frames"].shape[0] for b in batches] == [7, 7, 7, 7, 2]
  assert _window_keys(batches) == _window_keys(
      [{k: v[None] for k, v in src[i].items()} for i in range(len(src))])


def test_shuffle_differs_across_epochs(data_dir):
  kw = _kwargs(fields=("frames", "positions"), batch_size=1)
  ordered = _window_keys(pl.make_dataset(
      data_dir, "train", **dict(kw, shuffle=False, num_epochs=1)))
  keys = _window_keys(pl.make_dataset(data_dir, "train",
                                      **dict(kw, num_epochs=2)))
  first, second = keys[:NUM_WINDOWS], keys[NUM_WINDOWS:]
  assert len(set(ordered)) == NUM_WINDOWS  # Windows are distinguishable.
  assert len(keys) == 2 * NUM_WINDOWS
  assert sorted(first) == sorted(second) == sorted(ordered)
  assert first != ordered and second != first
  # Same seed, same order; another seed, another order.
  again = _window_keys(pl.make_dataset(data_dir, "train",
                                       **dict(kw, num_epochs=1)))
  other = _window_keys(pl.make_dataset(data_dir, "train",
                                       **dict(kw, num_epochs=1, seed=4)))
  assert again == first and other != first


@pytest.mark.parametrize("shuffle", [False, True])
def test_process_shards_disjoint_and_cover(data_dir, shuffle):
  shards = []
  for i in range(3):
    ds = pl.make_dataset(data_dir, "train", **_kwargs(
        shard_index=i, shard_count=4, shuffle=shuffle, num_epochs=1,
        drop_remainder=False, fields=("frames", "positions")))
    shards.append(_window_keys(ds))
  ds = pl.make_dataset(data_dir, "train", **_kwargs(
      shard_index=3, shard_count=4, shuffle=shuffle, num_epochs=1,
      drop_remainder=False, fields=("frames", "positions")))
  shards.append(_window_keys(ds))
  sizes = [len(s) for s in shards]
  assert max(sizes) - min(sizes) <= 1 and sum(sizes) == NUM_WINDOWS
  union = set().union(*shards)
  assert len(union) == NUM_WINDOWS  # Disjoint and covering.
  everything = _window_keys(pl.make_dataset(data_dir, "train", **_kwargs(
      shard_by_process=False, shuffle=False, num_epochs=1,
      drop_remainder=False, fields=("frames", "positions"))))
  assert union == set(everything)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_resume_is_exact(data_dir, num_workers):
  kw = _kwargs(num_workers=num_workers, fields=("frames", "actions"))
  it = pl.make_iterator(data_dir, "train", **kw)
  # 9 batches of 4 cross the 30-window epoch boundary.
  head = _take(it, 5)
  state = it.get_state()
  expected = _take(it, 4)
  restored = pl.make_iterator(data_dir, "train", **kw)
  restored.set_state(state)
  got = _take(restored, 4)
  assert _window_keys(got) == _window_keys(expected)
  # Also the same stream as a fresh in-process iterator.
  ref = pl.make_iterator(data_dir, "train", **dict(kw, num_workers=0))
  assert _window_keys(_take(ref, 9)) == _window_keys(head + expected)
  for i in (it, restored):
    if hasattr(i, "close"):
      i.close()


def test_corrupt_shards(copy_dir):
  shard = os.path.join(copy_dir, "train-00001-of-00003.array_record")
  with open(shard, "rb") as f:
    good = f.read()
  # Damaged chunk data: the file opens, reading an episode in it fails.
  bad = bytearray(good)
  bad[300:400] = b"\x55" * 100
  with open(shard, "wb") as f:
    f.write(bytes(bad))
  src = pl.WindowSource(copy_dir, "train", window_length=T)
  assert src[0]["frames"].shape[0] == T  # Other shards still read.
  with pytest.raises(DataError, match="train-00001.*regenerate") as info:
    _ = src[4 * src.windows_per_episode]
  assert "\n" not in str(info.value)
  it = pl.make_iterator(copy_dir, "train", **_kwargs(
      shuffle=False, num_epochs=1))
  with pytest.raises(DataError, match="train-00001-of-00003"):
    list(it)
  # Garbage or truncated files fail when the source is built.
  with open(shard, "wb") as f:
    f.write(np.random.default_rng(0).bytes(len(good)))
  with pytest.raises(DataError, match="train-00001-of-00003.*regenerate"):
    pl.make_dataset(copy_dir, "train", **_kwargs())
  with open(shard, "wb") as f:
    f.write(good[:len(good) // 2])
  with pytest.raises(DataError, match="train-00001-of-00003.*regenerate"):
    pl.WindowSource(copy_dir, "train", window_length=T)
  # A valid file with the wrong number of episodes (2, metadata says 4).
  shutil.copy(os.path.join(copy_dir, "train-00002-of-00003.array_record"),
              shard)
  with pytest.raises(DataError, match="train-00001-of-00003.*holds 2"):
    pl.WindowSource(copy_dir, "train", window_length=T)


def test_dataset_errors(data_dir):
  with pytest.raises(DataError, match="no split 'dev'"):
    pl.make_dataset(data_dir, "dev", **_kwargs())
  with pytest.raises(DataError, match="window_length=13"):
    pl.make_dataset(data_dir, "train", **_kwargs(window_length=13))
  with pytest.raises(DataError, match="batch_size=5"):
    pl.make_dataset(data_dir, "test", **_kwargs(
        window_length=12, batch_size=5, num_epochs=1))


def test_measure_throughput(data_dir):
  it = pl.make_iterator(data_dir, "train", **_kwargs())
  assert pl.measure_throughput(it, 3) > 0

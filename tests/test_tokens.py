"""The token cache: one pass of a frozen encoder, read back by the same grain pipeline."""

import os
import threading

import numpy as np

from flam_jax.data import multigrid, pipeline, tokens

GRID = 4  # 16 px frames, 4 px patches.


def _fake_encode(frames_fHWc):
  """A deterministic stand-in tokenizer: each 4x4 patch's mean red value -> index."""
  f, h, w, _ = frames_fHWc.shape
  patches = frames_fHWc[..., 0].reshape(f, GRID, h // GRID, GRID, w // GRID).mean(axis=(2, 4))
  return patches.astype(np.int32)


def _write_data(data_dir: str, num_episodes: int = 10, seed: int = 0) -> None:
  multigrid.write_dataset(data_dir, multigrid.MultigridConfig(
      grid_size=4, resolution=16, num_agents=2, episode_length=6), num_episodes=num_episodes,
      seed=seed, progress=False)


def _counting_encoder():
  """(_fake_encode that appends each call's frame count to a list, the list)."""
  calls = []

  def encode(frames):
    calls.append(len(frames))
    return _fake_encode(frames)

  return encode, calls


def test_cache_tokens_round_trip_and_reuse(tmp_path):
  data_dir, token_dir = str(tmp_path / "data"), str(tmp_path / "tokens")
  _write_data(data_dir)
  encode, calls = _counting_encoder()

  meta = tokens.cache_tokens(data_dir, token_dir, encode, tag={"step": 1}, frames_per_call=16,
                             progress=False)
  assert set(calls) == {16}  # Always the same batch size: one compilation for a jitted encoder.
  assert meta["tokens"]["grid"] == [GRID, GRID]
  source = pipeline.WindowSource(data_dir, "test", window_length=6)
  cached = pipeline.WindowSource(token_dir, "test", window_length=6)
  for e in range(source.num_episodes):
    original, tokenized = source.read_episode(e), cached.read_episode(e)
    np.testing.assert_array_equal(tokenized["tokens"], _fake_encode(original["frames"]))
    np.testing.assert_array_equal(tokenized["actions"], original["actions"])

  # Same tag: reused without encoding; another tag: rebuilt.
  mtime = os.path.getmtime(os.path.join(token_dir, "metadata.json"))
  calls.clear()
  tokens.cache_tokens(data_dir, token_dir, encode, tag={"step": 1}, progress=False)
  assert not calls and os.path.getmtime(os.path.join(token_dir, "metadata.json")) == mtime
  tokens.cache_tokens(data_dir, token_dir, encode, tag={"step": 2}, progress=False)
  assert calls

  # Other data under the same tag (a cache shared by runs, pointed at another dataset): rebuilt.
  other_dir = str(tmp_path / "other")
  _write_data(other_dir, seed=1)
  calls.clear()
  meta = tokens.cache_tokens(other_dir, token_dir, encode, tag={"step": 2}, progress=False)
  assert calls and meta["tokens"]["source"] == os.path.abspath(other_dir)
  cached = pipeline.WindowSource(token_dir, "test", window_length=6)
  np.testing.assert_array_equal(
      cached.read_episode(0)["tokens"],
      _fake_encode(pipeline.WindowSource(other_dir, "test", window_length=6).read_episode(0)[
          "frames"]))

  batch = next(iter(pipeline.make_dataset(token_dir, "train", window_length=4, batch_size=3,
                                          seed=0, fields=("tokens", "actions"))))
  assert batch["tokens"].shape == (3, 4, GRID, GRID) and batch["actions"].shape == (3, 3, 2)


def test_runs_sharing_a_cache_build_it_once(tmp_path):
  """Two runs starting together on one shared cache directory: one encodes, one waits."""
  data_dir, token_dir = str(tmp_path / "data"), str(tmp_path / "shared" / "tokens")
  _write_data(data_dir, num_episodes=6)
  encode, frames_encoded = _counting_encoder()

  runs = [threading.Thread(target=tokens.cache_tokens, args=(data_dir, token_dir, encode),
                           kwargs=dict(tag={"step": 1}, frames_per_call=8, progress=False))
          for _ in range(2)]
  for run in runs:
    run.start()
  for run in runs:
    run.join()
  shared_run = sum(frames_encoded)
  frames_encoded.clear()
  tokens.cache_tokens(data_dir, str(tmp_path / "alone"), encode, tag={"step": 1},
                      frames_per_call=8, progress=False)
  assert shared_run == sum(frames_encoded) > 0  # As many frames as one run alone encodes.

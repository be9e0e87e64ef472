"""The token cache: one pass of a frozen encoder, read back by the same grain pipeline."""

import os

import numpy as np

from flam_jax.data import multigrid, pipeline, tokens

GRID = 4  # 16 px frames, 4 px patches.


def _fake_encode(frames_fHWc):
  """A deterministic stand-in tokenizer: each 4x4 patch's mean red value -> index."""
  f, h, w, _ = frames_fHWc.shape
  patches = frames_fHWc[..., 0].reshape(f, GRID, h // GRID, GRID, w // GRID).mean(axis=(2, 4))
  return patches.astype(np.int32)


def test_cache_tokens_round_trip_and_reuse(tmp_path):
  data_dir, token_dir = str(tmp_path / "data"), str(tmp_path / "tokens")
  multigrid.write_dataset(data_dir, multigrid.MultigridConfig(
      grid_size=4, resolution=16, num_agents=2, episode_length=6), num_episodes=10, progress=False)
  calls = []

  def encode(frames):
    calls.append(len(frames))
    return _fake_encode(frames)

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

  batch = next(iter(pipeline.make_dataset(token_dir, "train", window_length=4, batch_size=3,
                                          seed=0, fields=("tokens", "actions"))))
  assert batch["tokens"].shape == (3, 4, GRID, GRID) and batch["actions"].shape == (3, 3, 2)

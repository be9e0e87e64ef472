"""Tests for the Multigrid generator and shard writer (tiny worlds, fast)."""

import json
import os
import subprocess
import sys

from array_record.python import array_record_module
import numpy as np
import pytest

from flam_jax.data import multigrid as mg
from flam_jax.data import multigrid_render as render
from flam_jax.data import records
from flam_jax.errors import ConfigError

TINY = mg.MultigridConfig(
    grid_size=8, resolution=32, num_agents=3, episode_length=12)
# Crowded: frequent agent-agent and agent-wall blocking.
CROWDED = mg.MultigridConfig(
    grid_size=6, resolution=24, num_agents=6, episode_length=40,
    sticky_prob=0.3, wall_density=0.15)
# Heading -> (d_row, d_col), written out independently of the module.
_DELTAS = np.array([[0, 1], [1, 0], [0, -1], [-1, 0]])
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _episodes(cfg, n, seed=0):
  return [mg.generate_episode(cfg, mg.episode_rng(seed, e)) for e in range(n)]


def test_shapes_and_dtypes():
  ep = mg.generate_episode(TINY, mg.episode_rng(0, 0))
  l, k, r = 12, 3, 32
  assert ep["frames"].dtype == np.uint8 and ep["frames"].shape == (l, r, r, 3)
  assert ep["masks"].dtype == np.uint8 and ep["masks"].shape == (l, r, r)
  assert ep["actions"].dtype == np.int32 and ep["actions"].shape == (l - 1, k)
  assert ep["positions"].dtype == np.int32
  assert ep["positions"].shape == (l, k, 2)
  assert ep["headings"].dtype == np.int32 and ep["headings"].shape == (l, k)
  assert set(mg.field_shapes(TINY)) == set(mg.FIELDS)
  for name, shape in mg.field_shapes(TINY).items():
    assert ep[name].shape == shape


def test_determinism():
  a = mg.generate_episode(TINY, mg.episode_rng(7, 3))
  b = mg.generate_episode(TINY, mg.episode_rng(7, 3))
  for name in mg.FIELDS:
    np.testing.assert_array_equal(a[name], b[name])
  c = mg.generate_episode(TINY, mg.episode_rng(8, 3))
  d = mg.generate_episode(TINY, mg.episode_rng(7, 4))
  assert not np.array_equal(a["frames"], c["frames"])
  assert not np.array_equal(a["frames"], d["frames"])


def test_palette_distinct():
  assert render.AGENT_COLORS.shape == (16, 3) and render.AGENT_COLORS.dtype == np.uint8
  lut = {tuple(c) for c in render.COLOR_LUT}
  assert len(lut) == 18  # Floor, wall and 16 agents all distinct.


def test_sprites_point_along_heading():
  sprites = render.agent_sprites(8)  # [4, 8, 8]
  assert sprites.shape == (4, 8, 8) and sprites.dtype == bool
  right = sprites[mg.RIGHT]
  cols = right.sum(axis=0)
  cols = cols[cols > 0]
  assert len(cols) >= 3 and np.all(np.diff(cols) <= 0)  # Narrows to the right.
  np.testing.assert_array_equal(right, right[::-1])  # Symmetric about rows.
  # Down is +row: the triangle narrows towards the bottom.
  rows = sprites[mg.DOWN].sum(axis=1)
  rows = rows[rows > 0]
  assert np.all(np.diff(rows) <= 0)
  np.testing.assert_array_equal(sprites[mg.LEFT], right[:, ::-1])
  np.testing.assert_array_equal(sprites[mg.UP], sprites[mg.DOWN][::-1])
  for c in (1, 2, 4):
    assert render.agent_sprites(c).reshape(4, -1).any(axis=1).all()


@pytest.mark.parametrize("cfg", [TINY, CROWDED])
def test_frames_masks_positions_agree(cfg):
  c = cfg.cell_size
  sprites = render.agent_sprites(c)
  for ep in _episodes(cfg, 4):
    frames, masks = ep["frames"], ep["masks"]
    pos, head = ep["positions"], ep["headings"]
    # Background: floor black, walls grey; walls are static whole cells.
    np.testing.assert_array_equal(frames[masks == mg.FLOOR_ID], 0)
    np.testing.assert_array_equal(frames[masks == mg.WALL_ID],
                                  np.broadcast_to(render.WALL_COLOR, (
                                      (masks == mg.WALL_ID).sum(), 3)))
    walls_GG = (masks[0] == mg.WALL_ID)[::c, ::c]
    assert walls_GG[0].all() and walls_GG[-1].all()
    assert walls_GG[:, 0].all() and walls_GG[:, -1].all()
    for t in range(cfg.episode_length):
      occupied = {tuple(p) for p in pos[t]}
      assert len(occupied) == cfg.num_agents  # One agent per cell.
      for k in range(cfg.num_agents):
        r, q = pos[t, k]
        assert not walls_GG[r, q]
        on = masks[t] == mg.FIRST_AGENT_ID + k
        cell = np.zeros_like(on)
        cell[r * c:(r + 1) * c, q * c:(q + 1) * c] = True
        assert on.any() and not (on & ~cell).any()  # Inside its cell only.
        np.testing.assert_array_equal(on[r * c:(r + 1) * c, q * c:(q + 1) * c],
                                      sprites[head[t, k]])
        np.testing.assert_array_equal(
            frames[t][on], np.broadcast_to(render.AGENT_COLORS[k], (on.sum(), 3)))
      # Any pixel that is not an agent's is floor or wall by the static map.
      static = np.repeat(np.repeat(walls_GG, c, 0), c, 1)
      free = masks[t] < mg.FIRST_AGENT_ID
      np.testing.assert_array_equal(masks[t][free],
                                    static[free].astype(np.uint8))


def test_dynamics_follow_actions():
  counts = {"moved": 0, "wall": 0, "agent": 0}
  for cfg in (CROWDED, TINY):
    for ep in _episodes(cfg, 6):
      _check_dynamics(cfg, ep, counts)
  # The episodes exercise every branch.
  assert counts["moved"] and counts["wall"] and counts["agent"]


def _check_dynamics(cfg, ep, counts):
  """Checks one episode's transitions against its actions; tallies outcomes."""
  pos, head, act = ep["positions"], ep["headings"], ep["actions"]
  cs = cfg.cell_size
  walls_GG = (ep["masks"][0] == mg.WALL_ID)[::cs, ::cs]
  for t in range(cfg.episode_length - 1):
    for k in range(cfg.num_agents):
      a, h = act[t, k], head[t, k]
      p0, p1, h1 = pos[t, k], pos[t + 1, k], head[t + 1, k]
      assert 0 <= a < mg.NUM_ACTIONS
      if a == mg.TURN_LEFT:
        assert h1 == (h - 1) % 4 and (p1 == p0).all()
      elif a == mg.TURN_RIGHT:
        assert h1 == (h + 1) % 4 and (p1 == p0).all()
      elif a == mg.STAY:
        assert h1 == h and (p1 == p0).all()
      else:
        assert h1 == h
        target = p0 + _DELTAS[h]
        if (p1 == target).all():
          counts["moved"] += 1
          assert not walls_GG[tuple(target)]
        else:
          assert (p1 == p0).all()
          others_t = np.delete(pos[t], k, axis=0)
          others_t1 = np.delete(pos[t + 1], k, axis=0)
          if walls_GG[tuple(target)]:
            counts["wall"] += 1
          else:  # The target held another agent before or after the step.
            assert ((others_t == target).all(-1).any() or
                    (others_t1 == target).all(-1).any())
            counts["agent"] += 1


def test_sticky_actions():
  cfg = mg.MultigridConfig(grid_size=8, resolution=32, num_agents=3,
                           episode_length=12, sticky_prob=1.0)
  act = mg.generate_episode(cfg, mg.episode_rng(0, 0))["actions"]
  np.testing.assert_array_equal(act, np.broadcast_to(act[0], act.shape))
  cfg = mg.MultigridConfig(grid_size=8, resolution=32, num_agents=3,
                           episode_length=40, sticky_prob=0.0)
  act = mg.generate_episode(cfg, mg.episode_rng(0, 0))["actions"]
  assert set(np.unique(act)) == {0, 1, 2, 3}


@pytest.mark.parametrize("kwargs, match", [
    (dict(grid_size=8, resolution=30), "resolution=30 .*grid_size=8"),
    (dict(num_agents=0), "num_agents=0"),
    (dict(num_agents=17), "num_agents=17"),
    (dict(episode_length=1), "episode_length=1"),
    (dict(sticky_prob=1.5), "sticky_prob"),
    (dict(wall_density=1.0), "wall_density"),
    (dict(grid_size=4, resolution=16, num_agents=5), "free cells"),
])
def test_config_errors(kwargs, match):
  with pytest.raises(ConfigError, match=match) as info:
    mg.MultigridConfig(**kwargs)
  assert "\n" not in str(info.value)


def test_split_counts():
  assert records.split_counts(100) == {"train": 80, "validation": 10, "test": 10}
  assert records.split_counts(12) == {"train": 10, "validation": 1, "test": 1}
  assert records.split_counts(3) == {"train": 1, "validation": 1, "test": 1}
  assert records.split_counts(2) == {"train": 2, "validation": 0, "test": 0}
  for n in range(3, 60):
    counts = records.split_counts(n)
    assert sum(counts.values()) == n and min(counts.values()) >= 1


def _read_record(path, i):
  reader = array_record_module.ArrayRecordReader(path)
  try:
    assert "group_size:1," in reader.writer_options_string()
    return reader.read([i])[0], reader.num_records()
  finally:
    reader.close()


def test_write_dataset(tmp_path):
  out = str(tmp_path / "ds")
  meta = mg.write_dataset(out, TINY, num_episodes=12, seed=5,
                          episodes_per_shard=4, progress=False)
  with open(os.path.join(out, "metadata.json")) as f:
    assert json.load(f) == meta
  assert not any(n.endswith(".tmp") for n in os.listdir(out))
  assert meta["format_version"] == records.FORMAT_VERSION
  assert meta["config"] == {
      "grid_size": 8, "resolution": 32, "num_agents": 3, "episode_length": 12,
      "sticky_prob": 0.5, "wall_density": 0.05}
  assert meta["seed"] == 5 and meta["num_episodes"] == 12
  splits = meta["splits"]
  assert {s: splits[s]["num_episodes"] for s in records.SPLITS} == {
      "train": 10, "validation": 1, "test": 1}
  assert splits["train"]["shards"] == [
      f"train-{i:05d}-of-00003.array_record" for i in range(3)]
  assert splits["train"]["shard_num_episodes"] == [4, 4, 2]
  assert splits["validation"]["first_episode"] == 10
  assert splits["test"]["first_episode"] == 11
  assert [f["name"] for f in meta["fields"]] == list(mg.FIELDS)
  shapes = {f["name"]: tuple(f["shape"]) for f in meta["fields"]}
  assert shapes == mg.field_shapes(TINY)
  assert {f["name"]: f["dtype"] for f in meta["fields"]} == mg.FIELD_DTYPES

  # Records are the raw field bytes in order; any episode regenerates alone.
  def check(split, shard, i, episode):
    raw, _ = _read_record(os.path.join(out, splits[split]["shards"][shard]), i)
    assert len(raw) == meta["record_bytes"]
    ep = mg.generate_episode(TINY, mg.episode_rng(5, episode))
    offset = 0
    for f in meta["fields"]:
      arr = np.frombuffer(raw, np.dtype(f["dtype"]).newbyteorder("<"),
                          int(np.prod(f["shape"])), offset).reshape(f["shape"])
      np.testing.assert_array_equal(arr, ep[f["name"]])
      offset += arr.nbytes

  check("train", 0, 0, 0)
  check("train", 1, 3, 7)
  check("train", 2, 1, 9)
  check("test", 0, 0, 11)
  for split in records.SPLITS:
    total = 0
    for name in splits[split]["shards"]:
      total += _read_record(os.path.join(out, name), 0)[1]
    assert total == splits[split]["num_episodes"]


def test_cli(tmp_path):
  out = str(tmp_path / "cli")
  proc = subprocess.run(
      [sys.executable, "-m", "flam_jax.data.multigrid", "--out", out,
       "--num-agents", "2", "--episodes", "3", "--grid_size", "6",
       "--resolution=24", "--episode_length", "4", "--seed", "1"],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr
  assert out in proc.stdout and "train=1, validation=1, test=1" in proc.stdout
  with open(os.path.join(out, "metadata.json")) as f:
    meta = json.load(f)
  assert meta["config"]["num_agents"] == 2 and meta["seed"] == 1
  bad = subprocess.run(
      [sys.executable, "-m", "flam_jax.data.multigrid", "--out", out,
       "--episodes", "3", "--grid_size", "8", "--resolution", "30"],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert bad.returncode != 0
  assert bad.stderr.strip().splitlines()[-1].startswith("error: resolution=30")

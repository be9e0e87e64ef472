"""The goal task: expert, determinism, rewards, demonstrations in the pipeline's format."""

import numpy as np
import pytest

from flam_jax.data import goal_task as gt
from flam_jax.data import multigrid as mg
from flam_jax.data import pipeline
from flam_jax.errors import ConfigError

CFG = gt.GoalTaskConfig(grid_size=6, resolution=24, num_distractors=2, max_steps=12)


@pytest.mark.parametrize("distractors", [0, 2, 4])
def test_expert_reaches_the_goal(distractors):
  cfg = gt.GoalTaskConfig(grid_size=8, resolution=32, num_distractors=distractors, max_steps=20)
  out = gt.run_episodes(cfg, gt.expert_policy, num_episodes=30, seed=3)
  if distractors == 0:  # Nothing can block it: always on the shortest path.
    assert out["success_rate"] == 1.0
  else:
    assert out["success_rate"] >= 0.9
  random = gt.run_episodes(cfg, gt.random_policy, num_episodes=30, seed=3)
  assert out["mean_return"] > random["mean_return"] + 0.3


def test_expert_follows_shortest_path_without_distractors():
  cfg = gt.GoalTaskConfig(grid_size=8, resolution=32, num_distractors=0, max_steps=30,
                          wall_density=0.2)
  env = gt.GoalTaskEnv(cfg)
  for episode in range(10):
    env.reset(seed=1, episode=episode)
    start = env.dist_GG[tuple(env.positions[0])]
    moves = 0
    terminated = False
    while not terminated:
      action = env.expert_action()
      moves += action == mg.FORWARD
      _, reward, terminated, truncated, info = env.step(action)
      assert not truncated
    assert moves == start and info["success"]
    assert reward == pytest.approx(1 - 0.9 * env.steps / cfg.max_steps)


def test_determinism_and_seeds():
  a = gt.generate_demonstration(CFG, mg.episode_rng(5, 2))
  b = gt.generate_demonstration(CFG, mg.episode_rng(5, 2))
  c = gt.generate_demonstration(CFG, mg.episode_rng(5, 3))
  for name in gt.FIELDS:
    np.testing.assert_array_equal(a[name], b[name])
  assert not np.array_equal(a["frames"], c["frames"])
  r1 = gt.run_episodes(CFG, gt.random_policy, 8, seed=4)
  r2 = gt.run_episodes(CFG, gt.random_policy, 8, seed=4)
  assert r1 == r2


def test_demonstration_fields_agree():
  ep = gt.generate_demonstration(CFG, mg.episode_rng(0, 0))
  l, k = CFG.episode_length, CFG.num_agents
  assert ep["actions"].shape == (l - 1, k) and ep["active"].shape == (l,)
  env = gt.GoalTaskEnv(CFG)
  env.reset(rng=mg.episode_rng(0, 0))
  for t in range(l - 1):
    expected = gt.expert_action(env.walls_GG, env.goal, ep["positions"][t], ep["headings"][t, 0])
    assert ep["actions"][t, 0] == expected
    on_goal = np.array_equal(ep["positions"][t, 0], env.goal)
    assert ep["active"][t] == (not on_goal)
    # Distractors never stand on the goal.
    assert not any(np.array_equal(p, env.goal) for p in ep["positions"][t, 1:])
  # The goal is white in the frames and floor in the masks.
  c = CFG.world.cell_size
  r, q = env.goal
  cell = ep["frames"][0, r * c:(r + 1) * c, q * c:(q + 1) * c]
  floor = ep["masks"][0, r * c:(r + 1) * c, q * c:(q + 1) * c] == mg.FLOOR_ID
  assert floor.any() and (cell[floor] == gt.GOAL_COLOR).all()


def test_dataset_reads_through_the_pipeline(tmp_path):
  meta = gt.write_dataset(str(tmp_path), CFG, num_episodes=5, seed=0, progress=False)
  assert meta["config"]["num_agents"] == 3 and meta["config"]["episode_length"] == 13
  source = pipeline.WindowSource(str(tmp_path), "train", window_length=4)
  window = source[0]
  assert window["frames"].shape == (4, 24, 24, 3) and window["actions"].shape == (3, 3)
  episode = source.read_episode(1)
  np.testing.assert_array_equal(
      episode["frames"], gt.generate_demonstration(CFG, mg.episode_rng(0, 1))["frames"])


def test_step_interface_and_bad_config():
  env = gt.GoalTaskEnv(CFG)
  frame, info = env.reset(seed=0)
  assert frame.shape == (24, 24, 3) and frame.dtype == np.uint8 and not info["success"]
  with pytest.raises(ValueError):
    env.step(7)
  for _ in range(CFG.max_steps):
    _, reward, terminated, truncated, _ = env.step(mg.STAY)
  assert truncated and not terminated and reward == 0.0
  with pytest.raises(RuntimeError):
    env.step(mg.STAY)
  with pytest.raises(ConfigError, match="free cells"):
    gt.GoalTaskConfig(grid_size=4, resolution=16, num_distractors=4)
  with pytest.raises(ConfigError, match="px per cell"):
    gt.GoalTaskConfig(grid_size=8, resolution=16)

"""Procgen generation in its own environment (numpy<2, gym<1, procgen2)."""

import json
import os

import numpy as np
import pytest

from flam_jax.data import pipeline, procgen
from flam_jax.errors import ConfigError

# An environment made by `procgen.ensure_environment` (FLAM_PROCGEN_VENV or the default one).
VENV = os.path.expanduser(os.environ.get("FLAM_PROCGEN_VENV", procgen.DEFAULT_VENV))
needs_env = pytest.mark.skipif(
    not os.path.isfile(os.path.join(VENV, ".flam_jax_ready")),
    reason=f"no Procgen environment at {VENV}; `python -m flam_jax.data.procgen` creates it")


def test_unknown_game():
  with pytest.raises(ConfigError, match="unknown --game 'pong'"):
    procgen.generate("pong", 2, "/tmp/unused")


@needs_env
def test_bigfish_episodes_with_actions(tmp_path):
  out = str(tmp_path / "bigfish")
  meta = procgen.generate("bigfish", 3, out, max_frames=12, min_frames=4, venv=VENV,
                          progress=False)
  assert meta["ground_truth"] == ["actions"] and meta["config"]["num_actions"] == 15
  assert meta["config"]["resolution"] == 64
  src = pipeline.WindowSource(out, "train", window_length=4)
  ep = src.read_episode(0)
  assert ep["frames"].dtype == np.uint8 and ep["frames"].shape[1:] == (64, 64, 3)
  assert len(ep["actions"]) == len(ep["frames"]) - 1
  assert ep["actions"].min() >= 0 and ep["actions"].max() < 15
  assert np.abs(np.diff(ep["frames"].astype(int), axis=0)).sum() > 0  # Something moves.
  again = procgen.generate("bigfish", 3, out, max_frames=12, min_frames=4, venv=VENV,
                           progress=False)
  assert again == pipeline.load_metadata(out)  # Reused.


def test_demonstrations_need_a_known_game_and_sizes():
  with pytest.raises(ConfigError, match="unknown --game 'pong'"):
    procgen.write_demonstrations("pong", 2, "/tmp/unused")
  with pytest.raises(ConfigError, match="--plan_horizon=0"):
    procgen.write_demonstrations("bigfish", 2, "/tmp/unused", plan_horizon=0)


def test_demonstrations_pad_after_an_early_end():
  frames = np.arange(3, dtype=np.uint8)[:, None, None, None] * np.ones((3, 64, 64, 3), np.uint8)
  padded = procgen._pad_demonstration(dict(frames=frames, actions=np.array([4, 7], np.int32)), 5)
  assert padded["frames"].shape == (5, 64, 64, 3)
  assert [int(f[0, 0, 0]) for f in padded["frames"]] == [0, 1, 2, 2, 2]  # The last repeated.
  assert padded["actions"].tolist() == [4, 7, 0, 0]
  assert padded["active"].tolist() == [1, 1, 0, 0, 0]  # Transitions with a real action.


@needs_env
def test_planner_demonstrations_train_a_policy_that_is_evaluated_live(tmp_path):
  """Demonstrations -> tokenizer -> behaviour cloning on their true actions -> pi_u on
  held-out levels beside the planner and a random policy (references cached)."""
  from flam_jax import train  # pylint: disable=g-import-not-at-top
  from tests import test_policy_stage  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / "demos")
  meta = procgen.write_demonstrations("bigfish", 4, out, episode_length=6, plan_horizon=2,
                                      eval_max_steps=8, venv=VENV, progress=False)
  assert meta["config"]["max_steps"] == 8 and np.isfinite(meta["demonstration_return"])
  src = pipeline.WindowSource(out, "train", window_length=6, fields=("frames", "actions", "active"))
  ep = src.read_episode(0)
  assert ep["frames"].shape == (6, 64, 64, 3) and ep["actions"].shape == (5,)
  assert ep["active"][-1] == 0 and ep["actions"].max() < 15
  assert procgen.write_demonstrations("bigfish", 4, out, episode_length=6, plan_horizon=2,
                                      eval_max_steps=8, venv=VENV, progress=False) == meta

  workdir = str(tmp_path / "policy")
  for stage in ("tokenizer", "policy"):
    config = test_policy_stage.tiny_config(stage, out, mode="true_actions", eval_episodes=2)
    config.data.image_size = 64
    train.run(config, workdir)
  with open(os.path.join(workdir, "policy", "evaluation.json")) as f:
    evaluation = json.load(f)
  assert evaluation["task"]["game"] == "bigfish"
  assert 0 < evaluation["labelling"]["transitions"] <= 10  # 2 train episodes of 5 transitions.
  for name in ("policy", "expert", "random"):
    run = evaluation[name]
    assert run["num_episodes"] == 2 and 1 <= run["mean_steps"] <= 8, (name, run)
  with open(os.path.join(out, "reference_returns.json")) as f:
    assert json.load(f)["entries"][0]["runs"]["expert"] == evaluation["expert"]  # Cached.

  # The same pi_u on the demonstrations' train levels, cut at 4 steps: a file of its own.
  config.policy.update(eval_levels="demonstrated", eval_max_steps=4)
  train.run(config, workdir)
  with open(os.path.join(workdir, "policy", "evaluation_demonstrated_levels_4_steps.json")) as f:
    on_train_levels = json.load(f)
  assert on_train_levels["key"]["eval_levels"] == "demonstrated"
  for name in ("policy", "expert", "random"):
    assert 1 <= on_train_levels[name]["mean_steps"] <= 4, (name, on_train_levels[name])
  with open(os.path.join(workdir, "policy", "evaluation.json")) as f:
    assert json.load(f) == evaluation  # The held-out evaluation is kept.
  with open(os.path.join(out, "reference_returns.json")) as f:
    assert len(json.load(f)["entries"]) == 2  # And its references beside the new ones.


def test_evaluation_on_the_demonstrations_train_levels_or_cut_short():
  """policy.eval_levels=demonstrated plays the train split's levels (Procgen's train-level
  return), eval_max_steps cuts the episodes; the goal task refuses both in one line."""
  from ml_collections import ConfigDict  # pylint: disable=g-import-not-at-top
  from flam_jax.data import goal_task  # pylint: disable=g-import-not-at-top
  from flam_jax.stages import policy as policy_stage  # pylint: disable=g-import-not-at-top
  config = dict(game="bigfish", num_actions=15, max_steps=1000, seed=0, plan_horizon=10,
                plan_hold=2)
  meta = dict(generator=procgen.__name__, config=config, procgen=dict(start_level=500),
              splits=dict(train=dict(first_episode=0, num_episodes=240)))
  held_out = policy_stage.task_of(meta, "/unused", ConfigDict(dict(eval_levels="held_out",
                                                                   eval_max_steps=0)))
  assert held_out.train_levels is None and held_out.max_steps == 1000
  assert held_out.levels(2, 1) == [procgen.EVAL_FIRST_LEVEL + 1000, procgen.EVAL_FIRST_LEVEL + 1001]
  train = policy_stage.task_of(meta, "/unused", ConfigDict(dict(eval_levels="demonstrated",
                                                                eval_max_steps=64)))
  assert train.train_levels == (500, 240) and train.max_steps == 64
  assert train.levels(3, 7) == [500, 501, 502]
  with pytest.raises(ConfigError, match="241 evaluation episodes on the demonstrations' 240 "
                     "train levels; set --config.policy.eval_episodes to at most that"):
    train.levels(241, 0)
  goal = dict(generator=goal_task.__name__, config=goal_task.GoalTaskConfig().metadata_config())
  assert isinstance(policy_stage.task_of(goal, "/unused", ConfigDict(dict(
      eval_levels="held_out", eval_max_steps=0))), goal_task.GoalTaskConfig)
  with pytest.raises(ConfigError, match="these keys are Procgen's"):
    policy_stage.task_of(goal, "/unused", ConfigDict(dict(eval_levels="demonstrated",
                                                          eval_max_steps=0)))


def test_reference_returns_are_read_from_the_cache_whatever_its_layout(tmp_path):
  """Cached planner and random returns (minutes of planning) are found by their key, in the
  one-entry layout of older caches and in the list of entries; nothing is replanned."""
  task = procgen.ProcgenTask(cache_dir=str(tmp_path), venv=str(tmp_path / "no_env"))
  key = dict(task.metadata_config(), num_episodes=3, seed=1000)
  runs = dict(expert=dict(mean_return=12.0), random=dict(mean_return=0.5))
  path = tmp_path / "reference_returns.json"
  path.write_text(json.dumps(dict(key=key, runs=runs)))
  assert task.references(3, 1000) == runs
  other = dict(key=dict(key, max_steps=64), runs=dict(expert={}, random={}))
  path.write_text(json.dumps(dict(entries=[other, dict(key=key, runs=runs)])))
  assert task.references(3, 1000) == runs

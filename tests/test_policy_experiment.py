"""experiments/policy.py: settings build (fast) and the tiny setting end to end (slow)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from experiments import runner, settings
from experiments import policy as policy_experiment
from flam_jax.errors import CheckpointError
from flam_jax.lib import checkpointing, config_utils
from tests import test_procgen

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_setting_builds_its_task_and_policy_configs(tmp_path):
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  for name, ps in policy_experiment.POLICY_SETTINGS.items():
    experiment = policy_experiment.PolicyExperiment(
        ps, "policy", settings.get_setting(name), str(tmp_path), compilation_cache="none")
    for d in ps.distractors:
      task = experiment.task(d + 1)  # Validates grid, resolution and free cells.
      config = experiment.config(runner.Run("flam", "flam", d + 1, 0))
      assert config.data.image_size == task.resolution == ps.image_size
      assert config.lam.num_slots == d + 3  # Agent 0, d distractors, the floor, the goal cell.
      lam = experiment.config(runner.Run("lam", "lam", d + 1, 0))
      assert lam.lam.num_slots == config.lam.num_slots - 1  # Unused by LAM; left as in Table 1.
      assert config.data.window_length <= task.episode_length
    assert max(ps.labels) < 0.8 * ps.episodes * 4  # Fewer labels than (~4+) train transitions.


@pytest.mark.slow
def test_tiny_end_to_end_and_rerun_skips(tmp_path):
  root = str(tmp_path / "policy")
  cmd = [sys.executable, os.path.join("experiments", "policy.py"), "--setting=tiny", "--seeds=0",
         "--distractors=2", "--labels=5", f"--root={root}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  # --only: that policy alone, printed and not reported; the full run below reuses it.
  part = subprocess.run(cmd + ["--only=labelled"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=1800)
  assert part.returncode == 0, part.stdout[-3000:] + part.stderr[-3000:]
  assert "2 distractors, labelled, 5 labels, seed 0: success" in part.stdout, part.stdout[-2000:]
  assert "policy lam" not in part.stdout
  assert not os.path.exists(os.path.join(root, "tiny", "results.json"))
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
  assert "policy labelled" not in out.stdout, out.stdout[-2000:]
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  with open(os.path.join(root, "tiny", "results.json")) as f:
    results = json.load(f)
  for mode, *_ in policy_experiment.MODES:
    stat = results["results"][f"2d/{mode}/5"]["success_rate"]
    assert stat["n"] == 1 and 0.0 <= stat["mean"] <= 1.0, mode
  assert os.path.exists(os.path.join(root, "tiny", "policy_2d.png"))
  again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0 and "policy labelled" not in again.stdout, again.stdout[-2000:]
  # On "another machine" (no run folders) the evaluations stored beside the report are
  # reused: nothing trains, and the report is the same.
  elsewhere = str(tmp_path / "other_machine_runs")
  moved = subprocess.run(cmd + [f"--runs_root={elsewhere}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
  assert moved.returncode == 0, moved.stdout[-3000:] + moved.stderr[-3000:]
  assert "evaluation stored in" in moved.stdout and not os.path.exists(elsewhere + "/tiny/goal_data_3a")
  with open(os.path.join(root, "tiny", "results.json")) as f:
    assert json.load(f)["results"] == results["results"]


def test_stored_evaluations_match_configs_without_their_paths_or_remat(tmp_path):
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  ps = policy_experiment.POLICY_SETTINGS["tiny"]
  identities = []
  for root in (str(tmp_path / "machine_a"), str(tmp_path / "machine_b" / "elsewhere")):
    experiment = policy_experiment.PolicyExperiment(ps, "policy", settings.get_setting("tiny"),
                                                    root, compilation_cache="none")
    config = experiment.config(runner.Run("flam_v2", "flam_v2", 3, 0))
    config.policy.lam_workdir = os.path.join(root, "flam_v2")
    identities.append(policy_experiment._config_identity(config))
  assert identities[0] == identities[1]
  assert "dir" not in identities[0]["data"] and "lam_workdir" not in identities[0]["policy"]
  config.lam.remat_chunks = 8  # How a step runs (a checkpoint resumes across it), not what.
  assert policy_experiment._config_identity(config) == identities[1]
  stored = json.loads(json.dumps(identities[1]))  # Written before remat joined _MACHINE_KEYS.
  stored["lam"]["remat_chunks"] = 8
  assert policy_experiment._without_machine_keys(stored) == identities[1]
  # lam.slot_init at its default leaves the identity as stored before the key existed.
  assert config.lam.slot_init == "learned" and "slot_init" not in identities[1]["lam"]
  config.lam.slot_init = "sampled"  # Not the default: a different run.
  assert policy_experiment._config_identity(config) != identities[1]
  config.lam.slot_init = "learned"
  # Likewise f's early stopping: off (how evaluations stored before it were made) matches
  # them, the default (on) does not.
  assert config.policy.decoder_validation_fraction > 0
  assert "decoder_validation_fraction" in identities[1]["policy"]
  config.policy.decoder_validation_fraction = 0.0
  assert "decoder_validation_fraction" not in policy_experiment._config_identity(config)["policy"]
  config.policy.decoder_validation_fraction = 0.2
  config.policy.num_labels += 1
  assert policy_experiment._config_identity(config) != identities[1]
  config.policy.num_labels -= 1
  # The behaviour-cloning baselines fit no f and use no world model: f's settings and the
  # world model's leave their identity alone (true-action evaluations stored before early
  # stopping existed still match), while what they do train still counts.
  for mode in ("true_actions", "labelled"):
    config.policy.mode = mode
    baseline = policy_experiment._config_identity(config)
    config.policy.decoder_validation_fraction, config.policy.decoder_steps = 0.0, 7
    config.lam.slot_reconstruction_changed_weight += 1.0
    assert policy_experiment._config_identity(config) == baseline
    config.lam.slot_reconstruction_changed_weight -= 1.0
    config.policy.hidden += 1
    assert policy_experiment._config_identity(config) != baseline
    config.policy.hidden -= 1
    config.policy.decoder_validation_fraction, config.policy.decoder_steps = 0.2, 20
  config.policy.mode = "pseudo_labels"
  config.policy.decoder_steps = 7
  assert policy_experiment._config_identity(config) != identities[1]
  pseudo_labels = policy_experiment._config_identity(config)
  config.lam.slot_reconstruction_changed_weight += 1.0  # Pseudo-labels: the world model counts.
  assert policy_experiment._config_identity(config) != pseudo_labels


def _finished_checkpoint(stage_dir, config, step):
  """A finished checkpoint as a run leaves it: its saved config is what is checked."""
  ckpt = checkpointing.Checkpointer(os.path.join(stage_dir, "checkpoints"), async_save=False)
  ckpt.save(step, {"w": np.zeros(2, np.float32)}, None, config)
  ckpt.wait()
  ckpt.close()


def test_finished_runs_of_another_config_are_refused_not_reported(tmp_path):
  """A rerun after a default changed must not skip (and report) the old runs as current:
  the world model's check names the key, and so does the policy's, whose own stage keys
  leave the world model's (lam.*) out."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  ps = policy_experiment.POLICY_SETTINGS["tiny"]
  experiment = policy_experiment.PolicyExperiment(ps, "policy", settings.get_setting("tiny"),
                                                  str(tmp_path), compilation_cache="none")
  world_model = experiment.config(runner.Run("flam", "flam", 3, 0))
  workdir = str(tmp_path / "flam" / "seed0")
  _finished_checkpoint(os.path.join(workdir, "lam"), world_model, world_model.num_train_steps)
  runner.check_finished_run(world_model, workdir, "lam")  # The same config: skipped.
  world_model.lam.remat_chunks = 4  # How a step runs, not what it trains: still skipped.
  runner.check_finished_run(world_model, workdir, "lam")
  world_model.lam.slot_reconstruction_changed_weight += 1.0
  with pytest.raises(CheckpointError, match=r"slot_reconstruction_changed_weight=10.0 but the "
                     r"config now has 11.0; delete .*seed0 to train it again"):
    runner.check_finished_run(world_model, workdir, "lam")

  config, _ = experiment.policy_config(3, "flam", 10, 0)
  policy_dir = str(tmp_path / "policy" / "seed0")
  trained = config_utils.stage_config(config, "policy")  # What train.run saves.
  trained.policy.lam_workdir = workdir  # A path: another machine's may differ.
  _finished_checkpoint(os.path.join(policy_dir, "policy"), trained, config.num_train_steps)
  policy_experiment._check_trained_as(config, policy_dir)
  config.lam.slot_reconstruction_changed_weight += 1.0  # Its world model was retrained.
  with pytest.raises(CheckpointError, match=r"policy/checkpoints was written with config.lam."
                     r"slot_reconstruction_changed_weight=10.0 but the config now has 11.0; "
                     r"delete .*seed0 \(and its world model"):
    policy_experiment._check_trained_as(config, policy_dir)


def test_only_names_an_unknown_policy_in_one_line(tmp_path):
  cmd = [sys.executable, os.path.join("experiments", "policy.py"), "--setting=tiny",
         "--only=labelled,flm", f"--root={tmp_path}"]
  out = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip() == ("error: --only=labelled,flm: flm is not a policy of this script; "
                                "choose from true_actions, labelled, flam_v2, lam, flam, "
                                "flam_v2_matched_slot")
  assert not os.listdir(tmp_path)


def test_procgen_settings_build_their_world_model_and_policy_configs(tmp_path):
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  for name, ps in policy_experiment.PROCGEN_POLICY_SETTINGS.items():
    experiment = policy_experiment.ProcgenPolicyExperiment(
        "bigfish", ps, "policy", settings.get_setting(name), str(tmp_path),
        compilation_cache="none")
    assert experiment.out_dir.startswith(os.path.join(str(tmp_path), "bigfish"))
    flam = experiment.config(runner.Run("flam", "flam", 1, 0))
    assert flam.data.image_size == policy_experiment.PROCGEN_IMAGE_SIZE
    assert flam.lam.num_slots == ps.num_slots and flam.lam.action_levels == (2, 2, 2, 2)
    assert not flam.data.generate.enabled and flam.data.window_length <= ps.episode_length
    config, lam_run = experiment.policy_config(1, "flam", min(ps.labels), 0)
    assert config.policy.lam_workdir == experiment.workdir(lam_run)
    assert "demos_bigfish" in experiment.workdir(lam_run)
    assert experiment.data_dir(1) != experiment.tokenizer_dir(1)
    assert max(ps.labels) < 0.8 * ps.episodes * (ps.episode_length - 1)  # Train transitions.
  assert "flam_v2_matched_slot" not in [m[0] for m in policy_experiment.MODES_WITHOUT_MASKS]


@pytest.mark.parametrize("args, message", [
    (["--distractors=2"], "--distractors is the goal task's; Procgen has one actor (drop it)"),
    (["--only=flam_v2_matched_slot"],
     "--only=flam_v2_matched_slot: flam_v2_matched_slot needs entity masks, which Procgen has not"),
    (["--setting=small"], "policy.py has no --setting=small with --procgen; use one of cpu, tiny"),
])
def test_procgen_flags_that_do_not_apply_fail_in_one_line(tmp_path, args, message):
  cmd = [sys.executable, os.path.join("experiments", "policy.py"), "--setting=tiny",
         "--procgen=bigfish", f"--root={tmp_path}"] + args
  out = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip() == f"error: {message}"


@pytest.mark.slow
@test_procgen.needs_env
def test_procgen_tiny_end_to_end(tmp_path):
  """The planner's demonstrations -> tokenizer -> LAM and both FLAMs -> every policy ->
  a report of mean returns beside the planner's, the random policy's and the paper's."""
  root = str(tmp_path / "policy")
  cmd = [sys.executable, os.path.join("experiments", "policy.py"), "--setting=tiny",
         "--procgen=bigfish", "--seeds=0", f"--root={root}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  with open(os.path.join(root, "bigfish", "tiny", "results.json")) as f:
    results = json.load(f)
  assert results["table"] == "policy_procgen" and results["later_version_returns"][
      "1000"] == 1.8
  for mode, *_ in policy_experiment.MODES_WITHOUT_MASKS:
    stat = results["results"][f"0d/{mode}/5"]["mean_return"]
    assert stat["n"] == 1 and stat["mean"] >= 0.0, mode
    assert results["results"][f"0d/{mode}/5"]["success_rate"]["n"] == 0  # No success in Procgen.
    # Also cut at the demonstrations' 5 steps (the tiny setting's whole limit is 8).
    assert results["results"][f"0d/{mode}/5"]["mean_return_in_horizon"]["n"] == 1, mode
  assert set(results["references"]["0d"]["horizon"]) == {"expert", "random"}
  assert set(results["references"]["0d"]) == {"expert", "random", "horizon"}
  with open(os.path.join(root, "bigfish", "tiny", "results.md")) as f:
    text = f.read()
  assert "planner (the demonstrator), same levels" in text and "FLAM pseudo-labels" in text
  assert "## Mean return over the first 5 steps of each level" in text
  assert os.path.exists(os.path.join(root, "bigfish", "tiny", "policy_return.png"))
  again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0 and "training" not in again.stdout, again.stdout[-2000:]

"""experiments/policy.py: settings build (fast) and the tiny setting end to end (slow)."""

import json
import os
import subprocess
import sys

import pytest
from absl import flags

from experiments import runner, settings
from experiments import policy as policy_experiment

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
         "--distractors=2", "--labels=5", f"--root={root}", "--compilation_cache=none"]
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


def test_only_names_an_unknown_policy_in_one_line(tmp_path):
  cmd = [sys.executable, os.path.join("experiments", "policy.py"), "--setting=tiny",
         "--only=labelled,flm", f"--root={tmp_path}", "--compilation_cache=none"]
  out = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip() == ("error: --only=labelled,flm: flm is not a policy of this script; "
                                "choose from true_actions, labelled, flam_v2, lam, flam")
  assert not os.listdir(tmp_path)

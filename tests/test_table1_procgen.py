"""experiments/table1_procgen.py: configs (fast) and the tiny setting end to end (slow).

The end-to-end test puts a stand-in dataset (one-agent Multigrid frames with their
actions) where the script keeps the game's video, so it needs no Procgen environment;
flam_jax/data/procgen.py's own tests cover the generator.
"""

import json
import os
import subprocess
import sys

import pytest
from absl import flags

from experiments import runner, settings
from experiments import table1_procgen

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _experiment(tmp_path, name="tiny"):
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return table1_procgen.ProcgenExperiment(
      "bigfish", table1_procgen.PROCGEN_SETTINGS[name], "table1_procgen",
      settings.get_setting(name), str(tmp_path), compilation_cache="none")


def test_every_setting_builds_procgen_configs(tmp_path):
  for name, video in table1_procgen.PROCGEN_SETTINGS.items():
    experiment = _experiment(tmp_path, name)
    for variant in table1_procgen.VARIANTS:
      config = experiment.config(runner.Run(variant, variant, 1, 0))
      assert config.data.image_size == video.image_size
      assert config.data.dir == experiment.data_dir(1) and not config.data.generate.enabled
      assert config.lam.num_slots == video.num_slots
      assert tuple(config.lam.action_levels) == tuple(config.lam.scene_action_levels) == (
          table1_procgen.ACTION_LEVELS)
    assert "bigfish" in experiment.workdir(runner.Run("flam", "flam", 1, 0))


@pytest.mark.slow
def test_tiny_end_to_end_on_a_stand_in_dataset_and_rerun_skips(tmp_path):
  from flam_jax import train  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / "table1_procgen")
  data_dir = os.path.join(root, "bigfish", "tiny", "data_bigfish")
  config = settings.tokenizer_config(settings.get_setting("tiny"), 1, data_dir)
  train.write_dataset(config, data_dir, progress=False)
  cmd = [sys.executable, os.path.join("experiments", "table1_procgen.py"), "--setting=tiny",
         "--seeds=0", f"--root={root}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  with open(os.path.join(root, "bigfish", "tiny", "results.json")) as f:
    results = json.load(f)
  for variant in table1_procgen.COLUMNS:
    assert results["stats"][variant]["psnr_t@1"]["n"] == 1, variant
  assert os.path.exists(os.path.join(root, "bigfish", "tiny", "table1_procgen.png"))
  again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert again.returncode == 0 and "training" not in again.stdout, again.stdout[-2000:]


def test_unknown_setting_is_one_line(tmp_path):
  cmd = [sys.executable, os.path.join("experiments", "table1_procgen.py"), "--setting=small",
         f"--root={tmp_path}"]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
  assert "no --setting=small" in out.stderr

"""The experiment scripts: helpers (fast) and each script end to end at --setting=tiny (slow).

The end-to-end tests run each script as a subprocess (16 px frames, a 4x4 grid, 12
episodes, 2-3 steps a stage, one seed, one eval batch). XLA:CPU compilation dominates
(tens of seconds per world model variant), so they share JAX's persistent compilation
cache in pytest's cache folder (.pytest_cache, kept between sessions): programs compiled
by one script (the tokenizer, FLAM) are reused by the next, and by later sessions.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from flam_jax.errors import ConfigError
from experiments import plots, report, settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- Helpers (fast). ----
def test_configs_of_every_setting_and_variant_build():
  for name in settings.SETTINGS:
    setting = settings.get_setting(name)
    tok = settings.tokenizer_config(setting, 2, "/d", steps_scale=0.5)
    assert tok.stage == "tokenizer" and tok.data.window_length == 1
    for variant in ("wm", "lam", "oc_lam", "flam", "flam_regression"):
      config = settings.lam_config(setting, variant, 8, seed=3, data_dir="/d", tokenizer_dir="/t",
                                 overrides={"lam.recursive_init": False})
      assert config.seed == 3 and config.lam.num_slots == 9  # Agents + background.
      assert config.lam.tokenizer_checkpoint == "/t/tokenizer"
      assert not config.lam.recursive_init
      assert config.data.window_length > config.lam.prediction_steps
  paper = settings.lam_config(settings.get_setting("paper"), "flam", 4, 0, "/d", "/t")
  assert (paper.data.image_size, paper.lam.d_model, paper.data.window_length,
          paper.lam.prediction_steps) == (128, 256, 10, 5)
  assert paper.data.generate.grid_size == 32
  small = settings.lam_config(settings.get_setting("small"), "flam", 4, 0, "/d", "/t",
                            steps_scale=0.5)
  assert small.num_train_steps == 300


def test_scene_codebook_is_table4s_or_joint_and_capped():
  assert settings.scene_action_levels(4) == (2, 2)  # Table 4: 4 codes, like FLAM's per slot.
  assert settings.scene_action_levels(1, joint=True) == (4,)
  assert settings.scene_action_levels(4, joint=True) == (4, 4, 4, 4)
  assert settings.scene_action_levels(16, joint=True) == (4, 4, 4, 4)


def test_unknown_override_is_a_config_error():
  with pytest.raises(ConfigError, match="unknown config key"):
    settings.lam_config(settings.get_setting("tiny"), "flam", 2, 0, "/d", "/t",
                      overrides={"lam.slot_matchin": "hungarian"})


def test_aggregation_and_claims():
  per_seed = [dict(psnr_t=[20.0, 18.0], ari_fg=None), dict(psnr_t=[22.0, 17.0], ari_fg=None)]
  stats = report.aggregate(per_seed, ["psnr_t@1", "psnr_t@P", "ari_fg"])
  assert stats["psnr_t@1"]["mean"] == 21.0
  np.testing.assert_allclose(stats["psnr_t@1"]["std"], np.sqrt(2.0))
  assert stats["psnr_t@P"]["mean"] == 17.5 and stats["ari_fg"]["n"] == 0
  assert report.fmt(stats["psnr_t@1"]) == "21.00 ± 1.41" and report.fmt(stats["ari_fg"]) == "n/a"
  one = dict(mean=1.0, std=0.0, n=1)
  assert report.compare("c", dict(mean=2.0, std=0.0, n=1), one)[2].startswith("holds (one seed")
  assert report.compare("c", one, dict(mean=2.0, std=0.0, n=1))[2] == "does not hold"
  assert report.compare("c", dict(mean=3.0, std=0.5, n=3),
                        dict(mean=1.0, std=0.5, n=3))[2] == "holds"
  assert report.compare("c", dict(mean=1.1, std=1.0, n=3),
                        dict(mean=1.0, std=1.0, n=3))[2] == "holds, within noise"
  assert report.compare("c", None, one)[2] == "not measured"


def test_plots_are_pngs(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  bar = plots.bar_plot(str(tmp_path / "bar.png"), "t", "dB", ["a", "b"],
                        [("x", [1.0, -2.0], [0.5, None]), ("y", [3.0, None], [0.0, 0.0])])
  line = plots.line_plot(str(tmp_path / "line.png"), "t", "n", "dB", [1, 2, 4],
                          [("x", [1.0, 2.0, 3.0], [0.1, 0.1, 0.1]), ("y", [None, 1.0, 0.5],
                                                                     [None] * 3)])
  for path in (bar, line):
    assert Image.open(path).size == (720, 420)
  assert plots.bar_plot(str(tmp_path / "none.png"), "t", "dB", ["a"], [("x", [None], [None])]) is None


# ---- End to end (slow). ----
# Faster XLA:CPU compiles (as scripts/test.sh); added once, so cache keys stay the same.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0",
                      "--xla_llvm_disable_expensive_passes=true")


# 30 minutes: a tiny experiment takes ~3-5 on 2 idle cores, but CI machines may be shared
# (two of them ran past 15 minutes on 2 cores shared with two trainings, 2026-12-01).
def _run(script, root, *extra, timeout=1800):
  """The script at the tiny setting; it shares the session's compilation cache (conftest)."""
  xla_flags = os.environ.get("XLA_FLAGS", "").split()
  xla_flags += [f for f in FAST_COMPILE_FLAGS if f not in xla_flags]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS=" ".join(xla_flags))
  cmd = [sys.executable, os.path.join("experiments", script), "--setting=tiny", "--seeds=0",
         f"--root={root}", *extra]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _results(root):
  with open(os.path.join(root, "results.json")) as f:
    results = json.load(f)
  with open(os.path.join(root, "results.md")) as f:
    markdown = f.read()
  assert os.path.exists(os.path.join(root, "tiny", "results.md"))
  assert results["setting"] == "tiny" and results["hardware"]
  assert "## Claims" in markdown
  return results, markdown


def _finite(stat):
  return stat["n"] == 1 and np.isfinite(stat["mean"])


@pytest.mark.slow
def test_table1_end_to_end_and_rerun_skips(tmp_path):
  root = str(tmp_path / "table1")
  # Parallel-friendly parts first (benchmarks/device_experiment.sh): the tokenizer alone,
  # then two runs trained only, then one evaluated without a report.
  for extra, trained in ((("--only=tokenizer",), "tokenizer"),
                         (("--only=flam,wm", "--train_only"), "flam_2a seed 0"),
                         (("--only=lam",), "lam_2a seed 0")):
    out = _run("table1.py", root, *extra)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"{trained}: training" in out.stdout or f"{trained} (2 agents): training" in out.stdout
    assert not os.path.exists(os.path.join(root, "results.json")), extra
  assert "evaluating" not in out.stdout.replace("lam_2a: evaluating", "")
  out = _run("table1.py", root)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert out.stdout.count(": training ") == 2 and out.stdout.count("evaluation cached") == 1
  results, markdown = _results(root)
  for variant in ("wm", "lam", "oc_lam", "flam", "lam_joint"):
    assert _finite(results["stats"][variant]["psnr_t@1"]), variant
    assert _finite(results["stats"][variant]["delta_psnr_t@1"]), variant
  assert results["stats"]["flam"]["ari_fg"]["n"] == 1 and results["stats"]["lam"]["ari_fg"]["n"] == 0
  assert "| PSNR (paper) | 48.90 | 31.04 | 26.79 | 35.49 | – |" in markdown
  assert os.path.exists(os.path.join(root, "tiny", "table1_psnr.png"))
  assert os.path.exists(os.path.join(root, "tiny", "table1_delta_psnr.png"))
  assert set(results["run_info"]) == {
      f"{v}_2a/seed0" for v in ("wm", "lam", "oc_lam", "flam", "lam_joint")}

  again = _run("table1.py", root)  # Idempotent: nothing is trained or evaluated.
  assert again.returncode == 0, again.stderr[-3000:]
  assert ": training " not in again.stdout and again.stdout.count("skipping") == 6
  assert again.stdout.count("evaluation cached") == 5


@pytest.mark.slow
def test_table2_end_to_end(tmp_path):
  root = str(tmp_path / "table2")
  out = _run("table2.py", root)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  results, markdown = _results(root)
  assert results["entities"] == [1, 2]
  for n in ("1", "2"):
    for variant in ("wm", "lam", "flam"):
      assert _finite(results["stats"][n][variant]["psnr_t@1"]), (n, variant)
    assert results["gaps"][n]["n"] == 1
  assert "57.46" in markdown and "grows with entities" in markdown
  assert os.path.exists(os.path.join(root, "tiny", "table2.png"))


@pytest.mark.slow
def test_aggregation_end_to_end(tmp_path):
  root = str(tmp_path / "aggregation")
  out = _run("aggregation.py", root)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  results, markdown = _results(root)
  for label in ("flam", "flam_regression"):
    assert _finite(results["stats"][label]["psnr_t@1"]), label
  assert results["per_seed"]["flam_regression_2a"][0]["token_accuracy_t"] is None
  assert "regression (features)" in markdown


@pytest.mark.slow
def test_slot_init_end_to_end(tmp_path):
  root = str(tmp_path / "slot_init")
  out = _run("slot_init.py", root)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  results, markdown = _results(root)
  assert len(results["stats"]) == 6
  for label, stats in results["stats"].items():
    assert _finite(stats["psnr_t@1"]) and _finite(stats["disentanglement"]), label
  assert "learned + Hungarian loss" in markdown and "recursive, sampled init" in markdown


@pytest.mark.slow
@pytest.mark.parametrize("script, flag, message", [
    ("table1.py", "--seeds=zero", "--seeds"),
    ("table1.py", "--only=nope", "--only"),
    ("table2.py", "--entities=32", "--entities"),
    ("slot_init.py", "--steps_scale=0", "--steps_scale"),
])
def test_bad_flags_give_one_line_errors(tmp_path, script, flag, message):
  out = _run(script, str(tmp_path / "r"), flag, timeout=120)
  assert out.returncode == 2, out.stderr[-3000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last, out.stderr[-3000:]

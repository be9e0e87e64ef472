"""The command lines: pyproject's entry points exist, and share one-line errors (exit 2)."""

import importlib
import os
import subprocess
import sys
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_console_scripts_resolve():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    scripts = tomllib.load(f)["project"]["scripts"]
  assert set(scripts) == {"flam-train", "flam-eval", "flam-generate"}
  for target in scripts.values():
    module, _, attr = target.partition(":")
    assert callable(getattr(importlib.import_module(module), attr)), target


def test_packaged_config_path_resolves_from_elsewhere(tmp_path, monkeypatch):
  from flam_jax import train  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  resolved = train.resolve_config_path("configs/quickstart.py:flam")
  assert resolved.endswith(os.path.join("configs", "quickstart.py") + ":flam")
  assert os.path.isfile(resolved.partition(":")[0])
  assert train.resolve_config_path("other/file.py") == "other/file.py"


@pytest.mark.parametrize("module, args, message", [
    ("flam_jax.evaluate", [], "--workdir is required"),
    ("flam_jax.generate", [], "--workdir is required"),
    ("flam_jax.evaluate", ["--workdir=/nonexistent", "--no_such_flag=1"], "no_such_flag"),
    ("flam_jax.evaluate", ["--workdir=/nonexistent"], "no latent action model checkpoint"),
])
def test_errors_are_one_line_with_status_2(module, args, message):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last, out.stderr[-2000:]

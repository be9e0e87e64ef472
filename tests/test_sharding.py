"""Data-parallel training over 8 simulated CPU devices equals training on one device."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("stage", ["tokenizer", "lam"])
def test_sharded_step_matches_single_device(stage):
  flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  env = dict(os.environ, XLA_FLAGS=flags,
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-m", "tests.sharding_check", stage], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout + out.stderr[-3000:]
  assert "equal" in out.stdout


def test_mesh_axes_and_batch_size_errors():
  from flam_jax.errors import ConfigError
  from flam_jax.lib import sharding
  mesh = sharding.make_mesh(1)
  assert mesh.axis_names == ("data", "model")
  with pytest.raises(ConfigError, match="model_axis_size"):
    sharding.make_mesh(0)

  class TwoWayDataMesh:
    shape = {"data": 2}

  with pytest.raises(ConfigError, match="batch_size=3"):
    sharding.check_batch_size(3, TwoWayDataMesh())

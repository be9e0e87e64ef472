"""Multi-process training on one machine (2 processes x 4 CPU devices, jax.distributed over
localhost) equals one process with 8 devices on the same global batches, across a
checkpoint save and restore (tests/multiprocess_check.py does the work)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from flam_jax.data import multigrid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _result(stdout: str) -> dict:
  lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
  assert lines, stdout[-3000:]
  return json.loads(lines[-1][len("RESULT "):])


def test_two_processes_match_one(tmp_path):
  data = str(tmp_path / "data")
  multigrid.write_dataset(
      data, multigrid.MultigridConfig(grid_size=8, resolution=16, num_agents=2, episode_length=8),
      num_episodes=8, seed=0, progress=False)
  flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                   if "xla_force_host_platform_device_count" not in f)
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  port = _free_port()
  workers = [subprocess.Popen(
      [sys.executable, "-m", "tests.multiprocess_check", "worker", data, str(tmp_path / "run"),
       str(port), str(i)], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  try:
    outputs = [w.communicate(timeout=900)[0] for w in workers]
  finally:
    for w in workers:  # A worker left waiting for its peer must not outlive the test.
      w.kill()
  for w, out in zip(workers, outputs):
    assert w.returncode == 0, out[-3000:]
  ref = subprocess.run([sys.executable, "-m", "tests.multiprocess_check", "reference", data],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-3000:]
  expected = _result(ref.stdout)
  for out in outputs:
    got = _result(out)
    assert sorted(got["losses"]) == ["2", "4"], got  # Step 4 ran after a restore at step 2.
    np.testing.assert_allclose([got["losses"][k] for k in ("2", "4")],
                               [expected["losses"][k] for k in ("2", "4")], rtol=1e-5)
    np.testing.assert_allclose(got["param_sums"], expected["param_sums"], rtol=1e-4, atol=1e-4)
  assert "Resumed from" in outputs[0]

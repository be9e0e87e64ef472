"""train.py end to end: resume exactness after kill -9, SIGTERM saves, one-line errors."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from flam_jax.data import multigrid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_OVERRIDES = [
    "--config.data.image_size=32", "--config.batch_size=4", "--config.data.window_length=2",
    "--config.tokenizer.encoder_channels=(8,8)", "--config.tokenizer.z_channels=8",
    "--config.tokenizer.codebook_dim=8", "--config.tokenizer.levels=(4,4,2)",
    "--config.optim.warmup_steps=2", "--config.data.num_workers=0", "--config.log_every_steps=5", "--config.image_every_steps=1000",
    "--config.progress_bar=False",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("data"))
  multigrid.write_dataset(
      out, multigrid.MultigridConfig(grid_size=8, resolution=32, num_agents=2, episode_length=8),
      num_episodes=12, seed=0, progress=False)
  return out


def _cmd(workdir, data_dir, *extra):
  return [sys.executable, "train.py", "--config=configs/multigrid.py:tokenizer", f"--workdir={workdir}",
          f"--config.data.dir={data_dir}", *TINY_OVERRIDES, *extra]


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def _run(cmd, timeout=300):
  return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def _final_params(workdir, step):
  path = os.path.join(workdir, "tokenizer", "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(path)["params"]


def _wait_for_checkpoint(workdir, proc, timeout=240):
  ckpt_dir = os.path.join(workdir, "tokenizer", "checkpoints")
  deadline = time.time() + timeout
  while time.time() < deadline:
    if os.path.isdir(ckpt_dir) and any(d.isdigit() for d in os.listdir(ckpt_dir)):
      return
    if proc.poll() is not None:
      raise AssertionError(f"run ended before its first checkpoint: {proc.stdout.read()}")
    time.sleep(0.02)
  raise AssertionError("no checkpoint appeared")


def test_kill_9_then_resume_equals_uninterrupted_run(tmp_path, data_dir):
  steps = ["--config.num_train_steps=60", "--config.checkpoint_every_steps=5"]
  full = str(tmp_path / "full")
  out = _run(_cmd(full, data_dir, *steps))
  assert out.returncode == 0, out.stderr[-3000:]
  assert "finished at step 60" in out.stdout

  interrupted = str(tmp_path / "interrupted")
  proc = subprocess.Popen(_cmd(interrupted, data_dir, *steps), cwd=ROOT, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  _wait_for_checkpoint(interrupted, proc)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"

  resumed = _run(_cmd(interrupted, data_dir, *steps))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resumed from" in resumed.stdout
  jax.tree.map(np.testing.assert_array_equal, _final_params(interrupted, 60), _final_params(full, 60))


def test_sigterm_saves_a_checkpoint_and_resume_finishes(tmp_path, data_dir):
  workdir = str(tmp_path / "w")
  steps = ["--config.num_train_steps=400", "--config.checkpoint_every_steps=5"]
  proc = subprocess.Popen(_cmd(workdir, data_dir, *steps), cwd=ROOT, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  _wait_for_checkpoint(workdir, proc)
  proc.send_signal(signal.SIGTERM)
  output, _ = proc.communicate(timeout=120)
  assert proc.returncode == 143, output[-3000:]
  assert "Preempted at step" in output
  preempted_step = int(output.split("Preempted at step ")[1].split(":")[0])
  assert os.path.isdir(os.path.join(workdir, "tokenizer", "checkpoints", str(preempted_step)))


@pytest.mark.parametrize("overrides, message", [
    (["--config.data.dir=/nonexistent/flam-data"], "python -m flam_jax.data.multigrid"),
    (["--config.data.image_size=36"], "image_size=36"),
    (["--config.data.image_size=18"], "stride"),
    (["--config.tokenizer.z_chanels=4"], "unknown config key"),
])
def test_bad_input_gives_one_line_error(tmp_path, data_dir, overrides, message):
  out = _run(_cmd(str(tmp_path / "w"), data_dir, "--config.num_train_steps=1", *overrides))
  assert out.returncode == 2, out.stderr[-3000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last, out.stderr[-3000:]


def test_incompatible_checkpoint_and_corrupt_shard(tmp_path, data_dir):
  workdir = str(tmp_path / "w")
  out = _run(_cmd(workdir, data_dir, "--config.num_train_steps=2", "--config.checkpoint_every_steps=2"))
  assert out.returncode == 0, out.stderr[-3000:]
  out = _run(_cmd(workdir, data_dir, "--config.num_train_steps=4", "--config.tokenizer.z_channels=16"))
  assert out.returncode == 2
  last = out.stderr.strip().splitlines()[-1]
  assert "tokenizer.z_channels" in last and "--workdir" in last, last

  corrupt = str(tmp_path / "corrupt")
  multigrid.write_dataset(
      corrupt, multigrid.MultigridConfig(grid_size=8, resolution=32, num_agents=2, episode_length=8),
      num_episodes=12, seed=0, progress=False)
  shard = sorted(f for f in os.listdir(corrupt) if f.startswith("train"))[0]
  path = os.path.join(corrupt, shard)
  os.truncate(path, os.path.getsize(path) // 2)  # A half-copied file.
  out = _run(_cmd(str(tmp_path / "w2"), corrupt, "--config.num_train_steps=2"))
  assert out.returncode == 2, out.stderr[-3000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and shard in last, last


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["lam", "policy"])
def test_stage_kill_9_then_resume_is_bitwise_equal(tmp_path, stage):
  """One kill point of scripts/soak_resume.py on the lam or the policy stage (the tokenizer,
  and for policy a FLAM on goal-task demonstrations, are trained first)."""
  out = subprocess.run(
      [sys.executable, "scripts/soak_resume.py", f"--stage={stage}", "--points=1",
       "--steps=12", "--every=4", f"--seed={int(time.time()) % 1000}", f"--out={tmp_path}"],
      cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=3000)
  assert out.returncode == 0 and "1/1 bitwise equal" in out.stdout, out.stdout + out.stderr[-3000:]


def test_diverging_run_stops_before_saving_and_keeps_the_good_checkpoint(tmp_path, data_dir):
  workdir = str(tmp_path / "w")
  out = _run(_cmd(workdir, data_dir, "--config.num_train_steps=4", "--config.checkpoint_every_steps=4"), timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  good = _final_params(workdir, 4)
  # Resumes at step 4 with a learning rate that overflows the parameters within a few steps.
  out = _run(_cmd(workdir, data_dir, "--config.num_train_steps=12", "--config.checkpoint_every_steps=2",
                  "--config.optim.learning_rate=1e38"), timeout=900)
  assert out.returncode == 2, out.stderr[-3000:]
  last = out.stderr.strip().splitlines()[-1]
  assert "has a non-finite" in last and "the latest checkpoint is still step 4" in last, last
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "tokenizer", "checkpoints"))
                 if d.isdigit())
  for step in steps:  # Every step on disk is finite; step 4 is untouched.
    params = _final_params(workdir, step)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params)), step
  jax.tree.map(np.testing.assert_array_equal, _final_params(workdir, 4), good)

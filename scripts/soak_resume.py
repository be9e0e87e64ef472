"""Kill-9 soak: SIGKILL a tiny training run at random steps after a checkpoint, resume it, and
check that it ends bitwise equal to an uninterrupted run (not part of the default tests).

    python scripts/soak_resume.py --stage=tokenizer --points=20 --out=/tmp/soak
    python scripts/soak_resume.py --stage=lam --points=20 --out=/tmp/soak
    python scripts/soak_resume.py --stage=policy --points=20 --out=/tmp/soak

Prints one line per kill point and, last, `N/P bitwise equal`; exits 1 unless all are.
Each point costs two training processes (the killed one and its resumption) at tiny sizes.
The lam stage trains on its own tokenizer; the policy stage (behaviour cloning on FLAM's
pseudo-labels, Sec 4.3) on goal-task demonstrations with a tokenizer and a FLAM of its own.
"""

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TINY = [
    "--config.data.image_size=32", "--config.batch_size=4", "--config.data.num_workers=0",
    "--config.tokenizer.encoder_channels=(8,8)", "--config.tokenizer.z_channels=8",
    "--config.tokenizer.codebook_dim=8", "--config.tokenizer.levels=(4,4,2)",
    "--config.optim.warmup_steps=2", "--config.log_every_steps=1",
    "--config.image_every_steps=100000", "--config.progress_bar=False",
]
TINY_POLICY = [
    "--config.policy.num_labels=10", "--config.policy.decoder_steps=20",
    "--config.policy.channels=(8,)", "--config.policy.hidden=16",
    "--config.policy.eval_episodes=2",
]
TINY_LAM = [
    "--config.data.window_length=4", "--config.lam.d_model=16", "--config.lam.num_heads=2",
    "--config.lam.num_blocks=1", "--config.lam.aggregator_blocks=1", "--config.lam.num_slots=2",
    "--config.lam.slot_iterations=1", "--config.lam.prediction_steps=2",
    "--config.lam.subtoken_sizes=(4,8)", "--config.lam.scene_action_levels=(4,4)",
    "--config.lam.remat=False",
]


def env():
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def command(stage: str, workdir: str, data_dir: str, steps: int, every: int, tokenizer: str):
  """`tokenizer`: for lam, the tokenizer checkpoint; for policy, the FLAM workdir."""
  if stage == "tokenizer":
    extra = ["--config=configs/multigrid.py:tokenizer", "--config.data.window_length=2"]
  elif stage == "lam":
    extra = ["--config=configs/multigrid.py:flam", *TINY_LAM,
             f"--config.lam.tokenizer_checkpoint={tokenizer}"]
  else:
    extra = ["--config=configs/multigrid.py:policy", *TINY_LAM, *TINY_POLICY,
             f"--config.policy.lam_workdir={tokenizer}"]
  return [sys.executable, os.path.join(ROOT, "train.py"), extra[0], f"--workdir={workdir}",
          f"--config.data.dir={data_dir}", *extra[1:], *TINY, f"--config.num_train_steps={steps}",
          f"--config.checkpoint_every_steps={every}"]


def run_to_end(cmd):
  out = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=1800)
  if out.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr[-2000:]}")
  return out.stdout


def final_state(workdir: str, stage: str, step: int):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, stage, "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(path)


def bitwise_equal(a, b) -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  return tree_a == tree_b and all(
      np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y, equal_nan=False)
      and np.asarray(x).tobytes() == np.asarray(y).tobytes() for x, y in zip(leaves_a, leaves_b))


def kill_at(cmd, kill_step: int, timeout: float = 900.0) -> int:
  """Starts `cmd`, SIGKILLs it once it logged `kill_step`; returns the step it was killed at."""
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + timeout
  try:
    for line in proc.stdout:
      if line.startswith("step ") and int(line[5:].split(":")[0]) >= kill_step:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return int(line[5:].split(":")[0])
      if time.time() > deadline:
        break
    raise RuntimeError(f"the run ended or stalled before step {kill_step} (rc {proc.poll()})")
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def setup(stage: str, out: str, steps: int, every: int):
  """(data dir, tokenizer checkpoint / FLAM workdir or "", reference final state)."""
  from flam_jax.data import goal_task, multigrid  # pylint: disable=g-import-not-at-top
  data_dir = os.path.join(out, "data")
  if not os.path.exists(os.path.join(data_dir, "metadata.json")):
    if stage == "policy":  # Agent 0 and one distractor (K = 2 slots, as TINY_LAM).
      goal_task.write_dataset(
          data_dir, goal_task.GoalTaskConfig(grid_size=8, resolution=32, num_distractors=1,
                                             max_steps=7), num_episodes=12, seed=0,
          progress=False)
    else:
      multigrid.write_dataset(
          data_dir, multigrid.MultigridConfig(grid_size=8, resolution=32, num_agents=2,
                                              episode_length=8),
          num_episodes=12, seed=0, progress=False)
  tokenizer = ""
  if stage in ("lam", "policy"):
    tok_dir = os.path.join(out, "tokenizer_run")
    tokenizer = os.path.join(tok_dir, "tokenizer")
    if not os.path.isdir(os.path.join(tokenizer, "checkpoints")):
      run_to_end(command("tokenizer", tok_dir, data_dir, 5, 5, ""))
  if stage == "policy":  # A FLAM of 5 steps in the same workdir, whose latent actions label.
    if not os.path.isdir(os.path.join(tok_dir, "lam", "checkpoints")):
      run_to_end(command("lam", tok_dir, data_dir, 5, 5, tokenizer))
    tokenizer = tok_dir
  reference = os.path.join(out, f"{stage}_reference")
  shutil.rmtree(reference, ignore_errors=True)
  run_to_end(command(stage, reference, data_dir, steps, every, tokenizer))
  return data_dir, tokenizer, final_state(reference, stage, steps)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--stage", choices=("tokenizer", "lam", "policy"), required=True)
  parser.add_argument("--points", type=int, default=20)
  parser.add_argument("--steps", type=int, default=30, help="training steps of every run")
  parser.add_argument("--every", type=int, default=5, help="checkpoint interval")
  parser.add_argument("--seed", type=int, default=0, help="seed of the kill points")
  parser.add_argument("--out", default="/tmp/flam_soak")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  data_dir, tokenizer, reference = setup(args.stage, args.out, args.steps, args.every)
  rng = random.Random(args.seed)
  equal = 0
  for point in range(args.points):
    workdir = os.path.join(args.out, f"{args.stage}_point{point}")
    shutil.rmtree(workdir, ignore_errors=True)
    cmd = command(args.stage, workdir, data_dir, args.steps, args.every, tokenizer)
    killed = kill_at(cmd, rng.randint(args.every + 1, args.steps - 1))
    stdout = run_to_end(cmd)
    resumed = stdout.split("Resumed from ")[1].split(" at step ")[1].split()[0] \
        if "Resumed from" in stdout else "none"
    same = bitwise_equal(final_state(workdir, args.stage, args.steps), reference)
    equal += same
    print(f"point {point}: killed at step {killed}, resumed from step {resumed}: "
          f"{'bitwise equal' if same else 'DIFFERENT'}", flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
  print(f"{equal}/{args.points} bitwise equal", flush=True)
  sys.exit(0 if equal == args.points else 1)


if __name__ == "__main__":
  main()

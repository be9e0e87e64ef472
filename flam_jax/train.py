"""flam-train: run the training stages (and the eval stage) of one config.

    flam-train --config=configs/quickstart.py --workdir=workdirs/quickstart
    python train.py --config=configs/multigrid.py:tokenizer --workdir=W --config.batch_size=128

Each stage writes into `<workdir>/<stage>/` (checkpoints/, tb/, images/); re-running
the same command resumes from the latest checkpoint there. Errors a user can cause
print one line naming the problem and the fix, and exit with status 2. `--config`
is a config file path; `configs/<name>.py` is found in the installed `configs`
package when it is not a file under the current directory.
"""

import os
import sys

from absl import flags, logging
from ml_collections import config_flags

from flam_jax import cli
from flam_jax.errors import ConfigError
from flam_jax.lib.config_utils import stage_config

STAGES = ("tokenizer", "lam", "eval")


def write_dataset(config, out_dir: str, progress: bool = True) -> None:
  """Generates the Multigrid of config.data.generate (at config.data.image_size) in out_dir."""
  from flam_jax.data import multigrid  # pylint: disable=g-import-not-at-top
  gen = config.data.generate
  multigrid.write_dataset(
      out_dir,
      multigrid.MultigridConfig(
          grid_size=gen.grid_size, resolution=config.data.image_size,
          num_agents=gen.num_agents, episode_length=gen.episode_length,
          sticky_prob=gen.sticky_prob, wall_density=gen.wall_density),
      num_episodes=gen.episodes, seed=gen.seed, progress=progress)


def ensure_named_dataset(config, workdir: str) -> None:
  """config.data.name (a TFDS dataset): prepared if it is generated Multigrid, then imported
  once into config.data.dir (default <workdir>/data); later runs reuse the import."""
  # pylint: disable-next=g-import-not-at-top
  from flam_jax.data import import_video, tfds_builders, video_readers
  name = config.data.name
  tfds_dir = os.path.expanduser(config.data.get("tfds_data_dir") or "~/tensorflow_datasets")
  if name.startswith("flam_multigrid/"):
    tfds_builders.prepare(name, tfds_dir)
  builder = video_readers.tfds_builder(tfds_dir, video_readers.ReadOptions(tfds_name=name))
  config.data.dir = config.data.dir or os.path.join(workdir, "data")
  print(f"Dataset {name}: {builder.data_path} -> {config.data.dir} (imported on first use)",
        flush=True)
  import_video.import_dataset(str(builder.data_path), "tfds", config.data.dir,
                              image_size=config.data.image_size, progress=False)


def ensure_dataset(config, workdir: str) -> None:
  """Points config.data.dir at <workdir>/data when unset, generating Multigrid there if missing.

  With config.data.name set, the named TFDS dataset is imported there instead.
  """
  if config.data.get("name"):
    ensure_named_dataset(config, workdir)
    return
  if not config.data.dir:
    config.data.dir = os.path.join(workdir, "data")
    gen = config.data.generate
    if gen.enabled and not os.path.exists(os.path.join(config.data.dir, "metadata.json")):
      logging.info("Generating Multigrid data into %s", config.data.dir)
      print(f"Generating {gen.episodes} Multigrid episodes into {config.data.dir}", flush=True)
      write_dataset(config, config.data.dir)


def make_stage(config, workdir: str):
  """The stage object named by config.stage (a single stage)."""
  from flam_jax.stages import lam, tokenizer  # pylint: disable=g-import-not-at-top
  if config.stage == "tokenizer":
    return tokenizer.TokenizerStage(config)
  if config.stage == "lam":
    return lam.LatentActionStage.build(config, workdir)
  raise ConfigError(f"config.stage={config.stage!r} is not one of {STAGES}; "
                    "set --config.stage accordingly")


def _print_summary(stage_name: str, workdir: str, summary: dict) -> None:
  if summary["preempted"]:
    print(f"Preempted at step {summary['step']}: checkpoint saved in {summary['checkpoints']}; "
          "re-run the same command to resume.", flush=True)
    return
  metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(summary["metrics"].items()))
  print(f"\nStage {stage_name} finished at step {summary['step']}: {metrics}")
  print(f"  checkpoints: {summary['checkpoints']}")
  print(f"  metrics:     {summary['tensorboard']}  (tensorboard --logdir {workdir})")
  if summary["images"]:
    print(f"  pictures:    {summary['images'][-1]}")


def run_stage(config, workdir: str) -> dict:
  if config.stage == "eval":  # Evaluates the model trained in workdir (flam_jax/evaluate.py).
    from flam_jax import evaluate  # pylint: disable=g-import-not-at-top
    return evaluate.run_evaluation(config, workdir)
  from flam_jax.lib import trainer  # pylint: disable=g-import-not-at-top
  stage = make_stage(config, workdir)
  summary = trainer.train(stage, config, os.path.join(workdir, stage.name))
  _print_summary(stage.name, workdir, summary)
  return summary


def run(config, workdir: str) -> dict:
  """Runs each stage listed in config.stage ("tokenizer", "lam" or "tokenizer,lam") in order."""
  workdir = os.path.abspath(workdir)
  names = [s.strip() for s in config.stage.split(",") if s.strip()]
  unknown = [s for s in names if s not in STAGES]
  if not names or unknown:
    raise ConfigError(f"config.stage={config.stage!r} names unknown stages {unknown}; use "
                      f"{' or '.join(STAGES)}, or a comma-separated list such as 'tokenizer,lam'")
  ensure_dataset(config, workdir)
  summary = {}
  for name in names:
    summary = run_stage(stage_config(config, name), workdir)
    if summary["preempted"]:
      break
  return summary


def resolve_config_path(value: str) -> str:
  """`configs/<file>.py[:arg]` from the installed configs package when not under the cwd."""
  path, sep, arg = value.partition(":")
  if os.path.exists(path) or not path.startswith("configs" + os.sep):
    return value
  import configs  # pylint: disable=g-import-not-at-top
  packaged = os.path.join(os.path.dirname(configs.__file__), path[len("configs" + os.sep):])
  return (packaged if os.path.exists(packaged) else path) + sep + arg


def parse_flags(argv):
  """absl flag parsing, with one-line errors for bad --config overrides instead of tracebacks."""
  argv = [("--config=" + resolve_config_path(a[len("--config="):])
           if a.startswith("--config=") else a) for a in argv]
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}; run with --helpshort for the flags", file=sys.stderr)
  except (AttributeError, KeyError) as e:
    key = str(e).strip("'\"")
    where = [a for a in argv if a.startswith("--config.") and key in a.split("=")[0]]
    shown = where[0] if where else key
    print(f"error: unknown config key {key!r} in {shown}; check the spelling against the "
          "config file's get_config() (keys are listed in README.md)", file=sys.stderr)
  sys.exit(2)


def define_flags() -> None:
  config_flags.DEFINE_config_file(
      "config", None, "Path to an ml_collections config file, optionally with :variant.",
      lock_config=True)
  cli.define_workdir_flag("Directory for checkpoints, metrics and pictures.")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  summary = run(cli.FLAGS.config, cli.FLAGS.workdir)
  if summary["preempted"]:
    sys.exit(143)  # 128 + SIGTERM: tells a scheduler the job did not finish.


def run_cli() -> None:
  """Console entry point `flam-train` (and `python train.py`)."""
  cli.run(main, define_flags, flags_parser=parse_flags)

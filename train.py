"""flam_jax's single entry point.

    python train.py --config=configs/quickstart.py --workdir=workdirs/quickstart
    python train.py --config=configs/multigrid.py:tokenizer --workdir=W --config.batch_size=128

Each stage writes into `<workdir>/<stage>/` (checkpoints/, tb/, images/); re-running
the same command resumes from the latest checkpoint there. Exit status (flam_jax/cli.py):
0 done, 2 a user error (one line naming the problem and the fix), 143 preempted after saving.
"""

import os

from absl import flags, logging
from ml_collections import config_flags

from flam_jax.errors import ConfigError
from flam_jax import cli, filesystem
from flam_jax.lib import config_validation
from flam_jax.lib.config_utils import stage_config

USAGE = ("python train.py --config=configs/<file>.py[:<variant>] --workdir=<dir> "
         "[--config.<key>=<value> ...]")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to an ml_collections config file, optionally with :variant.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and pictures.")
flags.mark_flags_as_required(["config", "workdir"])


def ensure_dataset(config, workdir: str) -> None:
  """Points config.data.dir at <workdir>/data when unset, generating Multigrid there if missing."""
  from flam_jax.data import multigrid  # pylint: disable=g-import-not-at-top
  if not config.data.dir:
    config.data.dir = os.path.join(workdir, "data")
    gen = config.data.generate
    if gen.enabled and not os.path.exists(os.path.join(config.data.dir, "metadata.json")):
      logging.info("Generating Multigrid data into %s", config.data.dir)
      print(f"Generating {gen.episodes} Multigrid episodes into {config.data.dir}", flush=True)
      multigrid.write_dataset(
          config.data.dir,
          multigrid.MultigridConfig(
              grid_size=gen.grid_size, resolution=config.data.image_size,
              num_agents=gen.num_agents, episode_length=gen.episode_length,
              sticky_prob=gen.sticky_prob, wall_density=gen.wall_density),
          num_episodes=gen.episodes, seed=gen.seed)


STAGES = ("tokenizer", "lam", "eval")


def make_stage(config, workdir: str):
  """The stage object named by config.stage (a single stage)."""
  from flam_jax.stages import lam, tokenizer  # pylint: disable=g-import-not-at-top
  if config.stage == "tokenizer":
    return tokenizer.TokenizerStage(config)
  if config.stage == "lam":
    return lam.LatentActionStage.build(config, workdir)
  raise ConfigError(f"config.stage={config.stage!r} is not one of {STAGES}; "
                    "set --config.stage accordingly")


def run_stage(config, workdir: str) -> dict:
  if config.stage == "eval":  # Evaluates the model trained in workdir (flam_jax/lib/evaluator.py).
    from flam_jax.lib import evaluator  # pylint: disable=g-import-not-at-top
    return evaluator.run_evaluation(config, workdir)
  from flam_jax.lib import trainer  # pylint: disable=g-import-not-at-top
  stage = make_stage(config, workdir)
  summary = trainer.train(stage, config, os.path.join(workdir, stage.name))
  if summary["preempted"]:
    print(f"Preempted at step {summary['step']}: checkpoint saved in {summary['checkpoints']}; "
          "re-run the same command to resume.", flush=True)
    return summary
  metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(summary["metrics"].items()))
  print(f"\nStage {stage.name} finished at step {summary['step']}: {metrics}")
  print(f"  checkpoints: {summary['checkpoints']}")
  print(f"  metrics:     {summary['tensorboard']}  (tensorboard --logdir {workdir})")
  if summary["images"]:
    print(f"  pictures:    {summary['images'][-1]}")
  return summary


def stage_names(config) -> list:
  stage = config.get("stage")
  names = [s.strip() for s in stage.split(",") if s.strip()] if isinstance(stage, str) else []
  unknown = [s for s in names if s not in STAGES]
  if not names or unknown:
    raise ConfigError(f"config.stage={stage!r} names unknown stages {unknown}; use "
                      f"{' or '.join(STAGES)}, or a comma-separated list such as 'tokenizer,lam'")
  return names


def check_before_building(config, workdir: str, names) -> None:
  """Every stage's config (config_validation) and every path, before any model is built."""
  from flam_jax.stages import lam  # pylint: disable=g-import-not-at-top
  for name in names:
    view = stage_config(config, name)
    try:
      config_validation.validate(view, name)
      if name == "lam":
        lam.LatentActionStage.check_config(view)
    except ConfigError as e:
      if len(names) == 1:
        raise
      raise ConfigError(f"stage {name} (config.per_stage.{name} merged in): {e}") from e
  filesystem.check_output_dir(workdir, "--workdir")
  if config.data.dir:
    filesystem.check_input_dir(config.data.dir, "--config.data.dir")


def run(config, workdir: str) -> dict:
  """Runs each stage listed in config.stage ("tokenizer", "lam" or "tokenizer,lam") in order."""
  workdir = os.path.abspath(workdir)
  names = stage_names(config)
  check_before_building(config, workdir, names)
  ensure_dataset(config, workdir)
  summary = {}
  for name in names:
    summary = run_stage(stage_config(config, name), workdir)
    if summary["preempted"]:
      break
  return summary


def load_config():
  """The --config flag's value; a config file that failed to load is one line, not a traceback."""
  failed_load = cli.config_load_error()
  if failed_load:
    raise ConfigError(failed_load)
  return _CONFIG.value


def main(argv):
  del argv  # Stray arguments are refused by cli.run.
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax and grain are chatty at INFO; -v 0 shows it.
  summary = run(load_config(), _WORKDIR.value)
  return cli.EXIT_PREEMPTED if summary["preempted"] else 0


if __name__ == "__main__":
  cli.run(main, USAGE)

"""flam-train: run the training stages (and the eval stage) of one config.

    flam-train --config=configs/quickstart.py --workdir=workdirs/quickstart
    python train.py --config=configs/multigrid.py:tokenizer --workdir=W --config.batch_size=128

Each stage writes into `<workdir>/<stage>/` (checkpoints/, tb/, images/); re-running
the same command resumes from the latest checkpoint there. Exit status (flam_jax/cli.py):
0 done, 2 a user error (one line naming the problem and the fix), 143 preempted after
saving, 130 Ctrl-C, 1 a bug. Every stage's config and every path are checked before any
model is built (lib/config_validation.py, flam_jax/filesystem.py). `--config`
is a config file path; `configs/<name>.py` is found in the installed `configs`
package when it is not a file under the current directory.
"""

import os

from absl import flags, logging
from ml_collections import config_flags

from flam_jax import cli, filesystem
from flam_jax.errors import ConfigError
from flam_jax.lib import config_validation
from flam_jax.lib.config_utils import stage_config

USAGE = ("python train.py (or flam-train) --config=configs/<file>.py[:<variant>] "
         "--workdir=<dir> [--config.<key>=<value> ...]")

STAGES = ("tokenizer", "lam", "eval", "policy")


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


def stage_class(name: str):
  """The class of the training stage `name` (its checkpoint_keys say what a checkpoint of it
  must match)."""
  from flam_jax.stages import lam, policy, tokenizer  # pylint: disable=g-import-not-at-top
  classes = dict(tokenizer=tokenizer.TokenizerStage, lam=lam.LatentActionStage,
                 policy=policy.PolicyStage)
  if name not in classes:
    raise ConfigError(f"config.stage={name!r} is not one of {tuple(classes)}; "
                      "set --config.stage accordingly")
  return classes[name]


def make_stage(config, workdir: str):
  """The stage object named by config.stage (a single stage)."""
  cls = stage_class(config.stage)
  return cls(config) if config.stage == "tokenizer" else cls.build(config, workdir)


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
  if hasattr(stage, "evaluate") and not summary["preempted"]:
    # The policy stage: success rate in the live environment.
    summary["evaluation"] = stage.evaluate(summary["state"].params, summary["stage_dir"],
                                           summary["step"])
    print(format_policy_evaluation(summary["evaluation"]))
  return summary


def format_policy_evaluation(evaluation: dict) -> str:
  """The live evaluation's lines (Procgen games have returns only, no success rate)."""
  has_success = "success_rate" in evaluation["policy"]
  lines = [f"  live evaluation ({'success rate, ' if has_success else ''}mean return over "
           f"{evaluation['policy']['num_episodes']} episodes):"]
  for name in ("policy", "expert", "random"):
    r = evaluation[name]
    success = f"{r['success_rate']:.3f}  " if has_success else ""
    lines.append(f"    {name:7s} {success}{r['mean_return']:.3f}")
  labelling = evaluation.get("labelling", {})
  if labelling.get("pseudo_label_accuracy") is not None:
    lines.append(f"  pseudo-label accuracy vs true actions: {labelling['pseudo_label_accuracy']:.3f}")
  return "\n".join(lines)


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
  """Runs each stage listed in config.stage (e.g. "tokenizer", "tokenizer,lam", "lam,policy") in order."""
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


def define_flags() -> None:
  config_flags.DEFINE_config_file(
      "config", None, "Path to an ml_collections config file, optionally with :variant.",
      lock_config=True)
  cli.define_workdir_flag("Directory for checkpoints, metrics and pictures.")
  flags.mark_flags_as_required(["config", "workdir"])


def load_config():
  """The --config flag's value; a config file that failed to load is one line, not a traceback."""
  failed_load = cli.config_load_error()
  if failed_load:
    raise ConfigError(failed_load)
  return cli.FLAGS.config


def main(argv):
  del argv  # Stray arguments are refused by cli.run.
  summary = run(load_config(), cli.FLAGS.workdir)
  return cli.EXIT_PREEMPTED if summary["preempted"] else 0


def run_cli() -> None:
  """Console entry point `flam-train` (and `python train.py`)."""
  cli.run(main, define_flags, USAGE)

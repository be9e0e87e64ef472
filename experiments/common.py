"""Shared machinery of the experiment scripts (Tables 1 and 2, Sec 5.4, Sec 5.5).

A script describes its runs as `Run`s (a label, a config variant, lam overrides, a
number of agents, a seed); this module

  - builds their configs for a setting (`tiny`, `small` on a CPU, `paper` = Table 4),
  - generates each dataset once (`<runs_root>/data_<n>a`) and trains one tokenizer per
    dataset (`<runs_root>/tokenizer_<n>a`, seed 0, shared by every run on that data),
  - trains each run in-process through `train.run` unless its checkpoint is finished,
  - evaluates the seeds of one config together (the evaluator's one-jit sweep) on the
    test split, caching the metrics, and
  - aggregates mean +- std over seeds into results.md / results.json and PNG plots.

Layout under `--root` (default results/<table>); `<s>` is the setting, with `_x<scale>`
appended when --steps_scale is not 1:

  <root>/<s>/data_<n>a, tokenizer_<n>a, <label>_<n>a/seed<k>, evals/   runs (or --runs_root)
  <root>/<s>/results.md, results.json, *.png                           this setting's results
  <root>/results.md, results.json                                      copies of the last run

One module a concept: `settings.py` (the settings and configs), `runner.py` (training
and evaluation, idempotent), `report.py` (aggregation, tables, claims), `plots.py`
(matplotlib); this module holds the flags and `main` every script shares.
"""

import sys
from typing import Callable, List, Sequence, Tuple

from absl import flags, logging

from experiments.runner import Experiment, Run
from experiments.settings import SETTINGS, get_setting
from flam_jax.errors import ConfigError, FlamError

def define_flags(default_root: str) -> None:
  """The flags every experiment script takes (once per process: a test that imports two
  scripts gets the first one's default --root)."""
  if "setting" in flags.FLAGS:
    return
  flags.DEFINE_enum("setting", "small", list(SETTINGS),
                    "tiny (tests), small (CPU, the 2026-11-23 runs), cpu (the quickstart recipe "
                    "with 4 agents, CPU), cpu_long (cpu with 2000 episodes, 9000 steps, free "
                    "slot positions) or paper (Table 4, GPU/TPU).")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every configuration.")
  flags.DEFINE_string("root", default_root, "Folder of the workdirs and the results.")
  flags.DEFINE_string("runs_root", "", "Folder of the datasets, tokenizers and runs if not "
                      "--root; point several scripts at one to share runs (e.g. results/runs).")
  flags.DEFINE_float("steps_scale", 1.0, "Multiplies every stage's training steps.")
  flags.DEFINE_list("only", [], "Train (and evaluate) only the runs with these labels (e.g. "
                    "flam,lam; `tokenizer` alone: only the datasets and tokenizers) and write "
                    "no report: for running one script's runs in parallel processes, then "
                    "once without --only to evaluate what is missing and report.")
  flags.DEFINE_bool("train_only", False, "Train (datasets, tokenizers, runs) and stop before "
                    "the evaluation and the report.")
  flags.DEFINE_string("compilation_cache", "auto", "JAX persistent compilation cache: auto "
                      "(<runs>/jax_cache unless $JAX_COMPILATION_CACHE_DIR), none, or a folder.")


def parse_seeds(values: Sequence[str]) -> List[int]:
  try:
    seeds = [int(v) for v in values]
  except ValueError as e:
    raise ConfigError(f"--seeds={','.join(values)} is not a comma-separated list of "
                     "integers, e.g. 0,1,2") from e
  if not seeds:
    raise ConfigError("--seeds is empty; give at least one seed, e.g. --seeds=0")
  return seeds


def experiment_from_flags(name: str, experiment_cls: Callable[..., Experiment] = Experiment
                          ) -> Tuple[Experiment, List[int]]:
  """`experiment_cls(name, setting, root, steps_scale, runs_root, compilation_cache)` from the
  flags, and the seeds."""
  f = flags.FLAGS
  if f.steps_scale <= 0:
    raise ConfigError(f"--steps_scale={f.steps_scale} must be positive")
  experiment = experiment_cls(name, get_setting(f.setting), f.root, f.steps_scale, f.runs_root,
                              f.compilation_cache)
  return experiment, parse_seeds(f.seeds)


def script_main(name: str, make_runs: Callable[[Experiment, List[int]], List[Run]],
                report: Callable[..., str],
                make_experiment: Callable[[str], Tuple[Experiment, List[int]]] = (
                    experiment_from_flags)) -> Callable[[Sequence[str]], None]:
  """The absl `main` of an experiment script: train and evaluate `make_runs`, then `report`.

  `report(experiment, runs, metrics, seeds)` writes the results; `make_experiment(name)`
  builds the experiment and the seeds from the flags. Logs are quiet and the mistakes a
  user can make end in a one-line error (exit status 2).
  """
  def main(argv: Sequence[str]) -> None:
    del argv
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # Orbax and grain are chatty at INFO.
    try:
      experiment, seeds = make_experiment(name)
      runs = make_runs(experiment, seeds)
      only = flags.FLAGS.only
      if only:
        known = sorted({r.label for r in runs} | {"tokenizer"})
        unknown = [label for label in only if label not in known]
        if unknown:
          raise ConfigError(f"--only={','.join(only)}: {','.join(unknown)} is not a run of "
                            f"{name}; choose from {','.join(known)}")
        if "tokenizer" in only:  # Every run trains its own dataset's tokenizer anyway.
          for n in sorted({r.num_agents for r in runs}):
            experiment.ensure_tokenizer(n)
        runs = [r for r in runs if r.label in only]
      if flags.FLAGS.train_only:
        experiment.train_all(runs)
        return
      metrics = experiment.run_all(runs)
      if not only:
        report(experiment, runs, metrics, seeds)
    except FlamError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(2)
  return main


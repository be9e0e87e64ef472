"""The idempotent runner: data and tokenizer once per dataset, runs unless finished, evaluation.

An `Experiment` trains each `Run` in-process through `flam_jax.train.run` unless its
checkpoint is finished, evaluates the seeds of one config together (the evaluator's
one-jit sweep, cached per group) and writes results.md / results.json.
"""

import dataclasses
import gc
import json
import os
import platform
import shutil
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ml_collections import ConfigDict

from experiments.settings import Setting, lam_config, settings_summary, tokenizer_config
from flam_jax import filesystem

@dataclasses.dataclass(frozen=True)
class Run:
  """One latent action model to train: `label` names its config, shared by its seeds."""

  label: str
  variant: str  # A variant of configs/multigrid.py (flam, lam, oc_lam, wm, flam_regression).
  num_agents: int
  seed: int
  overrides: Tuple[Tuple[str, Any], ...] = ()

  @property
  def group(self) -> str:
    return f"{self.label}_{self.num_agents}a"


def setting_dir(root: str, setting: Setting, steps_scale: float) -> str:
  tag = setting.name if steps_scale == 1 else f"{setting.name}_x{steps_scale:g}"
  return os.path.abspath(os.path.join(root, tag))


class Experiment:
  """Trains, evaluates and aggregates the runs of one script for one setting."""

  def __init__(self, name: str, setting: Setting, root: str, steps_scale: float = 1.0,
               runs_root: str = "", compilation_cache: str = "auto"):
    self.name = name
    self.setting = setting
    self.steps_scale = float(steps_scale)
    self.out_dir = setting_dir(root, setting, self.steps_scale)
    self.root = os.path.abspath(root)
    self.runs_dir = (setting_dir(runs_root, setting, self.steps_scale) if runs_root
                     else self.out_dir)
    self.timings: Dict[str, float] = {}
    self._tokenizers_ready = set()
    os.makedirs(self.out_dir, exist_ok=True)
    enable_compilation_cache(compilation_cache, os.path.join(self.runs_dir, "jax_cache"))

  # -- Paths. --
  def data_dir(self, num_agents: int) -> str:
    return os.path.join(self.runs_dir, f"data_{num_agents}a")

  def tokenizer_dir(self, num_agents: int) -> str:
    return os.path.join(self.runs_dir, f"tokenizer_{num_agents}a")

  def workdir(self, run: Run) -> str:
    return os.path.join(self.runs_dir, run.group, f"seed{run.seed}")

  def config(self, run: Run) -> ConfigDict:
    return lam_config(self.setting, run.variant, run.num_agents, run.seed,
                      self.data_dir(run.num_agents), self.tokenizer_dir(run.num_agents),
                      self.steps_scale, dict(run.overrides))

  # -- Data and tokenizer, once per number of agents. --
  def ensure_data(self, num_agents: int) -> str:
    """Generates the Multigrid dataset of `num_agents` unless it is complete."""
    from flam_jax import train  # pylint: disable=g-import-not-at-top
    from flam_jax.data import records  # pylint: disable=g-import-not-at-top
    out = self.data_dir(num_agents)
    if os.path.exists(os.path.join(out, records.METADATA_FILE)):
      return out
    config = tokenizer_config(self.setting, num_agents, out)
    print(f"[{self.name}] generating {config.data.generate.episodes} Multigrid episodes with "
          f"{num_agents} agent(s) into {out}", flush=True)
    start = time.time()
    train.write_dataset(config, out, progress=self.setting.name != "tiny")
    self.timings[f"data_{num_agents}a"] = time.time() - start
    return out

  def ensure_tokenizer(self, num_agents: int) -> str:
    """Trains the tokenizer of `num_agents`' dataset unless it is finished."""
    workdir = self.tokenizer_dir(num_agents)
    if num_agents in self._tokenizers_ready:
      return workdir
    self.ensure_data(num_agents)
    config = tokenizer_config(self.setting, num_agents, self.data_dir(num_agents),
                              self.steps_scale)
    agents = f"{num_agents} agent{'s' * (num_agents != 1)}"
    self._train(config, workdir, "tokenizer", f"tokenizer ({agents})", f"tokenizer_{num_agents}a")
    self._tokenizers_ready.add(num_agents)
    return workdir

  def _train(self, config: ConfigDict, workdir: str, stage: str, what: str, key: str) -> None:
    done = latest_step(os.path.join(workdir, stage, "checkpoints"))
    if done is not None and done >= config.num_train_steps:
      check_finished_run(config, workdir, stage)
      print(f"[{self.name}] {what}: finished at step {done}, skipping ({workdir})", flush=True)
      return
    resume = f", resuming at step {done}" if done else ""
    print(f"[{self.name}] {what}: training {config.num_train_steps} steps{resume} in {workdir}",
          flush=True)
    from flam_jax import train  # pylint: disable=g-import-not-at-top
    start = time.time()
    summary = train.run(config, workdir)
    seconds = time.time() - start
    self.timings[key] = seconds
    release_memory()
    if summary.get("preempted"):
      print(f"[{self.name}] preempted during {what}; re-run the same command to resume.",
            flush=True)
      sys.exit(143)
    filesystem.write_json(os.path.join(workdir, stage, "experiment_run.json"),
                          dict(seconds=seconds, steps=int(config.num_train_steps),
                               resumed_from=done, devices=hardware()), default=str)

  def ensure_run(self, run: Run) -> str:
    """Trains `run` (and its data and tokenizer) unless its checkpoint is finished."""
    self.ensure_tokenizer(run.num_agents)
    workdir = self.workdir(run)
    self._train(self.config(run), workdir, "lam", f"{run.group} seed {run.seed}",
                f"{run.group}/seed{run.seed}")
    return workdir

  # -- Evaluation. --
  def evaluate(self, runs: Sequence[Run]) -> Dict[str, List[Dict[str, Any]]]:
    """Test-split metrics of every run, {group: [metrics per seed]}, cached per group.

    The seeds of one group share a config, so they are evaluated together by the
    evaluator's sweep (one jit-compiled vmap over the parameter sets).
    """
    from flam_jax import evaluate  # pylint: disable=g-import-not-at-top
    from flam_jax.lib import evaluator  # pylint: disable=g-import-not-at-top
    groups: Dict[str, List[Run]] = {}
    for run in runs:
      groups.setdefault(run.group, []).append(run)
    out = {}
    for group, members in groups.items():
      workdirs = [self.workdir(r) for r in members]
      steps = [latest_step(os.path.join(w, "lam", "checkpoints")) for w in workdirs]
      settings = dict(evaluator.EVAL_DEFAULTS)
      settings.update({k: v for k, v in self.setting.eval.items() if k in settings})
      settings.update(workdirs=",".join(workdirs[1:]), steps="")
      # The metric names are in the key: evaluations cached before a metric was added rerun.
      # The checkpoints' fingerprints too: a run deleted and trained again to the same step
      # (after a default changed) must not reuse the old model's evaluation.
      key = dict(workdirs=workdirs, steps=steps, fingerprints=[
          checkpoint_fingerprint(os.path.join(w, "lam", "checkpoints"), s)
          for w, s in zip(workdirs, steps)], settings=settings,
                 metrics=list(evaluator.PER_STEP_KEYS)
                 + [f"probe_{k}" for k in evaluator.PROBE_KEYS])
      cache = os.path.join(self.runs_dir, "evals", f"{group}.json")
      cached = filesystem.read_json(cache)
      if cached and cached.get("key") == json.loads(json.dumps(key)):
        print(f"[{self.name}] {group}: evaluation cached ({cache})", flush=True)
        out[group] = cached["metrics"]
        continue
      print(f"[{self.name}] {group}: evaluating {len(workdirs)} seed(s) on the "
            f"{settings['split']} split", flush=True)
      start = time.time()
      summary = evaluate.evaluate_workdir(workdirs[0], settings,
                                          run_config=self.config(members[0]))
      self.timings[f"eval/{group}"] = time.time() - start
      results = summary["runs"] if "runs" in summary else [summary]
      metrics = [{k: v for k, v in r.items() if _jsonable(v)} for r in results]
      filesystem.write_json(cache, dict(key=key, metrics=metrics), default=str)
      out[group] = metrics
      release_memory()
    return out

  def train_all(self, runs: Sequence[Run]) -> None:
    """Trains every run in order, skipping finished ones."""
    for i, run in enumerate(runs):
      print(f"[{self.name}] run {i + 1}/{len(runs)}: {run.group} seed {run.seed}", flush=True)
      self.ensure_run(run)

  def run_all(self, runs: Sequence[Run]) -> Dict[str, List[Dict[str, Any]]]:
    """Trains every run (in order, skipping finished ones), then evaluates them."""
    start = time.time()
    self.train_all(runs)
    metrics = self.evaluate(runs)
    self.timings["total"] = time.time() - start
    return metrics

  # -- Outputs. --
  def write(self, lines: List[str], payload: Dict[str, Any], runs: Sequence[Run] = (),
            plots: Sequence[Tuple[str, Optional[str]]] = ()) -> str:
    """Writes results.md / results.json under the setting's folder and copies them to root.

    `lines`: the markdown, one entry a line; `plots`: (alt text, PNG path or None when
    matplotlib-free plotting was skipped) linked below it. Returns the markdown.
    """
    lines = list(lines)
    for alt, path in plots:
      if path:
        lines += [f"![{alt}]({os.path.basename(path)})", ""]
    markdown = "\n".join(lines)
    payload = dict(payload, experiment=self.name, setting=self.setting.name,
                   steps_scale=self.steps_scale, hardware=hardware(), timings=self.timings,
                   settings=settings_summary(self.setting, self.steps_scale),
                   run_info=self.run_info(runs))
    md_path = os.path.join(self.out_dir, "results.md")
    with open(md_path, "w") as f:
      f.write(markdown)
    filesystem.write_json(os.path.join(self.out_dir, "results.json"), payload, default=str)
    for name in ("results.md", "results.json"):
      shutil.copyfile(os.path.join(self.out_dir, name), os.path.join(self.root, name))
    print("\n" + markdown, flush=True)
    print(f"[{self.name}] wrote {md_path} and results.json (copies in {self.root})", flush=True)
    return markdown

  def run_info(self, runs: Sequence[Run]) -> Dict[str, Any]:
    """{group/seedK: training time and steps} of every run, from experiment_run.json."""
    out = {}
    for run in runs:
      info = filesystem.read_json(os.path.join(self.workdir(run), "lam", "experiment_run.json"))
      if info:
        out[f"{run.group}/seed{run.seed}"] = info
    return out


def enable_compilation_cache(where: str, default_dir: str) -> None:
  """Turns on JAX's persistent compilation cache.

  `where`: 'auto' (default_dir, unless $JAX_COMPILATION_CACHE_DIR is set), 'none', or a
  folder. The seeds of one config then share their compiled programs (apart from the
  seed-dependent train step), and so do re-runs of a script.
  """
  if where == "none" or (where == "auto" and os.environ.get("JAX_COMPILATION_CACHE_DIR")):
    return
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir",
                    os.path.abspath(default_dir if where == "auto" else where))


def check_finished_run(config: ConfigDict, workdir: str, stage: str) -> None:
  """Raises CheckpointError (one line) where the finished run `workdir` was trained with a
  config other than `config`: an experiment whose default changed must not report runs of
  the old one under the new name (train.py checks the same when it resumes)."""
  from flam_jax import train  # pylint: disable=g-import-not-at-top
  from flam_jax.lib import checkpointing, trainer  # pylint: disable=g-import-not-at-top
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, stage, "checkpoints"), async_save=False)
  try:
    saved = ckpt.restore_config()
  finally:
    ckpt.close()
  trainer.check_saved_config(
      train.stage_class(stage), config, saved, ckpt.directory,
      fix=f"delete {workdir} to train it again with this config, or pass another --runs_root")


def checkpoint_fingerprint(checkpoint_dir: str, step: Optional[int]) -> Optional[str]:
  """`Checkpointer.fingerprint` of `step` in `checkpoint_dir` (None without that step)."""
  if step is None:
    return None
  from flam_jax.lib import checkpointing  # pylint: disable=g-import-not-at-top
  ckpt = checkpointing.Checkpointer(checkpoint_dir, async_save=False)
  try:
    return ckpt.fingerprint(step)
  finally:
    ckpt.close()


def latest_step(checkpoint_dir: str) -> Optional[int]:
  """The latest finalised orbax step under `checkpoint_dir` (None if there is none)."""
  if not os.path.isdir(checkpoint_dir):
    return None
  steps = [int(d) for d in os.listdir(checkpoint_dir)
           if d.isdigit() and os.path.isdir(os.path.join(checkpoint_dir, d))]
  return max(steps) if steps else None


def release_memory() -> None:
  """Drops JAX's compiled functions and collects garbage between in-process runs."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.clear_caches()
  gc.collect()


def _jsonable(value) -> bool:
  try:
    json.dumps(value)
    return True
  except (TypeError, ValueError):
    return False


def _cpu_model() -> str:
  """The host CPU's model name ('Intel(R) Xeon(R) Processor'), or '' where unknown."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def hardware() -> str:
  """The devices JAX runs on, e.g. '8 x TPU v4 (tpu)', and on a CPU backend the host's
  model and cores ('1 x cpu (cpu: 2 cores, Intel(R) Xeon(R) Processor)'): XLA:CPU compiles
  for the host's vector units, so figures reproduce exactly only on the same CPU model."""
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  platform_name = devices[0].platform
  if platform_name == "cpu":
    model = _cpu_model()
    platform_name = f"cpu: {os.cpu_count()} cores" + (f", {model}" if model else "")
  return f"{len(devices)} x {', '.join(kinds)} ({platform_name})"


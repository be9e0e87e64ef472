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
"""

import dataclasses
import gc
import json
import os
import shutil
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from absl import flags, logging
import numpy as np
from ml_collections import ConfigDict

from configs import multigrid as multigrid_config
from flam_jax.errors import ConfigError, FlamError

SETTINGS = ("tiny", "small", "paper")
VARIANT_TITLES = dict(wm="WM", lam="LAM", oc_lam="OC+LAM", flam="FLAM")
ACTIONS_PER_AGENT = 4  # Multigrid: turn left / turn right / forward / stay.
MAX_SCENE_FACTORS = 4  # LAM's scene codebook: 4 levels per agent, at most 4^4 = 256 codes.


# ---- Settings. ----
@dataclasses.dataclass(frozen=True)
class Setting:
  """Overrides of configs/multigrid.py (Table 4) for one experimental setting.

  Attributes:
    name: tiny | small | paper.
    common: flattened config keys set in both stages.
    tokenizer: keys of the tokenizer stage (Sec 4.1).
    lam: keys of the latent action stage (Sec 4.2).
    eval: keys of the evaluator's settings (flam_jax/lib/evaluator.py EVAL_DEFAULTS).
    table1_agents: agents of Table 1's Multigrid (4 in the paper).
    entities: Table 2's numbers of moving entities.
  """

  name: str
  common: Dict[str, Any]
  tokenizer: Dict[str, Any]
  lam: Dict[str, Any]
  eval: Dict[str, Any]
  table1_agents: int = 4
  entities: Tuple[int, ...] = (1, 2, 4, 8, 16)


_SETTINGS = {
    # Table 4: 128 px frames of a 32x32 grid, 16x16 patches, d_model 256, 10-frame
    # windows, 5 prediction steps, 50k steps each; for a GPU/TPU.
    "paper": Setting(
        name="paper", common={"data.generate.episodes": 2000},
        tokenizer={}, lam={}, eval={"batch_size": 64}),
    # A CPU-sized Multigrid: 32 px frames of an 8x8 grid, a 2-stage tokenizer giving one
    # token per 4x4-pixel cell (8x8 patches, 1024 codes), a d_model 64 world model
    # (configs/quickstart.py's), 6-frame windows, 2 prediction steps.
    "small": Setting(
        name="small",
        common={
            "data.image_size": 32, "data.num_workers": 0, "data.prefetch_buffer_size": 2,
            "data.generate.grid_size": 8, "data.generate.episodes": 300,
            "data.generate.episode_length": 16,
            "tokenizer.encoder_channels": (16, 32), "tokenizer.z_channels": 32,
            "tokenizer.codebook_dim": 32, "log_every_steps": 50, "image_every_steps": 1000,
            "checkpoint_every_steps": 500, "optim.warmup_steps": 50,
        },
        tokenizer={"num_train_steps": 1000, "batch_size": 32, "optim.learning_rate": 1e-3},
        lam={
            "num_train_steps": 600, "batch_size": 8, "optim.learning_rate": 1e-3,
            "data.window_length": 6, "lam.d_model": 64, "lam.num_heads": 4,
            "lam.num_blocks": 1, "lam.aggregator_blocks": 1, "lam.slot_iterations": 2,
            "lam.prediction_steps": 2, "lam.remat": False,
        },
        eval={"batch_size": 32, "probe_steps": 300}),
    # Test-only: 16 px frames of a 4x4 grid, a handful of episodes, 2-3 steps a stage.
    "tiny": Setting(
        name="tiny",
        common={
            "data.image_size": 16, "data.num_workers": 0, "data.prefetch_buffer_size": 2,
            "data.generate.grid_size": 4, "data.generate.episodes": 12,
            "data.generate.episode_length": 8, "data.generate.wall_density": 0.0,
            "tokenizer.encoder_channels": (8, 8), "tokenizer.z_channels": 8,
            "tokenizer.codebook_dim": 8, "tokenizer.levels": (4, 4, 2),
            "log_every_steps": 1000, "image_every_steps": 1000, "checkpoint_every_steps": 1000,
            "optim.warmup_steps": 1, "progress_bar": False,
        },
        tokenizer={"num_train_steps": 3, "batch_size": 4},
        lam={
            "num_train_steps": 2, "batch_size": 4, "data.window_length": 4,
            "lam.d_model": 16, "lam.num_heads": 2, "lam.num_blocks": 1,
            "lam.aggregator_blocks": 1, "lam.slot_iterations": 1, "lam.prediction_steps": 2, "lam.remat": False,
            "lam.subtoken_sizes": (4, 8),
        },
        eval={"batch_size": 4, "max_batches": 1, "probe_steps": 10},
        table1_agents=2, entities=(1, 2)),
}


def get_setting(name: str) -> Setting:
  if name not in _SETTINGS:
    raise ConfigError(f"--setting={name!r} is not one of {SETTINGS}")
  return _SETTINGS[name]


def _scaled(steps: int, scale: float) -> int:
  return max(1, int(round(steps * scale)))


def _update(config: ConfigDict, overrides: Dict[str, Any], where: str) -> None:
  """Sets dotted keys, refusing unknown ones (update_from_flattened_dict would add them)."""
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node.get(part) if isinstance(node, ConfigDict) else None
    if not isinstance(node, ConfigDict) or leaf not in node:
      raise ConfigError(f"{where} names an unknown config key {key!r}; check it against "
                        "configs/multigrid.py")
    node[leaf] = value


def scene_action_levels(num_agents: int) -> Tuple[int, ...]:
  """LAM / OC+LAM's scene codebook: 4 levels per agent, capped at 4 agents (256 codes).

  4^n covers every joint action of n agents up to 4 agents; beyond that the codebook
  stays at 256 codes (4^16 codes for 16 agents would not train), as documented in
  experiments/README.md.
  """
  return (ACTIONS_PER_AGENT,) * max(1, min(num_agents, MAX_SCENE_FACTORS))


def tokenizer_config(setting: Setting, num_agents: int, data_dir: str,
                     steps_scale: float = 1.0) -> ConfigDict:
  """The tokenizer stage's config for `num_agents`' dataset (seed 0)."""
  config = multigrid_config.get_config("tokenizer")
  _update(config, setting.common, f"setting {setting.name}")
  _update(config, setting.tokenizer, f"setting {setting.name} (tokenizer)")
  config.stage = "tokenizer"
  config.data.window_length = 1
  config.data.dir = os.path.abspath(data_dir)
  config.data.generate.num_agents = num_agents
  config.num_train_steps = _scaled(config.num_train_steps, steps_scale)
  return config


def lam_config(setting: Setting, variant: str, num_agents: int, seed: int, data_dir: str,
               tokenizer_dir: str, steps_scale: float = 1.0,
               overrides: Optional[Dict[str, Any]] = None) -> ConfigDict:
  """A latent action stage config: variant of configs/multigrid.py, setting, overrides.

  K (lam.num_slots) is the number of agents for the slot variants (Table 2: one factor
  per moving entity); LAM's scene codebook is `scene_action_levels(num_agents)`.
  """
  config = multigrid_config.get_config(variant)
  _update(config, setting.common, f"setting {setting.name}")
  _update(config, setting.lam, f"setting {setting.name} (lam)")
  config.stage = "lam"
  config.seed = seed
  config.data.dir = os.path.abspath(data_dir)
  config.data.generate.num_agents = num_agents
  config.lam.tokenizer_checkpoint = os.path.join(os.path.abspath(tokenizer_dir), "tokenizer")
  config.lam.num_slots = num_agents
  config.lam.scene_action_levels = scene_action_levels(num_agents)
  _update(config, overrides or {}, f"overrides of {variant}")
  config.num_train_steps = _scaled(config.num_train_steps, steps_scale)
  return config


# ---- Runs. ----
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
    self._train(config, workdir, "tokenizer", f"tokenizer ({num_agents} agents)",
                f"tokenizer_{num_agents}a")
    self._tokenizers_ready.add(num_agents)
    return workdir

  def _train(self, config: ConfigDict, workdir: str, stage: str, what: str, key: str) -> None:
    done = latest_step(os.path.join(workdir, stage, "checkpoints"))
    if done is not None and done >= config.num_train_steps:
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
    _release_memory()
    if summary.get("preempted"):
      print(f"[{self.name}] preempted during {what}; re-run the same command to resume.",
            flush=True)
      sys.exit(143)
    _write_json(os.path.join(workdir, stage, "experiment_run.json"),
                dict(seconds=seconds, steps=int(config.num_train_steps),
                     resumed_from=done, devices=hardware()))

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
      key = dict(workdirs=workdirs, steps=steps, settings=settings,
                 metrics=list(evaluator.PER_STEP_KEYS))
      cache = os.path.join(self.runs_dir, "evals", f"{group}.json")
      cached = _read_json(cache)
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
      _write_json(cache, dict(key=key, metrics=metrics))
      out[group] = metrics
      _release_memory()
    return out

  def run_all(self, runs: Sequence[Run]) -> Dict[str, List[Dict[str, Any]]]:
    """Trains every run (in order, skipping finished ones), then evaluates them."""
    start = time.time()
    for i, run in enumerate(runs):
      print(f"[{self.name}] run {i + 1}/{len(runs)}: {run.group} seed {run.seed}", flush=True)
      self.ensure_run(run)
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
    _write_json(os.path.join(self.out_dir, "results.json"), payload)
    for name in ("results.md", "results.json"):
      shutil.copyfile(os.path.join(self.out_dir, name), os.path.join(self.root, name))
    print("\n" + markdown, flush=True)
    print(f"[{self.name}] wrote {md_path} and results.json (copies in {self.root})", flush=True)
    return markdown

  def run_info(self, runs: Sequence[Run]) -> Dict[str, Any]:
    """{group/seedK: training time and steps} of every run, from experiment_run.json."""
    out = {}
    for run in runs:
      info = _read_json(os.path.join(self.workdir(run), "lam", "experiment_run.json"))
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


def latest_step(checkpoint_dir: str) -> Optional[int]:
  """The latest finalised orbax step under `checkpoint_dir` (None if there is none)."""
  if not os.path.isdir(checkpoint_dir):
    return None
  steps = [int(d) for d in os.listdir(checkpoint_dir)
           if d.isdigit() and os.path.isdir(os.path.join(checkpoint_dir, d))]
  return max(steps) if steps else None


def _release_memory() -> None:
  import jax  # pylint: disable=g-import-not-at-top
  jax.clear_caches()
  gc.collect()


def _jsonable(value) -> bool:
  try:
    json.dumps(value)
    return True
  except (TypeError, ValueError):
    return False


def _read_json(path: str) -> Optional[dict]:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _write_json(path: str, payload: Any) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, default=str)
  os.replace(tmp, path)


def hardware() -> str:
  """The devices JAX runs on, e.g. '1 x cpu (cpu)' or '8 x TPU v4 (tpu)'."""
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  return f"{len(devices)} x {', '.join(kinds)} ({devices[0].platform})"


def settings_summary(setting: Setting, steps_scale: float = 1.0) -> Dict[str, Any]:
  """The main hyperparameters of a setting (for results.md and results.json)."""
  tok = tokenizer_config(setting, setting.table1_agents, "/")
  lam = lam_config(setting, "flam", setting.table1_agents, 0, "/", "/", steps_scale)
  grid = tok.data.image_size // 2 ** len(tok.tokenizer.encoder_channels)
  return {
      "image_size": tok.data.image_size, "grid_cells": tok.data.generate.grid_size,
      "token_grid": f"{grid}x{grid}", "tokenizer_codes": int(np.prod(tok.tokenizer.levels)),
      "episodes": tok.data.generate.episodes,
      "episode_length": tok.data.generate.episode_length,
      "tokenizer_steps": _scaled(tok.num_train_steps, steps_scale),
      "tokenizer_batch": tok.batch_size, "lam_steps": lam.num_train_steps,
      "lam_batch": lam.batch_size, "d_model": lam.lam.d_model, "blocks": lam.lam.num_blocks,
      "window_length": lam.data.window_length, "prediction_steps": lam.lam.prediction_steps,
      "action_levels": list(lam.lam.action_levels), "eval": dict(setting.eval),
  }


# ---- Aggregation and tables. ----
def metric_value(metrics: Dict[str, Any], key: str) -> Optional[float]:
  """A scalar metric; `name@t` picks step t (1-based, or `P` for the last) of a per-step key."""
  if "@" in key:
    name, t = key.split("@")
    values = metrics.get(name)
    if values is None:
      return None
    return float(values[-1] if t == "P" else values[int(t) - 1])
  value = metrics.get(key)
  return None if value is None else float(value)


def mean_std(values: Sequence[Optional[float]]) -> Tuple[Optional[float], Optional[float], int]:
  """(mean, sample std (0 for one seed), n) over the non-missing values."""
  values = [v for v in values if v is not None and np.isfinite(v)]
  if not values:
    return None, None, 0
  std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return float(np.mean(values)), std, len(values)


def aggregate(per_seed: Sequence[Dict[str, Any]], keys: Sequence[str]) -> Dict[str, Dict[str, Any]]:
  """{key: dict(mean, std, n, values)} over the seeds' metric dicts."""
  out = {}
  for key in keys:
    values = [metric_value(m, key) for m in per_seed]
    mean, std, n = mean_std(values)
    out[key] = dict(mean=mean, std=std, n=n, values=values)
  return out


def fmt(stat: Optional[Dict[str, Any]], digits: int = 2) -> str:
  """'31.04 ± 0.52' (or '31.04' for one seed, 'n/a' when missing)."""
  if not stat or stat.get("mean") is None:
    return "n/a"
  if stat["n"] > 1:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
  return f"{stat['mean']:.{digits}f}"


def fmt_paper(value: Optional[float]) -> str:
  return "–" if value is None else f"{value:.2f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def config_table(stats: Dict[str, Dict[str, Any]], titles: Dict[str, str],
                 columns: Sequence[Tuple[str, str]], digits: int = 2) -> str:
  """A markdown table with one row per config (`titles`) and one column per metric."""
  rows = [[titles[label]] + [fmt(stats[label][key], digits) for key, _ in columns]
          for label in titles]
  return markdown_table(["config"] + [name for _, name in columns], rows)


def header_lines(title: str, experiment: Experiment, seeds: Sequence[int]) -> List[str]:
  """The preamble of results.md: what, where, how many seeds, the setting."""
  s = settings_summary(experiment.setting, experiment.steps_scale)
  return [
      f"# {title}", "",
      f"- setting: `{experiment.setting.name}` (steps x{experiment.steps_scale:g}); seeds "
      f"{', '.join(map(str, seeds))}; mean ± sample std over seeds",
      f"- hardware: {hardware()}",
      f"- data: Multigrid {s['grid_cells']}x{s['grid_cells']} cells at {s['image_size']} px, "
      f"{s['episodes']} episodes of {s['episode_length']} frames (80/10/10 split), "
      "metrics on the test split",
      f"- tokenizer: {s['token_grid']} tokens, {s['tokenizer_codes']} FSQ codes, "
      f"{s['tokenizer_steps']} steps (batch {s['tokenizer_batch']}), one per dataset",
      f"- world models: d_model {s['d_model']}, {s['blocks']} block(s), "
      f"{s['window_length']}-frame windows, {s['prediction_steps']} prediction steps, "
      f"{s['lam_steps']} steps (batch {s['lam_batch']}); FLAM: K = number of agents, "
      f"action FSQ levels {s['action_levels']}",
      f"- runs: {experiment.runs_dir}",
      f"- wall time of this invocation: {experiment.timings.get('total', 0.0):.0f} s "
      "(finished runs are skipped)", "",
  ]


# ---- Plots (PIL; matplotlib is not a dependency). ----
_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75)]
Series = Tuple[str, Sequence[Optional[float]], Sequence[Optional[float]]]  # name, means, stds


def _font(size: int = 14):
  from PIL import ImageFont  # pylint: disable=g-import-not-at-top
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1.
    return ImageFont.load_default()


def _ascii(text: str) -> str:
  """PIL's default font has no Greek: 'Δ PSNR' -> 'Delta PSNR'."""
  return text.replace("Δ", "Delta").replace("−", "-").replace("±", "+-")


def _text(draw, xy, text: str, size: int = 13, **kwargs) -> None:
  draw.text(xy, _ascii(text), fill="black", font=_font(size), **kwargs)


def _lighter(color, amount: float = 0.55):
  return tuple(int(c + (255 - c) * amount) for c in color)


def _ticks(lo: float, hi: float, target: int = 5) -> List[float]:
  """Round tick values (1, 2 or 5 x 10^k apart) covering [lo, hi]."""
  raw = (hi - lo) / target
  magnitude = 10 ** np.floor(np.log10(raw))
  step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
  first = np.ceil(lo / step) * step
  return [float(v) for v in np.arange(first, hi + step * 1e-6, step)]


def _values(series: Sequence[Series]) -> List[float]:
  out = []
  for _, means, stds in series:
    for m, sd in zip(means, stds):
      if m is not None:
        out += [m - (sd or 0.0), m + (sd or 0.0)]
  return out


def _axes(values: Sequence[float], title: str, ylabel: str, width: int, height: int):
  """Canvas, drawing context, plot box and a value -> y mapping (the range includes 0)."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  lo, hi = min(list(values) + [0.0]), max(list(values) + [0.0])
  if hi - lo < 1e-9:
    hi = lo + 1.0
  pad = 0.08 * (hi - lo)
  lo, hi = (lo - pad if lo < 0 else lo), hi + pad
  image = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(image)
  left, right, top, bottom = 70, width - 20, 45, height - 80
  _text(draw, (width // 2, 12), title, 16, anchor="mt")
  _text(draw, (8, top - 28), ylabel)
  to_y = lambda v: bottom - (v - lo) / (hi - lo) * (bottom - top)
  for v in _ticks(lo, hi):
    y = to_y(v)
    draw.line([(left, y), (right, y)], fill=(225, 225, 225))
    _text(draw, (left - 6, y), f"{v:g}" if abs(v) > 1e-9 else "0", 12, anchor="rm")
  draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
  draw.line([(left, to_y(0.0)), (right, to_y(0.0))], fill=(120, 120, 120))
  return image, draw, (left, right, top, bottom), to_y


def bar_plot(path: str, title: str, ylabel: str, categories: Sequence[str],
             series: Sequence[Series], width: int = 720, height: int = 420) -> Optional[str]:
  """Grouped bars (one group per category, one bar per series) with +-std error bars."""
  values = _values(series)
  if not values:
    return None
  image, draw, (left, right, _, bottom), to_y = _axes(values, title, ylabel, width, height)
  group_w = (right - left) / len(categories)
  bar_w = group_w * 0.8 / len(series)
  for g, category in enumerate(categories):
    x0 = left + g * group_w + group_w * 0.1
    _text(draw, (left + (g + 0.5) * group_w, bottom + 8), category, anchor="mt")
    for s, (_, means, stds) in enumerate(series):
      m, sd = means[g], stds[g]
      if m is None:
        continue
      xa, xb = x0 + s * bar_w, x0 + (s + 1) * bar_w - 2
      draw.rectangle([xa, min(to_y(0.0), to_y(m)), xb, max(to_y(0.0), to_y(m))],
                     fill=_COLORS[s % len(_COLORS)])
      if sd:
        xc = (xa + xb) / 2
        draw.line([(xc, to_y(m - sd)), (xc, to_y(m + sd))], fill="black", width=2)
  _legend(draw, [(name, _COLORS[s % len(_COLORS)]) for s, (name, _, _) in enumerate(series)],
          left, height - 30)
  return _save(image, path)


def line_plot(path: str, title: str, xlabel: str, ylabel: str, xs: Sequence[float],
              series: Sequence[Series], references: Optional[Sequence[Sequence[Optional[float]]]] = None,
              reference_name: str = "paper", width: int = 720, height: int = 420) -> Optional[str]:
  """One line per series (+-std bars) over categorical x positions (e.g. 1, 2, 4, 8, 16).

  `references[s]` (e.g. the paper's numbers for series s) is drawn thin in a lighter
  shade of the same colour.
  """
  references = references or [None] * len(series)
  refs = [(name, ref, [None] * len(ref)) for (name, _, _), ref in zip(series, references) if ref]
  values = _values(series) + _values(refs)
  if not values:
    return None
  image, draw, (left, right, _, bottom), to_y = _axes(values, title, ylabel, width, height)
  step = (right - left) / max(len(xs), 1)
  to_x = lambda i: left + (i + 0.5) * step
  for i, x in enumerate(xs):
    _text(draw, (to_x(i), bottom + 8), f"{x:g}", anchor="mt")
  _text(draw, ((left + right) / 2, bottom + 28), xlabel, anchor="mt")
  for s, ((_, means, stds), ref) in enumerate(zip(series, references)):
    color = _COLORS[s % len(_COLORS)]
    for values_, line_color, line_width in ((ref, _lighter(color), 2), (means, color, 3)):
      if not values_:
        continue
      points = [(to_x(i), to_y(m)) for i, m in enumerate(values_) if m is not None]
      if len(points) > 1:
        draw.line(points, fill=line_color, width=line_width)
      for x, y in points:
        r = 3 if values_ is ref else 4
        draw.ellipse([x - r, y - r, x + r, y + r], fill=line_color)
    for i, (m, sd) in enumerate(zip(means, stds)):
      if m is not None and sd:
        draw.line([(to_x(i), to_y(m - sd)), (to_x(i), to_y(m + sd))], fill=color, width=1)
  entries = [(name, _COLORS[s % len(_COLORS)]) for s, (name, _, _) in enumerate(series)]
  if refs:
    entries.append((f"lighter: {reference_name}", _lighter((90, 90, 90))))
  _legend(draw, entries, left, height - 30)
  return _save(image, path)


def _legend(draw, entries: Sequence[Tuple[str, Tuple[int, int, int]]], x: float, y: float) -> None:
  for name, color in entries:
    draw.rectangle([x, y, x + 12, y + 12], fill=color)
    _text(draw, (x + 16, y), name)
    x += 28 + draw.textlength(_ascii(name), font=_font(13))


def _save(image, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.png"
  image.save(tmp)
  os.replace(tmp, path)
  return path


# ---- Flags and main. ----
def define_flags(default_root: str) -> None:
  """The flags every experiment script takes."""
  flags.DEFINE_enum("setting", "small", list(SETTINGS),
                    "tiny (tests), small (CPU, tens of minutes) or paper (Table 4, GPU/TPU).")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every configuration.")
  flags.DEFINE_string("root", default_root, "Folder of the workdirs and the results.")
  flags.DEFINE_string("runs_root", "", "Folder of the datasets, tokenizers and runs if not "
                      "--root; point several scripts at one to share runs (e.g. results/runs).")
  flags.DEFINE_float("steps_scale", 1.0, "Multiplies every stage's training steps.")
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


def experiment_from_flags(name: str) -> Tuple[Experiment, List[int]]:
  f = flags.FLAGS
  if f.steps_scale <= 0:
    raise ConfigError(f"--steps_scale={f.steps_scale} must be positive")
  experiment = Experiment(name, get_setting(f.setting), f.root, f.steps_scale, f.runs_root,
                          f.compilation_cache)
  return experiment, parse_seeds(f.seeds)


def script_main(name: str, make_runs: Callable[[Experiment, List[int]], List[Run]],
                report: Callable[..., str]) -> Callable[[Sequence[str]], None]:
  """The absl `main` of an experiment script: train and evaluate `make_runs`, then `report`.

  `report(experiment, runs, metrics, seeds)` writes the results. Logs are quiet and the
  mistakes a user can make end in a one-line error (exit status 2).
  """
  def main(argv: Sequence[str]) -> None:
    del argv
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # Orbax and grain are chatty at INFO.
    try:
      experiment, seeds = experiment_from_flags(name)
      runs = make_runs(experiment, seeds)
      metrics = experiment.run_all(runs)
      report(experiment, runs, metrics, seeds)
    except FlamError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(2)
  return main


# ---- Claims. ----
def compare(claim: str, better: Optional[Dict[str, Any]], worse: Optional[Dict[str, Any]],
            digits: int = 2) -> List[str]:
  """A row [claim, ours, verdict]: does `better`'s mean exceed `worse`'s, beyond noise?

  'within noise' when the gap is smaller than the two seed stds combined
  (sqrt(s1^2 + s2^2)); with one seed there is no noise estimate ('one seed').
  """
  if not better or not worse or better.get("mean") is None or worse.get("mean") is None:
    return [claim, "n/a", "not measured"]
  gap = better["mean"] - worse["mean"]
  noise = float(np.hypot(better["std"] or 0.0, worse["std"] or 0.0))
  ours = f"{better['mean']:.{digits}f} vs {worse['mean']:.{digits}f} (gap {gap:+.{digits}f})"
  one_seed = min(better["n"], worse["n"]) < 2
  if gap <= 0:
    verdict = "does not hold"
  elif one_seed:
    verdict = "holds (one seed: no noise estimate)"
  elif gap < noise:
    verdict = "holds, within noise"
  else:
    verdict = "holds"
  return [claim, ours, verdict]

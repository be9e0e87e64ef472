"""Policy learning from action-free demonstrations (Sec 4.3, Eq. 6): the goal task, Procgen.

    python experiments/policy.py --setting=tiny  --seeds=0          # smoke (tests), minutes
    python experiments/policy.py --setting=small --seeds=0,1,2      # CPU, hours
    python experiments/policy.py --setting=cpu_long --distractors=4 --labels=1000 --seeds=0
                                 # world models as long as Table 1's cpu_long (hours on 2 cores)
    python experiments/policy.py --setting=paper --seeds=0,1,2      # GPU/TPU
    # --only=labelled,flam_v2,lam: only these policies (and the world models they need),
    # each evaluation printed and no report; a later run without --only reports them all.
    python experiments/policy.py --setting=cpu --procgen=bigfish --labels=1000,10000 --seeds=0
                                 # Procgen's planner demonstrations instead (below)

For each number of distractors: expert demonstrations of the goal task
(`flam_jax.data.goal_task`), one tokenizer, LAM and FLAM per seed trained on the
demonstration videos (no actions), then per seed and number of labels L the policy
stage in four modes: behaviour cloning on the true actions of every demonstration
(upper bound), on the L labelled transitions only, and on pseudo-labels f(a) of LAM's
and FLAM's latent actions (f fitted on the same L labelled transitions). Each policy
is evaluated greedily in the live environment on the same seeded episodes, beside the
expert and a random policy. Writes <root>/<setting>/results.md and results.json
(success rate and return, mean +- std over seeds) and one curve of success rate
against labels per number of distractors. Finished runs and evaluations are skipped;
every evaluation is also kept in <root>/<setting>/evaluations/, which a run on another
machine reuses for the same config (so seeds run apart join one report).

With --procgen=GAME the demonstrations are the Procgen planner's on levels 0.. of that game
(`flam_jax.data.procgen --demonstrations`; one actor, so no distractors), the world models
are Table 1's Procgen ones (experiments/table1_procgen.py: K slots, [2, 2, 2, 2] codebooks),
the policies are scored by mean return on held-out levels beside the planner and a random
policy, and the report (<root>/GAME/<setting>/) sets the later version's returns beside.
"""

import dataclasses
import json
import os
import sys
import time
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=g-import-not-at-top
from ml_collections import ConfigDict  # pylint: disable=g-import-not-at-top

from experiments import common, runner, settings, table1_procgen
from experiments import plots as plots_lib
from experiments import report as report_lib
from flam_jax import filesystem
from flam_jax.lib import config_utils
from flam_jax.stages.lam import LatentActionStage
from flam_jax.stages.policy import PolicyStage

flags.DEFINE_list("distractors", [], "Numbers of distractors (default: the setting's).")
flags.DEFINE_list("labels", [], "Numbers of labelled transitions (default: the setting's).")
flags.DEFINE_enum("procgen", "", ["", "bigfish", "starpilot"], "A Procgen game: its "
                  "planner's demonstrations instead of the goal task's (see the docstring).")
common.define_flags("results/policy")

MODES = (  # (label, policy.mode, world model variant or None, title)
    ("true_actions", "true_actions", None, "BC, true actions of all demos (upper bound)"),
    ("labelled", "labelled", None, "BC, labelled transitions only"),
    # The later version first: of the world models it is the one that uses its actions
    # most at the cpu_long setting (experiments/README.md, Table 1), so a partial run of
    # this script (it resumes where it stopped) has its result before the others'.
    ("flam_v2", "pseudo_labels", "flam_v2", "BC, FLAM (later version) pseudo-labels"),
    ("lam", "pseudo_labels", "lam", "BC, LAM pseudo-labels"),
    ("flam", "pseudo_labels", "flam", "BC, FLAM pseudo-labels"),
    # A reference, not a method: f reads the slot that the true entity masks match to
    # agent 0, so the row says what a perfect choice of slot would give.
    ("flam_v2_matched_slot", "pseudo_labels", "flam_v2",
     "BC, FLAM (later version) pseudo-labels, f given agent 0's slot (reference)"),
)
MODE_POLICY = {"flam_v2_matched_slot": dict(decoder_slots="matched_by_masks")}
MODE_TITLES = dict(settings.VARIANT_TITLES,
                   flam_v2_matched_slot=f"{settings.VARIANT_TITLES['flam_v2']}, agent 0's slot")
LATENT_MODES = tuple(m[0] for m in MODES if m[2])
# Without entity masks (Procgen) no slot is matched to the controlled agent.
MODES_WITHOUT_MASKS = tuple(m for m in MODES if m[0] not in MODE_POLICY)
LABELLING_KEYS = ("pseudo_label_accuracy", "controlled_agent_bound_fraction")
# mean_return_in_horizon: Procgen's episodes cut at the demonstrations' length.
KEYS = ("success_rate", "mean_return", "mean_return_in_horizon") + LABELLING_KEYS


@dataclasses.dataclass(frozen=True)
class PolicySetting:
  """The goal task and policy stage of one setting (world models: settings.Setting)."""

  image_size: int
  grid_size: int
  max_steps: int
  episodes: int
  distractors: tuple
  labels: tuple
  policy: dict  # config.policy keys.
  steps: int
  batch_size: int


POLICY_SETTINGS = {
    # 128 px, 16x16 cells (8 px each), 5000 demonstrations of up to 31 steps.
    "paper": PolicySetting(128, 16, 31, 5000, (0, 2, 4), (100, 1000, 10000),
                           dict(eval_episodes=500), 10000, 64),
    # 32 px, 8x8 cells (4 px each, one token a cell), 2000 demonstrations of up to 15 steps.
    # pi_u trains 10000 steps: at 1000 (the first choice) BC on the true actions of all
    # ~9800 train transitions fitted 72% of them and reached the goal in 16% of the episodes
    # (cpu_long, 4 distractors, seed 0), against 100% and 51% at 10000 steps (~2 minutes).
    "small": PolicySetting(32, 8, 15, 2000, (0, 2, 4), (100, 300, 1000),
                           dict(eval_episodes=100, channels=(32, 32), hidden=64), 10000, 64),
    # Table 1's cpu / cpu_long world models (64 px, 8x8 cells of 8 px, one token a cell,
    # world models of d_model 64 for 6000 steps; cpu_long 9000, what FLAM needed with 4
    # agents before grid positions) on 2000 demonstrations of up to 15 steps.
    "cpu": PolicySetting(64, 8, 15, 2000, (0, 2, 4), (100, 300, 1000),
                         dict(eval_episodes=100, channels=(32, 32), hidden=64), 10000, 64),
    # cpu_long's kept evaluations (results/policy/cpu_long) were made with f fitted to the
    # end, before early stopping; it keeps that, so its report rebuilds from them.
    "cpu_long": PolicySetting(64, 8, 15, 2000, (0, 2, 4), (100, 300, 1000),
                              dict(eval_episodes=100, channels=(32, 32), hidden=64,
                                   decoder_validation_fraction=0.0), 10000, 64),
    # Test-only: 24 px, 6x6 cells, 16 demonstrations.
    "tiny": PolicySetting(24, 6, 7, 16, (0, 2), (5, 10),
                          dict(eval_episodes=4, decoder_steps=20, channels=(8,), hidden=16), 3, 4),
}


class PolicyExperiment(runner.Experiment):
  """runner.Experiment on goal-task demonstrations instead of random Multigrid."""

  modes = MODES  # The policies of the grid.
  metric = "success_rate"  # What the report's tables and claims compare.

  def __init__(self, policy_setting: PolicySetting, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.task_setting = policy_setting
    ps = policy_setting
    world = {"data.image_size": ps.image_size, "data.generate.grid_size": ps.grid_size,
             "data.generate.episodes": ps.episodes,
             "data.generate.episode_length": ps.max_steps + 1, "data.generate.wall_density": 0.0}
    self.setting = dataclasses.replace(self.setting, common=dict(self.setting.common, **world))

  def config(self, run: runner.Run):
    config = super().config(run)
    if config.lam.variant == "flam":
      # One slot per agent, the floor's and the goal cell's: with agents + 1 (Table 1's K)
      # the later version bound agent 0 in 36% of the transitions against 45% with agents
      # + 2, and its training prediction loss was twice as high (cpu_long, seed 0,
      # experiments/README.md).
      config.lam.num_slots = run.num_agents + 2
    return config

  def data_dir(self, num_agents: int) -> str:
    return os.path.join(self.runs_dir, f"goal_data_{num_agents}a")

  def tokenizer_dir(self, num_agents: int) -> str:
    return os.path.join(self.runs_dir, f"goal_tokenizer_{num_agents}a")

  def workdir(self, run: runner.Run) -> str:
    return os.path.join(self.runs_dir, f"goal_{run.group}", f"seed{run.seed}")

  def task(self, num_agents: int):
    from flam_jax.data import goal_task  # pylint: disable=g-import-not-at-top
    ps = self.task_setting
    return goal_task.GoalTaskConfig(grid_size=ps.grid_size, resolution=ps.image_size,
                                    num_distractors=num_agents - 1, max_steps=ps.max_steps)

  def ensure_data(self, num_agents: int) -> str:
    """Expert demonstrations of the goal task with num_agents - 1 distractors."""
    from flam_jax.data import goal_task, records  # pylint: disable=g-import-not-at-top
    out = self.data_dir(num_agents)
    if os.path.exists(os.path.join(out, records.METADATA_FILE)):
      return out
    print(f"[{self.name}] writing {self.task_setting.episodes} demonstrations with "
          f"{num_agents - 1} distractor(s) into {out}", flush=True)
    start = time.time()
    goal_task.write_dataset(out, self.task(num_agents), self.task_setting.episodes, seed=0,
                            progress=self.setting.name != "tiny")
    self.timings[f"goal_data_{num_agents}a"] = time.time() - start
    return out

  def policy_folder(self, num_agents: int) -> str:
    return os.path.join(self.runs_dir, f"goal_policy_{num_agents}a")

  def policy_workdir(self, num_agents: int, mode: str, labels: int, seed: int) -> str:
    return os.path.join(self.policy_folder(num_agents), _policy_tag(mode, labels), f"seed{seed}")

  def policy_config(self, num_agents: int, mode_label: str, labels: int, seed: int):
    """(config of the policy stage, its world model's Run or None for the BC baselines)."""
    _, mode, variant, _ = next(m for m in MODES if m[0] == mode_label)
    ps = self.task_setting
    lam_run = runner.Run(label=variant or "flam", variant=variant or "flam",
                         num_agents=num_agents, seed=seed)
    config = self.config(lam_run)
    config.stage = "policy"
    config.policy.update(dict(ps.policy, mode=mode, num_labels=0 if mode == "true_actions" else labels,
                              lam_workdir=self.workdir(lam_run) if variant else "",
                              **MODE_POLICY.get(mode_label, {})))
    steps = settings.scaled(ps.steps, self.steps_scale)
    for node in (config, config.per_stage.policy):
      node.num_train_steps, node.batch_size = steps, ps.batch_size
    config.checkpoint_every_steps = max(1, steps // 4)
    return config, (lam_run if variant else None)

  def policy(self, num_agents: int, mode_label: str, labels: int, seed: int,
             eval_max_steps: int = 0) -> dict:
    """Trains (unless finished) and evaluates one policy (its episodes cut at eval_max_steps
    when > 0); returns the evaluation, also stored beside the report."""
    from flam_jax.stages import policy as policy_stage  # pylint: disable=g-import-not-at-top
    config, lam_run = self.policy_config(num_agents, mode_label, labels, seed)
    if eval_max_steps:
      config.policy.eval_max_steps = eval_max_steps
    mode, steps = config.policy.mode, config.num_train_steps
    workdir = self.policy_workdir(num_agents, mode_label, labels, seed)
    path = os.path.join(workdir, "policy", policy_stage.evaluation_filename(config.policy))
    stored_path = self.stored_evaluation_path(num_agents, mode_label, labels, seed)
    if eval_max_steps:
      stored_path = stored_path.replace(".json", f"_{eval_max_steps}_steps.json")
    identity = _config_identity(config)
    evaluation = filesystem.read_json(path)
    if evaluation and evaluation["key"]["step"] >= steps:
      _check_trained_as(config, workdir)
      filesystem.write_json(stored_path, _stored(identity, evaluation), default=str)
      return evaluation
    stored = filesystem.read_json(stored_path)
    if (stored and _without_machine_keys(stored.get("config", {})) == identity
        and stored["evaluation"]["key"]["step"] >= steps):
      print(f"[{self.name}] policy {mode_label}, {num_agents - 1} distractors, {labels} labels, "
            f"seed {seed}: evaluation stored in {stored_path}", flush=True)
      return stored["evaluation"]
    if lam_run:
      self.ensure_run(lam_run)
    else:
      self.ensure_tokenizer(num_agents)
    labelled = "every transition labelled" if mode == "true_actions" else f"{labels} labels"
    print(f"[{self.name}] policy {mode_label}, {labelled}, {num_agents - 1} distractors, "
          f"seed {seed} in {workdir}", flush=True)
    from flam_jax import train  # pylint: disable=g-import-not-at-top
    start = time.time()
    summary = train.run(config, workdir)
    self.timings[os.path.relpath(workdir, self.runs_dir)] = time.time() - start
    runner.release_memory()
    if summary.get("preempted"):
      sys.exit(143)
    filesystem.write_json(stored_path, _stored(identity, summary["evaluation"]), default=str)
    return summary["evaluation"]

  def stored_evaluation_path(self, num_agents: int, mode: str, labels: int, seed: int) -> str:
    """Where each evaluation is kept beside the report (see `_config_identity`)."""
    return os.path.join(self.out_dir, "evaluations",
                        f"{num_agents - 1}d_{_policy_tag(mode, labels)}_seed{seed}.json")


@dataclasses.dataclass(frozen=True)
class ProcgenPolicySetting:
  """The planner's demonstrations of one setting and the policy stage on them."""

  episodes: int  # Levels 0..episodes-1, one demonstration each.
  episode_length: int  # Frames per demonstration (padded after a level's early end).
  plan_horizon: int  # The planner's lookahead (flam_jax/data/procgen_worker.py).
  eval_max_steps: int  # Steps an evaluation episode may last (Procgen's own limit: 1000).
  num_slots: int  # FLAM's K (Table 1's Procgen row at this setting).
  labels: tuple
  policy: dict  # config.policy keys.
  steps: int
  batch_size: int


PROCGEN_POLICY_SETTINGS = {
    # 64 px (Procgen's observations; the cpu setting's 8 x 8 tokens), 300 demonstrations
    # of 64 frames (~15k train transitions), K = 8 as in Table 1's Procgen row.
    "cpu": ProcgenPolicySetting(300, 64, 10, 1000, 8, (100, 1000, 10000),
                                dict(eval_episodes=100, channels=(32, 32), hidden=64), 10000, 64),
    # Test-only: 4 demonstrations of 6 frames, 2 evaluation episodes of at most 8 steps.
    "tiny": ProcgenPolicySetting(4, 6, 2, 8, 3, (5,), dict(eval_episodes=2, decoder_steps=20,
                                                        channels=(8,), hidden=16), 3, 4),
}
# The later version (shared/seeds/flam-summary.txt): mean return of BC from pseudo-labels.
LATER_VERSION_RETURNS = {"bigfish": {1000: 1.8, 10000: 8.8}, "starpilot": {1000: 1.8, 10000: 9.1}}
PROCGEN_IMAGE_SIZE = 64  # The planner's frames (the worker's observations).


class ProcgenPolicyExperiment(PolicyExperiment):
  """PolicyExperiment on the Procgen planner's demonstrations of one game (one actor:
  num_agents is 1, "0 distractors"); policies scored by mean return on held-out levels."""

  modes = MODES_WITHOUT_MASKS
  metric = "mean_return"

  def __init__(self, game: str, policy_setting: ProcgenPolicySetting, name, setting, root: str,
               *args, **kwargs):
    runner.Experiment.__init__(self, name, setting, os.path.join(root, game), *args, **kwargs)
    self.game, self.task_setting = game, policy_setting
    self.setting = dataclasses.replace(self.setting, common=dict(
        self.setting.common, **{"data.image_size": PROCGEN_IMAGE_SIZE}))

  def config(self, run: runner.Run):
    return table1_procgen.procgen_world_model(runner.Experiment.config(self, run),
                                              self.task_setting.num_slots)

  def data_dir(self, num_agents: int) -> str:
    return os.path.join(self.runs_dir, f"demos_{self.game}")

  def tokenizer_dir(self, num_agents: int) -> str:
    return os.path.join(self.runs_dir, f"demos_tokenizer_{self.game}")

  def workdir(self, run: runner.Run) -> str:
    return os.path.join(self.runs_dir, f"demos_{self.game}_{run.label}", f"seed{run.seed}")

  def policy_folder(self, num_agents: int) -> str:
    return os.path.join(self.runs_dir, f"demos_{self.game}_policy")

  def policy(self, num_agents: int, mode_label: str, labels: int, seed: int) -> dict:
    """PolicyExperiment.policy's evaluation (whole episodes) with "horizon": the same pi_u,
    planner and random policy on the same levels cut at the demonstrations' length (the
    part of a level the demonstrations show; stored beside the other)."""
    evaluation = super().policy(num_agents, mode_label, labels, seed)
    return dict(evaluation, horizon=super().policy(
        num_agents, mode_label, labels, seed, eval_max_steps=self.task_setting.episode_length - 1))

  def ensure_data(self, num_agents: int) -> str:
    """The planner's demonstrations (resumed where a killed run stopped)."""
    from flam_jax.data import procgen  # pylint: disable=g-import-not-at-top
    out, ps = self.data_dir(num_agents), self.task_setting
    start = time.time()
    procgen.write_demonstrations(self.game, ps.episodes, out, episode_length=ps.episode_length,
                                 plan_horizon=ps.plan_horizon, eval_max_steps=ps.eval_max_steps,
                                 progress=self.setting.name != "tiny")
    self.timings[f"demos_{self.game}"] = time.time() - start
    return out


def _policy_tag(mode: str, labels: int) -> str:
  """A policy's folder / file tag: true_actions uses every label, whatever the count."""
  return mode if mode == "true_actions" else f"{mode}_{labels}"


# Config entries that name places on one machine or say how a step runs (the latent action
# stage's checkpoint_ignored_keys: remat), not what was trained.
_MACHINE_KEYS = ("data.dir", "lam.token_cache_dir", "lam.tokenizer_checkpoint",
                 "policy.lam_workdir", "progress_bar") + LatentActionStage.checkpoint_ignored_keys


# Keys added after some runs were saved, with the value those runs had.
_KEY_DEFAULTS = {**LatentActionStage.checkpoint_key_defaults,
                 **PolicyStage.checkpoint_key_defaults}


# policy.mode values of the behaviour-cloning baselines (no world model, so no decoder f).
_MODES_WITHOUT_DECODER = tuple(m[1] for m in MODES if m[2] is None)


def _config_identity(config) -> dict:
  """The policy run's config without its paths and remat: what a stored evaluation must match.

  Every evaluation is also stored under <root>/<setting>/evaluations/ with this identity,
  so seeds run on different machines (or in sessions whose run folders are gone) join
  one report when their evaluations are copied into one results folder: a policy whose
  workdir has no evaluation takes the stored one if the config matches, else it trains.
  """
  return _without_machine_keys(json.loads(json.dumps(config.to_dict(), default=str)))


def _check_trained_as(config, workdir: str) -> None:
  """Raises CheckpointError (one line) where the finished policy in `workdir` was trained
  with another config than `config` (its identity), world model keys (lam.*) included:
  the policy stage's own checkpoint keys leave those out, so a policy fitted to the latent
  actions of a world model since retrained would otherwise be reported as current. The
  evaluation-only keys (episodes, levels, step limit) may differ: they train nothing."""
  from flam_jax.lib import checkpointing  # pylint: disable=g-import-not-at-top
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "policy", "checkpoints"),
                                    async_save=False)
  try:
    saved = _without_machine_keys(ckpt.restore_config())
  finally:
    ckpt.close()
  current = _config_identity(config_utils.stage_config(config, "policy"))
  checkpointing.check_compatible(
      saved, ConfigDict(current), sorted(set(saved) | set(current)), ckpt.directory,
      ignored=PolicyStage.checkpoint_ignored_keys, defaults=_KEY_DEFAULTS, fix=f"delete {workdir} (and its world model if the key is lam.*) "
      "to train it again, or pass another --runs_root")


def _stored(identity: dict, evaluation: dict) -> dict:
  """What <root>/<setting>/evaluations/ keeps: the config identity, the evaluation and the
  device it was trained on (seeds of one report may come from different machines)."""
  return dict(config=identity, evaluation=evaluation, device=runner.hardware())


def _without_machine_keys(flat: dict) -> dict:
  """A copy of a config dict without _MACHINE_KEYS, without the keys added since some
  evaluations were stored where they hold the value those runs had (the stages'
  checkpoint_key_defaults), and, for the modes that fit no f (behaviour cloning on true
  actions), without f's settings (policy.decoder_*) and the world model's (lam.*; they
  train on the tokenizer's tokens only): older stored identities still match."""
  flat = json.loads(json.dumps(flat))
  defaults = _KEY_DEFAULTS
  for dotted in _MACHINE_KEYS + tuple(defaults):
    *parents, leaf = dotted.split(".")
    node = flat
    for key in parents:
      node = node.get(key, {})
    if dotted not in defaults or node.get(leaf) == defaults[dotted]:
      node.pop(leaf, None)
  policy = flat.get("policy", {})
  if policy.get("mode") in _MODES_WITHOUT_DECODER:  # Neither f nor a world model in these.
    for key in [k for k in policy if k.startswith("decoder_")]:
      policy.pop(key)
    flat.pop("lam", None)
  return flat


def _stat(evaluations, key):
  # .get: Procgen's evaluations have no success rate, the goal task's no horizon.
  if key == "mean_return_in_horizon":
    values = [e.get("horizon", {}).get("policy", {}).get("mean_return") for e in evaluations]
  else:
    values = [e["labelling" if key in LABELLING_KEYS else "policy"].get(key)
              for e in evaluations]
  mean, std, n = report_lib.mean_std(values)
  return dict(mean=mean, std=std, n=n, values=values)


def run(experiment: PolicyExperiment, seeds, distractors, labels, only=()) -> Optional[str]:
  """Every policy of the grid (or only the modes in `only`, then printed, not reported)."""
  start = time.time()
  results, references = {}, {}
  for d in distractors:
    n = d + 1
    for mode_label, _, _, _ in experiment.modes:
      if only and mode_label not in only:
        continue
      for num in ((max(labels),) if mode_label == "true_actions" else labels):
        evaluations = [experiment.policy(n, mode_label, num, s) for s in seeds]
        if only:
          for s, e in zip(seeds, evaluations):
            accuracy = e["labelling"].get("pseudo_label_accuracy")
            success = e["policy"].get("success_rate")
            print(f"[{experiment.name}] {d} distractors, {mode_label}, {num} labels, seed {s}: "
                  + (f"success {success:.2f}, " if success is not None else "") +
                  f"return {e['policy']['mean_return']:.3f}" + (
                      f" ({e['horizon']['policy']['mean_return']:.3f} in "
                      f"{e['horizon']['key']['eval_max_steps']} steps)" if "horizon" in e else "") + (
                      f", pseudo-label accuracy {accuracy:.3f}" if accuracy is not None else ""),
                  flush=True)
          continue
        results[f"{d}d/{mode_label}/{num}"] = {k: _stat(evaluations, k) for k in KEYS}
        references[f"{d}d"] = {name: evaluations[0][name] for name in ("expert", "random")}
        if "horizon" in evaluations[0]:  # Procgen: the same references in the cut episodes.
          references[f"{d}d"]["horizon"] = {name: evaluations[0]["horizon"][name]
                                            for name in ("expert", "random")}
  experiment.timings["total"] = time.time() - start
  if only:
    return None
  if isinstance(experiment, ProcgenPolicyExperiment):
    return report_procgen(experiment, seeds, labels, results, references)
  return report(experiment, seeds, distractors, labels, results, references)


def report(experiment, seeds, distractors, labels, results, references) -> str:
  from flam_jax.lib import probe  # pylint: disable=g-import-not-at-top
  ps = experiment.task_setting
  lines = report_lib.header_lines(
      "Policy learning from action-free demonstrations (Sec 4.3)", experiment, seeds,
      slots="number of agents + 2 (the floor and the goal cell)",
      data=(f"the goal task, {ps.grid_size}x{ps.grid_size} cells at {ps.image_size} px, step "
            f"limit {ps.max_steps}, {ps.episodes} expert demonstrations (80% train)"))
  lines += [
      f"- policies: {ps.steps} steps (batch {ps.batch_size}) x{experiment.steps_scale:g}, evaluated greedily "
      f"on {ps.policy.get('eval_episodes', 100)} seeded episodes", "",
      "Success rate of pi_u (mean ± std over seeds); the true-action upper bound uses every "
      "demonstration transition whatever the number of labels. 'pseudo-label acc.' is the "
      "share of demonstration transitions whose pseudo-label f(a) equals the true action; "
      f"'agent 0 bound to a slot' the share of them in which one slot covers at least "
      f"{probe.BOUND_SHARE:g} of agent 0's pixels (FLAM's f can only read what that slot holds).", ""]
  plots = []
  for d in distractors:
    ref = references[f"{d}d"]
    header = ["policy"] + [f"{num} labels" for num in labels] + ["return (max labels)"]
    rows = []
    for mode_label, _, _, title in MODES:
      nums = [max(labels)] * len(labels) if mode_label == "true_actions" else labels
      cells = [report_lib.fmt(results[f"{d}d/{mode_label}/{num}"]["success_rate"]) for num in nums]
      rows.append([title] + cells + [report_lib.fmt(
          results[f"{d}d/{mode_label}/{max(labels)}"]["mean_return"])])
    for mode_label in LATENT_MODES:
      rows.append([f"pseudo-label acc., {MODE_TITLES[mode_label]}"] + [report_lib.fmt(
          results[f"{d}d/{mode_label}/{num}"]["pseudo_label_accuracy"]) for num in labels] + [""])
    for mode_label in LATENT_MODES:
      bound = [results[f"{d}d/{mode_label}/{num}"]["controlled_agent_bound_fraction"]
               for num in labels]
      if any(stat["n"] for stat in bound):  # Slot models on data with entity masks.
        rows.append([f"agent 0 bound to a slot, {MODE_TITLES[mode_label]}"] + [
            report_lib.fmt(stat) for stat in bound] + [""])
    rows.append(["expert (reference)", f"{ref['expert']['success_rate']:.2f}"] +
                [""] * (len(labels) - 1) + [f"{ref['expert']['mean_return']:.2f}"])
    rows.append(["random (reference)", f"{ref['random']['success_rate']:.2f}"] +
                [""] * (len(labels) - 1) + [f"{ref['random']['mean_return']:.2f}"])
    lines += [f"## {d} distractor(s)", "", report_lib.markdown_table(header, rows), ""]
    series = []
    for mode_label, _, _, title in MODES:
      nums = [max(labels)] * len(labels) if mode_label == "true_actions" else labels
      stats = [results[f"{d}d/{mode_label}/{num}"]["success_rate"] for num in nums]
      series.append((title.replace("BC, ", ""), [s["mean"] for s in stats],
                     [s["std"] for s in stats]))
    plots.append((f"success rate against labels, {d} distractors", plots_lib.line_plot(
        os.path.join(experiment.out_dir, f"policy_{d}d.png"),
        f"Goal task, {d} distractors: success rate of pi_u", "labelled transitions",
        "success rate", labels, series)))
  d, num = max(distractors), 1000 if 1000 in labels else max(labels)
  get = lambda mode: results[f"{d}d/{mode}/{num if mode != 'true_actions' else max(labels)}"][
      "success_rate"]
  claims = [
      report_lib.compare(f"FLAM pseudo-labels > labelled only ({d} distractors, {num} labels)",
                     get("flam"), get("labelled")),
      report_lib.compare(f"FLAM pseudo-labels > LAM pseudo-labels ({d} distractors, {num} labels)",
                     get("flam"), get("lam")),
      report_lib.compare(f"true-action upper bound > FLAM ({d} distractors): the remaining gap",
                     get("true_actions"), get("flam")),
      report_lib.compare(f"FLAM (later version) pseudo-labels > labelled only ({d} distractors, "
                         f"{num} labels)", get("flam_v2"), get("labelled")),
      report_lib.compare(f"FLAM (later version) pseudo-labels > LAM pseudo-labels ({d} "
                         f"distractors, {num} labels)", get("flam_v2"), get("lam")),
      report_lib.compare(f"f given agent 0's slot > f attending over the slots (later version, "
                         f"{d} distractors, {num} labels): what a better choice of slot is worth",
                         get("flam_v2_matched_slot"), get("flam_v2")),
  ]
  lines += ["## Claims (issue 11)", "",
            report_lib.markdown_table(["claim", "ours (mean success rate)", "verdict"], claims), ""]
  return experiment.write(lines, dict(
      table="policy", seeds=list(seeds), distractors=list(distractors), labels=list(labels),
      task=dataclasses.asdict(ps), results=results, references=references,
      claims=claims), (), plots)


def report_procgen(experiment: ProcgenPolicyExperiment, seeds, labels, results,
                   references) -> str:
  """results.md of a Procgen game: mean return against labels, the later version's beside."""
  ps, game = experiment.task_setting, experiment.game
  lines = report_lib.header_lines(
      f"Policy learning from action-free demonstrations (Sec 4.3): Procgen {game}", experiment,
      seeds, slots=str(ps.num_slots), action_levels=table1_procgen.ACTION_LEVELS,
      data=(f"Procgen {game}, the planner's demonstrations (lookahead {ps.plan_horizon}) on "
            f"levels 0-{ps.episodes - 1}, {ps.episode_length} frames each at "
            f"{PROCGEN_IMAGE_SIZE} px (80% train)"))
  lines += [
      f"- policies: {ps.steps} steps (batch {ps.batch_size}) x{experiment.steps_scale:g}, played "
      f"greedily on {ps.policy.get('eval_episodes', 100)} held-out levels until each ends "
      f"(at most {ps.eval_max_steps} steps)", "",
      "Mean return of pi_u per episode (mean ± std over seeds); the true-action upper bound "
      "uses every demonstration transition whatever the number of labels. 'pseudo-label acc.' "
      "is the share of demonstration transitions whose pseudo-label f(a) equals the planner's "
      "action (15 actions).", ""]
  header = ["policy"] + [f"{num} labels" for num in labels]
  ref, horizon = references["0d"], ps.episode_length - 1
  paper = LATER_VERSION_RETURNS[game]
  for key, what, refs in (
      ("mean_return", f"whole episodes (at most {ps.eval_max_steps} steps)", ref),
      ("mean_return_in_horizon", f"the first {horizon} steps of each level (the "
       "demonstrations' length: the states they show)", ref.get("horizon", {}))):
    rows = []
    for mode_label, _, _, title in experiment.modes:
      nums = [max(labels)] * len(labels) if mode_label == "true_actions" else labels
      rows.append([title] + [report_lib.fmt(results[f"0d/{mode_label}/{num}"][key])
                             for num in nums])
    if key == "mean_return":
      for mode_label in (m[0] for m in experiment.modes if m[2]):
        rows.append([f"pseudo-label acc., {MODE_TITLES[mode_label]}"] + [report_lib.fmt(
            results[f"0d/{mode_label}/{num}"]["pseudo_label_accuracy"], 3) for num in labels])
      rows.append(["(later version's paper: BC from FLAM pseudo-labels)"] +
                  [report_lib.fmt_paper(paper.get(num)) for num in labels])
    for name, title in (("expert", "planner (the demonstrator)"), ("random", "random policy")):
      if name in refs:
        rows.append([f"{title}, same levels"] + [f"{refs[name]['mean_return']:.2f}"] +
                    [""] * (len(labels) - 1))
    lines += [f"## Mean return over {what}", "", report_lib.markdown_table(header, rows), ""]
  series = []
  for mode_label, _, _, title in experiment.modes:
    nums = [max(labels)] * len(labels) if mode_label == "true_actions" else labels
    stats = [results[f"0d/{mode_label}/{num}"]["mean_return"] for num in nums]
    series.append((title.replace("BC, ", ""), [s["mean"] for s in stats],
                   [s["std"] for s in stats]))
  plots = [("mean return against labels", plots_lib.line_plot(
      os.path.join(experiment.out_dir, "policy_return.png"),
      f"Procgen {game}: mean return of pi_u", "labelled transitions", "mean return", labels,
      series))]
  num = 1000 if 1000 in labels else max(labels)
  claims = []
  for key, where in (("mean_return", "whole episodes"),
                     ("mean_return_in_horizon", f"first {horizon} steps")):
    get = lambda mode, key=key: results[
        f"0d/{mode}/{num if mode != 'true_actions' else max(labels)}"][key]
    claims += [report_lib.compare(f"{MODE_TITLES[m]} pseudo-labels > {other} ({num} labels, "
                                  f"{where})", get(m), get(o))
               for m in ("flam", "flam_v2") for o, other in (("labelled", "labelled only"),
                                                              ("lam", "LAM pseudo-labels"))]
    claims.append(report_lib.compare(f"true-action upper bound > FLAM ({where}): the "
                                     "remaining gap", get("true_actions"), get("flam")))
  lines += ["## Claims (issue 11, Procgen)", "",
            report_lib.markdown_table(["claim", "ours (mean return)", "verdict"], claims), ""]
  return experiment.write(lines, dict(
      table="policy_procgen", game=game, seeds=list(seeds), labels=list(labels),
      demonstrations=dataclasses.asdict(ps), results=results, references=references,
      later_version_returns=paper, claims=claims), (), plots)


def main(argv):
  del argv
  from absl import logging  # pylint: disable=g-import-not-at-top
  from flam_jax.errors import ConfigError, FlamError  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    if f.steps_scale <= 0:
      raise ConfigError(f"--steps_scale={f.steps_scale} must be positive")
    if f.train_only:
      raise ConfigError("policy.py does not take --train_only (each policy is evaluated as it "
                        "trains); restrict it with --only, --distractors and --labels")
    unknown = sorted(set(f.only) - {m[0] for m in MODES})
    if unknown:
      raise ConfigError(f"--only={','.join(f.only)}: {', '.join(unknown)} is not a policy of "
                        f"this script; choose from {', '.join(m[0] for m in MODES)}")
    known = PROCGEN_POLICY_SETTINGS if f.procgen else POLICY_SETTINGS
    if settings.get_setting(f.setting).name not in known:
      raise ConfigError(f"policy.py has no --setting={f.setting}"
                        f"{' with --procgen' * bool(f.procgen)}; use one of {', '.join(known)}")
    ps, setting = known[f.setting], settings.get_setting(f.setting)
    if f.procgen:
      if unknown_modes := sorted(set(f.only) - {m[0] for m in MODES_WITHOUT_MASKS}):
        raise ConfigError(f"--only={','.join(f.only)}: {', '.join(unknown_modes)} needs entity "
                          "masks, which Procgen has not")
      if f.distractors:
        raise ConfigError("--distractors is the goal task's; Procgen has one actor (drop it)")
      experiment = ProcgenPolicyExperiment(f.procgen, ps, "policy", setting, f.root,
                                           f.steps_scale, f.runs_root, f.compilation_cache)
    else:
      experiment = PolicyExperiment(ps, "policy", setting, f.root, f.steps_scale, f.runs_root,
                                    f.compilation_cache)
    seeds = common.parse_seeds(f.seeds)
    try:
      distractors = ([0] if f.procgen else
                     [int(v) for v in f.distractors] or list(ps.distractors))
      labels = [int(v) for v in f.labels] or list(ps.labels)
    except ValueError as e:
      raise ConfigError("--distractors and --labels take comma-separated integers") from e
    run(experiment, seeds, distractors, labels, only=tuple(f.only))
  except FlamError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)

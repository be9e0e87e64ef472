# Ad-hoc driver (2026-12-01): does frame 0 need more slot-attention iterations when its slots
# start from a random draw (lam.slot_init=sampled)? The kept goal-task world models of
# slot_init_sampled.py (seed from argv[1], default 2), learned and sampled init, evaluated on
# the test split with frame 0 given 2 (as trained: lam.slot_iterations), 3, 6 and 10
# iterations: the parameters are shared by every iteration, so this is an evaluation-only
# change (eval.init_slot_iterations; Locatello et al. raise the iteration count at test time
# the same way). Later frames
# keep 2 (they start from t-1's slots). Writes init_iterations_seed{seed}.json beside this
# file; finished evaluations are reused (each goes to its own folder of links to the run, not
# to the run's eval/).
#
#   .venv/bin/python experiments/results/policy/cpu_long/analysis/init_iterations.py SEED \
#       RUNS_ROOT [ITERATIONS]   # the --runs_root of policy.py; frame-0 iterations to
#                                # evaluate, default 0,3,6,10 (0: as trained)
import json
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 5)))
from experiments import policy  # pylint: disable=g-import-not-at-top
from experiments import settings as settings_lib  # pylint: disable=g-import-not-at-top
from flam_jax import evaluate, filesystem  # pylint: disable=g-import-not-at-top
from flam_jax.lib import checkpointing  # pylint: disable=g-import-not-at-top

POLICY_ITERATIONS = 6

seed = int(sys.argv[1]) if len(sys.argv) > 1 else 2
runs_root = sys.argv[2] if len(sys.argv) > 2 else "/work/runs/policy_cpu_long"
counts = [int(n) for n in (sys.argv[3] if len(sys.argv) > 3 else "0,3,6,10").split(",")]
runs = os.path.join(runs_root, "cpu_long")
settings = dict(evaluate.EVAL_DEFAULTS, split="test", batch_size=32, window_stride=2)
keys = ("psnr_t", "delta_psnr_t", "ari_fg", "disentanglement",
        "bound_fraction", "probe_accuracy_given_heading")
restore_config = checkpointing.Checkpointer.restore_config


def with_frame0_iterations(iterations, only_under):
  """Checkpointer.restore_config giving world models (in `only_under`) frame-0 iterations:
  the policy stage has no setting for it (evaluation has eval.init_slot_iterations)."""
  def patched(self, step=None):
    config = restore_config(self, step)
    if iterations and "lam" in config and only_under in os.path.realpath(str(self.directory)):
      config["lam"]["init_slot_iterations"] = iterations
    return config
  return patched


out = {"seed": seed, "settings": settings}
for init, run in (("learned", "goal_flam_v2_5a"), ("sampled", "goal_flam_v2_sampledinit_5a")):
  workdir = os.path.join(runs, run, f"seed{seed}")
  out[init] = {}
  for iterations in counts:  # 0: lam.init_slot_iterations unset (as trained).
    links = os.path.join(runs, "init_iterations",
                         f"{run}_seed{seed}_frame0x{iterations or 'trained'}")
    os.makedirs(links, exist_ok=True)
    for name in os.listdir(workdir):
      if name != "eval" and not os.path.exists(os.path.join(links, name)):
        os.symlink(os.path.join(workdir, name), os.path.join(links, name))
    path = os.path.join(links, "eval", "metrics.json")
    if not os.path.exists(path):
      evaluate.evaluate_workdir(links, dict(settings, init_slot_iterations=iterations))
    with open(path) as f:
      metrics = json.load(f)
    name = f"frame0_iterations_{iterations or 'as_trained'}"
    out[init][name] = {k: metrics.get(k) for k in keys}
    print(init, name, out[init][name], flush=True)
root = os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 2))
experiment = policy.PolicyExperiment(policy.POLICY_SETTINGS["cpu_long"], "init_iterations",
                                     settings_lib.get_setting("cpu_long"), root, 1.0, runs_root)
agents = 5
lam_workdir = os.path.join(runs, "goal_flam_v2_sampledinit_5a", f"seed{seed}")
config, _ = experiment.policy_config(agents, "flam_v2", 1000, seed)
config.policy.lam_workdir = lam_workdir
workdir = os.path.join(runs, f"goal_policy_{agents}a",
                       f"flam_v2_sampledinit_frame0x{POLICY_ITERATIONS}_1000", f"seed{seed}")
evaluation = filesystem.read_json(os.path.join(workdir, "policy", "evaluation.json"))
if not evaluation or evaluation["key"]["step"] < config.num_train_steps:
  from flam_jax import train  # pylint: disable=g-import-not-at-top
  checkpointing.Checkpointer.restore_config = with_frame0_iterations(
      POLICY_ITERATIONS, only_under=os.path.join(lam_workdir, "lam"))
  summary = train.run(config, workdir)
  checkpointing.Checkpointer.restore_config = restore_config
  if summary.get("preempted"):
    sys.exit(143)
  evaluation = summary["evaluation"]
out["sampled"][f"policy_frame0_iterations_{POLICY_ITERATIONS}"] = dict(
    {k: evaluation["policy"][k] for k in ("success_rate", "mean_return")},
    **{k: evaluation["labelling"].get(k) for k in (
        "pseudo_label_accuracy", "unlabelled_pseudo_label_accuracy",
        "controlled_agent_bound_fraction", "decoder_attends_controlled_slot")})
print(json.dumps(out["sampled"], indent=1), flush=True)
path = os.path.join(os.path.dirname(__file__), f"init_iterations_seed{seed}.json")
with open(path, "w") as f:
  json.dump(out, f, indent=1)

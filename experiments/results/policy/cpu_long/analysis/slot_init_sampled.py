# Ad-hoc driver (2026-12-01): does frame 0's slot initialisation decide how the later-version
# FLAM binds the goal task's agents? The goal-task world model of policy.py's cpu_long setting
# (4 distractors, seed from argv[1], default 2) trained again with `lam.slot_init=sampled`
# (Locatello et al.'s shared Gaussian instead of K learned embeddings), both evaluated on the
# test split (ARI-FG, disentanglement, bound fraction, probes), then pi_u on its pseudo-labels
# with 1000 labels. With FRAME0_ITERATIONS (argv[3]) the sampled-init model is trained with
# that many slot-attention iterations at frame 0 (`lam.init_slot_iterations`; later frames
# keep lam.slot_iterations) and its outputs are named ..._frame0x{N}. Idempotent: finished
# runs, evaluations and policies are reused.
#
#   .venv/bin/python experiments/results/policy/cpu_long/analysis/slot_init_sampled.py SEED \
#       RUNS_ROOT [FRAME0_ITERATIONS]   # the --runs_root of policy.py (data, tokenizer,
#                                       # token cache, seed's run)
import json
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 5)))
from experiments import policy, runner, settings  # pylint: disable=g-import-not-at-top
from flam_jax import filesystem  # pylint: disable=g-import-not-at-top

seed = int(sys.argv[1]) if len(sys.argv) > 1 else 2
runs_root = sys.argv[2] if len(sys.argv) > 2 else "/work/runs/policy_cpu_long"
frame0_iterations = int(sys.argv[3]) if len(sys.argv) > 3 else 0
suffix = f"_frame0x{frame0_iterations}" if frame0_iterations else ""
root = os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 2))
experiment = policy.PolicyExperiment(policy.POLICY_SETTINGS["cpu_long"], "slot_init",
                                     settings.get_setting("cpu_long"), root, 1.0, runs_root)
agents = 5
base = runner.Run(label="flam_v2", variant="flam_v2", num_agents=agents, seed=seed)
overrides = (("lam.slot_init", "sampled"),)
if frame0_iterations:
  overrides += (("lam.init_slot_iterations", frame0_iterations),)
sampled = runner.Run(label=f"flam_v2_sampledinit{suffix}", variant="flam_v2",
                     num_agents=agents, seed=seed, overrides=overrides)
experiment.ensure_run(sampled)
metrics = experiment.evaluate([base, sampled])

config, _ = experiment.policy_config(agents, "flam_v2", 1000, seed)
config.policy.lam_workdir = experiment.workdir(sampled)
workdir = os.path.join(experiment.runs_dir, f"goal_policy_{agents}a",
                       f"flam_v2_sampledinit{suffix}_1000", f"seed{seed}")
evaluation = filesystem.read_json(os.path.join(workdir, "policy", "evaluation.json"))
if not evaluation or evaluation["key"]["step"] < config.num_train_steps:
  from flam_jax import train  # pylint: disable=g-import-not-at-top
  summary = train.run(config, workdir)
  if summary.get("preempted"):
    sys.exit(143)
  evaluation = summary["evaluation"]
stored = filesystem.read_json(experiment.stored_evaluation_path(agents, "flam_v2", 1000, seed))

keys = ("psnr_t", "delta_psnr_t", "ari_fg", "disentanglement", "bound_fraction",
        "probe_accuracy", "probe_accuracy_given_heading", "probe_accuracy_given_heading_bound")
out = {"seed": seed}
for name, group in (("learned", base.group), ("sampled", sampled.group)):
  m = metrics[group][0]
  out[name] = {k: m.get(k) for k in keys}


def policy_figures(e):
  """success, return (e["policy"]) and how f labelled (e["labelling"]) of one evaluation."""
  return dict({k: e["policy"][k] for k in ("success_rate", "mean_return")},
              **{k: e["labelling"].get(k) for k in (
                  "pseudo_label_accuracy", "unlabelled_pseudo_label_accuracy",
                  "controlled_agent_bound_fraction", "decoder_attends_controlled_slot")})


out["learned"]["policy"] = policy_figures(stored["evaluation"]) if stored else None
out["sampled"]["policy"] = policy_figures(evaluation)
path = os.path.join(os.path.dirname(__file__), f"slot_init_sampled{suffix}_seed{seed}.json")
with open(path, "w") as f:
  json.dump(out, f, indent=1)
print(json.dumps(out, indent=1))

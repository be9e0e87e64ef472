# Ad-hoc driver (2026-12-01): the later-version FLAM (`:flam_v2`) of Table 1's cpu_long
# setting (4 agents, K = 5, 2000 episodes, 9000 steps) with frame 0's slots sampled from the
# shared Gaussian (`lam.slot_init=sampled`) and FRAME0_ITERATIONS slot-attention iterations
# at frame 0 (`lam.init_slot_iterations`, default 6; later frames keep 2). On the goal task
# this pair lifted binding (analysis of experiments/results/policy/cpu_long); here it is
# measured against issue 9's per-seed bars. The data and tokenizer are the cpu_long
# setting's own (`experiments/table1.py --setting=cpu_long` trains the same ones), not the
# H200 tokenizer of the stored flam_v2 seeds (flam_v2_seed*.json).
#
#   python .../sampled_init.py train SEEDS RUNS_ROOT [FRAME0_ITERATIONS] [learned]
#   python .../sampled_init.py eval SEEDS RUNS_ROOT [FRAME0_ITERATIONS] [learned]
#
# `train` trains the data, tokenizer and the seeds in order (finished ones are skipped; start
# a second process for other seeds once the tokenizer is finished); with `learned` it trains
# the plain flam_v2 (learned init, 2 iterations) of those seeds instead, on the same
# tokenizer. `eval` evaluates the seeds together on the test split and writes
# sampled_init_frame0x{N}.json here (with `learned`, also the plain flam_v2 seeds that were
# trained).
import json
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 4)))
from experiments import runner, settings  # pylint: disable=g-import-not-at-top

mode = sys.argv[1]
seeds = [int(s) for s in sys.argv[2].split(",")]
runs_root = sys.argv[3]
frame0_iterations = int(sys.argv[4]) if len(sys.argv) > 4 else 6
with_learned = len(sys.argv) > 5 and sys.argv[5] == "learned"
setting = settings.get_setting("cpu_long")
experiment = runner.Experiment("table1_sampled_init", setting, runs_root, 1.0, runs_root)
agents = setting.table1_agents
overrides = (("lam.slot_init", "sampled"), ("lam.init_slot_iterations", frame0_iterations))
label = f"flam_v2_sampledinit_frame0x{frame0_iterations}"
runs = [runner.Run(label=label, variant="flam_v2", num_agents=agents, seed=s,
                   overrides=overrides) for s in seeds]
learned = [runner.Run(label="flam_v2", variant="flam_v2", num_agents=agents, seed=s)
           for s in seeds]

if mode == "train":
  for run in learned if with_learned else runs:
    experiment.ensure_run(run)
  sys.exit(0)

keys = ("psnr_t", "delta_psnr_t", "copy_psnr_t", "psnr_random_t", "ssim_t", "ari_fg",
        "disentanglement", "bound_fraction", "probe_accuracy", "probe_majority",
        "probe_accuracy_given_heading", "probe_accuracy_given_heading_bound", "tokenizer_psnr")
out = {"setting": "cpu_long", "agents": agents, "frame0_iterations": frame0_iterations,
       "hardware": runner.hardware()}
groups = [(label, runs)]
if with_learned:
  groups.append(("flam_v2_learnedinit", [r for r in learned if runner.latest_step(
      os.path.join(experiment.workdir(r), "lam", "checkpoints"))]))
for name, members in groups:
  if not members:
    continue
  metrics = experiment.evaluate(members)[members[0].group]
  out[name] = {f"seed{r.seed}": {k: m.get(k) for k in keys} for r, m in zip(members, metrics)}
path = os.path.join(os.path.dirname(__file__), f"sampled_init_frame0x{frame0_iterations}.json")
with open(path, "w") as f:
  json.dump(out, f, indent=1)
print(json.dumps(out, indent=1))

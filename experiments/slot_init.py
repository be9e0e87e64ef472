"""Sec 5.5 / Appendix E: recursive slot initialisation vs learned init and slot matching.

    python experiments/slot_init.py --setting=small --seeds=0,1,2
    python experiments/slot_init.py --setting=paper --seeds=0,1,2

Six FLAM configs on the Table 1 Multigrid (K = number of agents + 1):
  recursive     frame t's slots start from frame t-1's final slots (the paper's default),
                frame 0's from K learned embeddings;
  recursive, sampled init: the same, frame 0's slots drawn from one learned Gaussian
                shared by the slots (Locatello et al., `lam.slot_init=sampled`);
  learned       every frame starts from the learned slot embeddings;
  + distribution / hungarian / contrastive: learned init plus one of Appendix E's slot
                matching losses (weight lam.slot_matching_weight = 1).
The paper gives no numbers (Fig. 8 is qualitative): it finds no significant gain from the
matching losses and better slots and predictions with recursive init. Besides PSNR we
report how well the slots track the agents: ARI-FG of the slot masks and the slot-agent
disentanglement score (flam_jax/lib/eval_step.py).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top

from experiments import common, runner
from experiments import plots as plots_lib
from experiments import report as report_lib

# label -> (title, lam overrides). "flam" is shared with Table 1 and Sec 5.4.
CONFIGS = {
    "flam": ("recursive init", ()),
    "flam_sampled_init": ("recursive, sampled init", (("lam.slot_init", "sampled"),)),
    "flam_learned_init": ("learned init", (("lam.recursive_init", False),)),
    "flam_learned_distribution": ("learned + distribution loss", (
        ("lam.recursive_init", False), ("lam.slot_matching", "distribution"))),
    "flam_learned_hungarian": ("learned + Hungarian loss", (
        ("lam.recursive_init", False), ("lam.slot_matching", "hungarian"))),
    "flam_learned_contrastive": ("learned + contrastive loss", (
        ("lam.recursive_init", False), ("lam.slot_matching", "contrastive"))),
}
KEYS = ("psnr_t@1", "psnr_t@P", "delta_psnr_t@1", "delta_psnr_t@P", "ari_fg",
        "disentanglement", "bound_fraction", "action_perplexity", "probe_accuracy",
        "probe_accuracy_given_heading")

common.define_flags("results/slot_init")


def make_runs(num_agents: int, seeds):
  return [runner.Run(label=label, variant="flam", num_agents=num_agents, seed=s,
                     overrides=overrides)
          for s in seeds for label, (_, overrides) in CONFIGS.items()]


def report(experiment: runner.Experiment, runs, metrics, seeds) -> str:
  n = experiment.setting.table1_agents
  stats = {label: report_lib.aggregate(metrics[f"{label}_{n}a"], KEYS) for label in CONFIGS}
  p = metrics[f"flam_{n}a"][0]["prediction_steps"]
  columns = [("psnr_t@1", "PSNR t=1"), ("psnr_t@P", f"PSNR t={p}"),
             ("delta_psnr_t@1", "Δ PSNR t=1"), ("delta_psnr_t@P", f"Δ PSNR t={p}"),
             ("ari_fg", "ARI-FG"), ("disentanglement", "disentanglement"),
             ("bound_fraction", "agents bound"), ("action_perplexity", "action perplexity"),
             ("probe_accuracy", "probe acc."),
             ("probe_accuracy_given_heading", "probe acc. given heading")]
  titles = {label: title for label, (title, _) in CONFIGS.items()}
  rec = stats["flam"]
  claims = []
  for label in list(CONFIGS)[1:]:
    claims.append(report_lib.compare(f"recursive PSNR t=1 > {titles[label]}", rec["psnr_t@1"],
                                 stats[label]["psnr_t@1"]))
  for label in list(CONFIGS)[1:]:
    claims.append(report_lib.compare(f"recursive disentanglement > {titles[label]}",
                                 rec["disentanglement"], stats[label]["disentanglement"], 3))
  lines = report_lib.header_lines(f"Sec 5.5 / Appendix E: slot initialisation and matching "
                              f"(FLAM, {n} agents)", experiment, seeds)
  lines += [
      "The paper reports no numbers for this comparison (Appendix E, Fig. 8 is qualitative); "
      "mean ± sample std over seeds. ARI-FG: adjusted Rand index of the slot masks against "
      "the agents' pixels; disentanglement: the share of each moving agent's pixels (over a "
      "transition's two frames) covered by the slot matched to it (Hungarian).", "",
      report_lib.config_table(stats, titles, columns, 3), "",
      "## Claims", "",
      report_lib.markdown_table(["claim (paper)", "ours (mean)", "verdict"], claims), "",
  ]
  plot = plots_lib.bar_plot(
      os.path.join(experiment.out_dir, "slot_init.png"), "Sec 5.5: slot initialisation",
      "PSNR t=1 (dB)", [titles[label].replace(" loss", "") for label in CONFIGS],
      [("PSNR t=1", [stats[label]["psnr_t@1"]["mean"] for label in CONFIGS],
        [stats[label]["psnr_t@1"]["std"] for label in CONFIGS])], width=900)
  return experiment.write(lines, dict(
      table="slot_init", num_agents=n, seeds=list(seeds), configs=titles, stats=stats,
      per_seed=metrics, claims=claims), runs, [("Slot init", plot)])


if __name__ == "__main__":
  app.run(common.script_main(
      "slot_init", lambda experiment, seeds: make_runs(experiment.setting.table1_agents, seeds),
      report))

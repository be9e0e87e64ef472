# The ad-hoc driver of the 2026-12-06 runs (results.md beside it, and ../table1_6k/):
# table1.py's runs at the cpu setting, one per process, with config overrides that
# table1.py has no flag for. The 3000-step runs here were the setting's steps then
# (`--set=num_train_steps=3000` repeats them); the 6000-step runs of ../table1_6k/ are the
# setting's steps now, which `python experiments/table1.py --setting=cpu` trains.
"""One run of Table 1 (4 agents) or Table 2 (--agents) at the cpu setting, trained, then
evaluated on the test split.

  python experiments/results/cpu/table1_grid/driver.py --root=RUNS --tokenizer_only
  python experiments/results/cpu/table1_grid/driver.py --root=RUNS --label=flam_learned \
      --variant=flam --seed=1 --set=lam.slot_position_embedding=learned

Prints the metrics as one JSON line starting with METRICS. Idempotent like the scripts: a
finished run is not retrained.
"""
import ast
import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 4)))
from experiments import runner, settings  # pylint: disable=g-import-not-at-top

flags.DEFINE_string("root", None, "Folder of the data, tokenizer and runs.", required=True)
flags.DEFINE_string("label", "flam",
                    "Run label (its workdir is <root>/cpu/<label>_<agents>a/seed<k>).")
flags.DEFINE_string("variant", "flam", "Variant of configs/multigrid.py.")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_integer("agents", 4, "Number of agents (Table 2's rows: 1, 2, 4, 8).")
flags.DEFINE_list("set", [], "Config overrides key=value (Python literals).")
flags.DEFINE_bool("tokenizer_only", False, "Only generate the data and train the tokenizer.")
F = flags.FLAGS


def main(_):
  overrides = []
  for item in F.set:
    key, value = item.split("=", 1)
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass  # A plain string.
    overrides.append((key, value))
  experiment = runner.Experiment("table1", settings.get_setting("cpu"), F.root)
  if F.tokenizer_only:
    experiment.ensure_tokenizer(F.agents)
    return
  run = runner.Run(label=F.label, variant=F.variant, num_agents=F.agents, seed=F.seed,
                   overrides=tuple(overrides))
  experiment.ensure_run(run)
  metrics = experiment.evaluate([run])
  print("METRICS", json.dumps(metrics[run.group][0], default=str))


if __name__ == "__main__":
  app.run(main)

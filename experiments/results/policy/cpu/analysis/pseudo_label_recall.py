"""Per-action recall and precision of the pseudo-labels a cpu-setting policy run wrote
(<runs>/goal_policy_5a/<mode>_1000/seedS/policy_data), against the true actions of the
same transitions: pseudo-label accuracy is mostly "forward" (69% of the transitions), and
what pi_u learns to turn from is the recall of the turns. Run 2026-12-06 on the runs of
experiments/README.md, Sec 4.3, "cpu setting"; output beside it.

    python experiments/results/policy/cpu/analysis/pseudo_label_recall.py RUNS/cpu \
        flam_v2_1000 flam_v2_matched_slot_1000 lam_1000
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 5)))
from flam_jax.data import pipeline  # pylint: disable=g-import-not-at-top
from flam_jax.lib import policy as policy_lib

runs, modes = sys.argv[1], sys.argv[2:]
demos = policy_lib.demonstration_transitions(f"{runs}/goal_tokenizer_5a/tokens",
                                             f"{runs}/goal_data_5a", 16)
true_m = demos["actions_elk"][demos["episode_m"], demos["time_m"], 0]
print("action: left / right / forward; true counts", np.bincount(true_m, minlength=4)[:3])
for mode in modes:
  for seed in range(3):
    folder = f"{runs}/goal_policy_5a/{mode}/seed{seed}/policy_data"
    if not os.path.isdir(folder):
      continue
    source = pipeline.WindowSource(folder, "train", window_length=1, fields=("labels",))
    pseudo_m = np.array([source.read_episode(i)["labels"][0] for i in range(source.num_episodes)])
    recall = [np.mean(pseudo_m[true_m == a] == a) for a in range(3)]
    precision = [np.mean(true_m[pseudo_m == a] == a) if np.any(pseudo_m == a) else float("nan")
                 for a in range(3)]
    print(f"{mode} seed {seed}: recall {np.round(recall, 3)}, precision "
          f"{np.round(precision, 3)}, balanced accuracy {np.mean(recall):.3f}")

"""Stores seed 0's goal-task evaluations (this folder) where `experiments/policy.py` keeps them.

    .venv/bin/python experiments/results/cpu_long/policy_partial/store_seed0.py

Seed 0's policies were run on 2026-11-30 (before evaluations were kept beside the report)
on a machine whose run folders are gone. The configs that `policy.py` builds today for
them are the ones they ran with, checked with git log: no commit after the later-version
FLAM run (f6406f1, 12:27 UTC; the LAM and FLAM runs came after it) changed configs/,
experiments/settings.py, experiments/policy.py's settings, K or f, or the policy stage
beyond cache tags; the two behaviour-cloning baselines (true actions, labelled) ran
after pi_u's 10000 steps (b73e81b) but before K = agents + 2 (4add850), a world-model
setting their config carries and they do not use. So each is stored with today's config
identity under
experiments/results/policy/cpu_long/evaluations/, and
`policy.py --setting=cpu_long --root=experiments/results/policy --distractors=4 --seeds=0,1,2`
reuses them instead of training seed 0 again. Idempotent (rewrites the same files).
"""

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
sys.path.insert(0, ROOT)

from absl import flags  # pylint: disable=g-import-not-at-top

from experiments import policy as policy_experiment  # pylint: disable=g-import-not-at-top
from experiments import settings  # pylint: disable=g-import-not-at-top
from flam_jax import filesystem  # pylint: disable=g-import-not-at-top

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = {  # (mode, labels): the file of this folder made by that policy with 4 distractors.
    ("true_actions", 1000): "4d_true_actions_seed0.json",
    ("labelled", 100): "4d_labelled_100_seed0.json",
    ("labelled", 300): "4d_labelled_300_seed0.json",
    ("labelled", 1000): "4d_labelled_1000_seed0.json",
    ("flam_v2", 100): "4d_flam_v2_100_seed0.json",
    ("flam_v2", 1000): "4d_flam_v2_k7_1000_seed0.json",
    ("lam", 1000): "4d_lam_1000_seed0.json",
    ("flam", 1000): "4d_flam_1000_seed0.json",
}


def main():
  flags.FLAGS.mark_as_parsed()
  experiment = policy_experiment.PolicyExperiment(
      policy_experiment.POLICY_SETTINGS["cpu_long"], "policy", settings.get_setting("cpu_long"),
      os.path.join(ROOT, "experiments", "results", "policy"), compilation_cache="none")
  for (mode, labels), name in FILES.items():
    evaluation = filesystem.read_json(os.path.join(HERE, name))
    config, _ = experiment.policy_config(5, mode, labels, seed=0)
    assert evaluation["key"]["step"] == config.num_train_steps, name
    if mode != "true_actions":
      assert evaluation["labelling"]["labelled"] == labels, name
    path = experiment.stored_evaluation_path(5, mode, labels, seed=0)
    filesystem.write_json(path, dict(config=policy_experiment._config_identity(config),  # pylint: disable=protected-access
                                     evaluation=evaluation), default=str)
    print(path)


if __name__ == "__main__":
  main()

"""How much of agent 0's action do a world model's latent actions hold? (goal task, 4 distractors)

An offline check on the latent actions a policy run cached (policy_latents.npz), run
2026-11-30 on seed 1's later-version FLAM (cpu_long, 1000 labels); figures in
experiments/README.md ("Why f cannot do better"). It fits f (flam_jax.lib.policy.fit_decoder)
  1. on the run's 1000 labelled transitions, stopped early or with more weight decay or a
     smaller hidden layer, measured on the transitions it was not fitted on;
  2. on 80% of all transitions, measured on the other 20% (how much there is to decode);
  3. on the latent action of the slot bound to agent 0 (the run's masks), alone and with
     the slot vector.

    python experiments/results/policy/cpu_long/analysis/f_information.py \
        /work/runs/policy_cpu_long/cpu_long 1 [POLICY_RUN]

POLICY_RUN (default flam_v2_1000) names the policy run under goal_policy_5a/ whose latents
are read, e.g. flam_v2_sampledinit_1000 (slot_init_sampled.py's).
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 5)))
from flam_jax.lib import policy as policy_lib  # pylint: disable=g-import-not-at-top
from flam_jax.modules.policy import LatentActionDecoder

runs, seed = sys.argv[1], int(sys.argv[2])
policy_run = sys.argv[3] if len(sys.argv) > 3 else "flam_v2_1000"
latents = np.load(f"{runs}/goal_policy_5a/{policy_run}/seed{seed}/policy_latents.npz")
demos = policy_lib.demonstration_transitions(f"{runs}/goal_tokenizer_5a/tokens",
                                             f"{runs}/goal_data_5a", 16)
episode_m, time_m = demos["episode_m"], demos["time_m"]  # As flam_jax/stages/policy.py has them.
n = len(episode_m)
labelled = policy_lib.labelled_draw(n, 1000, seed)
unlabelled = np.setdiff1d(np.arange(n), labelled)
acts, keys = latents["actions"][episode_m, time_m], latents["keys"][episode_m, time_m]
truth = demos["actions_elk"][episode_m, time_m, 0].astype(np.int32)
print(f"{n} transitions; 'forward' (the majority) {np.bincount(truth).max() / n:.3f}")


def fit(rows, test, steps, a=acts, k=keys, hidden=64, weight_decay=1e-4):
  decoder = LatentActionDecoder(num_actions=4, hidden=hidden)
  params, m = policy_lib.fit_decoder(decoder, a[rows], None if k is None else k[rows],
                                     truth[rows], steps=steps, learning_rate=3e-3, seed=seed,
                                     weight_decay=weight_decay)
  labels, _ = policy_lib.decode_labels(decoder, params, a, k)
  return m["decoder_train_accuracy"], float((labels[test] == truth[test]).mean())


for steps in (25, 50, 100, 200, 500):
  for wd in (1e-4, 1e-2, 1e-1):
    print(f"1000 labels, {steps} steps, weight decay {wd:g}: fitted %.3f, others %.3f"
          % fit(labelled, unlabelled, steps, weight_decay=wd))
for steps in (50, 200, 500):
  print(f"1000 labels, hidden 16, {steps} steps: fitted %.3f, others %.3f"
        % fit(labelled, unlabelled, steps, hidden=16))
perm = np.random.default_rng(0).permutation(n)
train, test = perm[:int(0.8 * n)], perm[int(0.8 * n):]
slot = latents["agent_slot"][episode_m, time_m]
agent_acts = acts[np.arange(n), slot][:, None]
agent_keys = keys[np.arange(n), slot][:, None]
for steps in (200, 1000, 3000):
  print(f"80%% of all, {steps} steps: fitted %.3f, held out %.3f" % fit(train, test, steps))
  print(f"  agent 0's slot, action only: fitted %.3f, held out %.3f"
        % fit(train, test, steps, agent_acts, None))
  print(f"  agent 0's slot, action and slot: fitted %.3f, held out %.3f"
        % fit(train, test, steps, agent_acts, agent_keys))

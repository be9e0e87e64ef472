"""f with 1000 labels: through its attention (as the policy stage fits it) against f given
the slot the entity masks match to agent 0 (an oracle selector), on the latent actions a
cpu-setting policy run cached (policy_latents.npz). Run 2026-12-06 on seeds 0 and 1 of the
later-version FLAM (experiments/README.md, Sec 4.3, "cpu setting"); output beside it.

    python experiments/results/policy/cpu/analysis/oracle_slot_f.py RUNS/cpu 0 1
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 5)))
from flam_jax.lib import policy as policy_lib  # pylint: disable=g-import-not-at-top
from flam_jax.modules.policy import LatentActionDecoder

runs = sys.argv[1]
for seed in [int(s) for s in sys.argv[2:]]:
  lat = np.load(f"{runs}/goal_policy_5a/flam_v2_1000/seed{seed}/policy_latents.npz")
  demos = policy_lib.demonstration_transitions(f"{runs}/goal_tokenizer_5a/tokens",
                                               f"{runs}/goal_data_5a", 16)
  em, tm = demos["episode_m"], demos["time_m"]  # As flam_jax/stages/policy.py orders them.
  n = len(em)
  lab = policy_lib.labelled_draw(n, 1000, seed)  # The stage's labelled draw.
  unl = np.setdiff1d(np.arange(n), lab)
  a, k = lat["actions"][em, tm], lat["keys"][em, tm]
  slot = lat["agent_slot"][em, tm]
  y = demos["actions_elk"][em, tm, 0].astype(np.int32)
  for name, aa, kk in (("all slots, attention (the stage)", a, k),
                       ("oracle slot: latent + key", a[np.arange(n), slot][:, None],
                        k[np.arange(n), slot][:, None]),
                       ("oracle slot: latent only", a[np.arange(n), slot][:, None], None)):
    dec = LatentActionDecoder(num_actions=4, hidden=64)
    p, m = policy_lib.fit_decoder(dec, aa[lab], None if kk is None else kk[lab], y[lab],
                                  steps=500, learning_rate=3e-3, seed=seed,
                                  validation_fraction=0.2)
    pl, _ = policy_lib.decode_labels(dec, p, aa, kk)
    print(f"seed {seed}, {name}: others {np.mean(pl[unl] == y[unl]):.3f}, all "
          f"{np.mean(pl == y):.3f}, labels {np.bincount(pl, minlength=4)[:3]}, "
          f"steps {m['decoder_steps_chosen']}", flush=True)
  print(f"seed {seed}: majority {np.bincount(y).max() / n:.3f}, "
        f"true {np.bincount(y, minlength=4)[:3]}")

"""Two other ways for f to choose agent 0's slot from 1000 labels, tried offline on the
latent actions a cpu-setting policy run cached (policy_latents.npz) and not adopted
(experiments/README.md, Sec 4.3, "cpu setting"); output beside it:
  mixture: f as a mixture of per-slot classifiers, p(a | slots) = sum_k w_k p(a | slot k),
    with w from the slots' keys (credit goes to the slot whose own classifier explains
    the label) instead of the stage's attention-pooled features;
  clusters: k-means over all slots' keys (8 clusters), for each cluster the slot nearest
    its centre per transition, f on that slot alone, the cluster chosen by f's balanced
    accuracy on the held-out fifth of the labels.
Both are scored like the stage's f on the transitions it was not fitted on, and by how
often the chosen (or most weighted) slot is the one the masks match to agent 0 among the
transitions where a slot holds it.

    python experiments/results/policy/cpu/analysis/f_selectors.py RUNS/cpu 0 1
"""
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 5)))
from flam_jax.lib import policy as policy_lib  # pylint: disable=g-import-not-at-top
from flam_jax.lib import probe
from flam_jax.modules.policy import LatentActionDecoder


class MixtureDecoder(nn.Module):
  """f as a mixture over slots: returns (log p(a) [B, U], slot weights [B, K])."""
  num_actions: int = 4
  hidden: int = 64

  @nn.compact
  def __call__(self, actions_bka, keys_bkd):
    slots_bkd = nn.LayerNorm(name="key_norm")(keys_bkd)
    query_h = self.param("query", nn.initializers.normal(1.0), (self.hidden,))
    log_weights_bk = jax.nn.log_softmax(
        nn.Dense(self.hidden, name="key")(slots_bkd) @ query_h / jnp.sqrt(self.hidden), axis=-1)
    x = jnp.concatenate([actions_bka, slots_bkd], axis=-1)
    x = nn.relu(nn.Dense(self.hidden, name="hidden")(nn.relu(nn.Dense(self.hidden)(x))))
    log_probs_bku = jax.nn.log_softmax(nn.Dense(self.num_actions)(x), axis=-1)
    return (jax.nn.logsumexp(log_weights_bk[..., None] + log_probs_bku, axis=1),
            jnp.exp(log_weights_bk))


def kmeans(x, clusters, seed, iterations=50):
  centres = x[np.random.default_rng(seed).choice(len(x), clusters, replace=False)]
  for _ in range(iterations):
    nearest = ((x[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
    for c in range(clusters):
      if np.any(nearest == c):
        centres[c] = x[nearest == c].mean(0)
  return centres


runs = sys.argv[1]
demos = policy_lib.demonstration_transitions(f"{runs}/goal_tokenizer_5a/tokens",
                                             f"{runs}/goal_data_5a", 16)
em, tm = demos["episode_m"], demos["time_m"]
n = len(em)
y = demos["actions_elk"][em, tm, 0].astype(np.int32)
for seed in [int(s) for s in sys.argv[2:]]:
  lat = np.load(f"{runs}/goal_policy_5a/flam_v2_1000/seed{seed}/policy_latents.npz")
  lab = policy_lib.labelled_draw(n, 1000, seed)
  unl = np.setdiff1d(np.arange(n), lab)
  a, k = lat["actions"][em, tm], lat["keys"][em, tm]
  slot = lat["agent_slot"][em, tm]
  bound = lat["agent_share"][em, tm] >= probe.BOUND_SHARE

  def score(decoder, aa, kk):
    params, m = policy_lib.fit_decoder(decoder, aa[lab], kk[lab], y[lab], steps=500,
                                       learning_rate=3e-3, seed=seed, validation_fraction=0.2)
    labels, chosen = policy_lib.decode_labels(decoder, params, aa, kk)
    return m, float(np.mean(labels[unl] == y[unl])), chosen

  for name, decoder in (("attention (the stage)", LatentActionDecoder(4, 64)),
                        ("mixture", MixtureDecoder(4, 64))):
    _, others, chosen = score(decoder, a, k)
    print(f"seed {seed}, {name}: others {others:.3f}, weights agent 0's slot most "
          f"{np.mean(chosen[bound] == slot[bound]):.3f}", flush=True)
  centres = kmeans(k.reshape(-1, k.shape[-1]), 8, seed)
  nearest_mc = ((k[:, :, None] - centres[None, None]) ** 2).sum(-1).argmin(1)  # [M, clusters]
  results = []
  for c in range(centres.shape[0]):
    s = nearest_mc[:, c]
    m, others, _ = score(LatentActionDecoder(4, 64), a[np.arange(n), s][:, None],
                         k[np.arange(n), s][:, None])
    results.append((m["decoder_validation_balanced_accuracy"], c, others,
                    float(np.mean(s[bound] == slot[bound]))))
  best = max(results)
  print(f"seed {seed}, clusters: chosen {best[1]} (held-out balanced accuracy {best[0]:.3f}): "
        f"others {best[2]:.3f}, is agent 0's slot {best[3]:.3f}; best match of any cluster "
        f"{max(r[3] for r in results):.3f}", flush=True)

# The ad-hoc diagnostic of experiments/README.md (Sec 5.5 at cpu_long), as run on 2026-11-30:
#   python ari_per_frame.py <world-model workdir>
"""ARI-FG by frame index and the matched slot share by transition, over whole 16-frame test
episodes (4 batches of 32): does recursive init accumulate binding errors over frames?"""
import os, sys, numpy as np, jax, jax.numpy as jnp
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 4)))
from flam_jax.lib import loading, rollout, metrics, evaluator
from flam_jax.data import records
wd = sys.argv[1]
loaded, params, step = loading.load_trained(wd)
model = loaded.model
T = 16  # Whole episodes: the recursion runs over 16 frames (training windows are 6).
@jax.jit
def f(params, frames):
  b, t, H, W, _ = frames.shape
  px = frames.astype(jnp.float32) / 255.0
  tok = rollout.encode(loaded.tokenizer, loaded.tokenizer_params, px.reshape(b * t, H, W, 3)).reshape(b, t, -1)
  feats = rollout.features(loaded.codebook, tok)
  ent, masks = rollout.entities(model, params, feats)
  return masks
aris, dis = [], []
for i, batch in enumerate(evaluator.dataset_batches(loaded.config.data.dir, "test", window_length=T, batch_size=32, window_stride=T)):
  if i >= 4: break
  masks = f(params, jnp.asarray(batch["frames"]))
  ids = jnp.asarray(batch["masks"]).astype(jnp.int32)
  b, t, H, W = ids.shape
  slot_ids = jnp.argmax(masks, axis=2)
  ari = metrics.patch_adjusted_rand_index(ids.reshape(b * t, H, W), slot_ids.reshape(b * t, -1), grid=loaded.grid,
        num_true=records.FIRST_AGENT_ID + loaded.num_agents, num_pred=masks.shape[2], ignore_ids=(records.FLOOR_ID, records.WALL_ID))
  aris.append(np.asarray(ari).reshape(b, t))
  d = metrics.slot_agent_disentanglement(masks, ids, grid=loaded.grid, num_agents=loaded.num_agents, first_agent_id=records.FIRST_AGENT_ID)
  dis.append(np.asarray(d["matched_share"]).mean(-1))
a = np.concatenate(aris).mean(0); m = np.concatenate(dis).mean(0)
print(wd.split("runs/")[-1], "ARI-FG by frame:", np.round(a, 2))
print("  matched share by transition:", np.round(m, 2))

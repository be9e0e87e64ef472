"""Pictures of controlled rollouts: the control grid (Fig. 4) and the paper's Figs. 7-9.

Every rollout goes through `flam_jax.lib.rollout` (one compiled call per picture).
"""

import jax
import numpy as np

from flam_jax.generate import actions as actions_lib
from flam_jax.lib import images, rollout


def _single_slot_highlight(loaded, masks_kn, frame_HWc) -> np.ndarray:
  """[K, H, W, 3]: the frame with only slot k's mask painted in its colour."""
  masks = images.upsample_masks(masks_kn, loaded.grid, frame_HWc.shape[0])[..., None]
  colors = images.slot_colors(masks.shape[0])[:, None, None]
  return frame_HWc[None] * (1.0 - 0.8 * masks) + 0.8 * masks * colors


def _grid_actions(loaded, columns_ca, reference_ua, steps: int) -> np.ndarray:
  """Actions [R*C, H, K|1, A]: row r moves unit r through the columns, the rest keep reference."""
  units = actions_lib.num_units(loaded)
  r, c = units, len(columns_ca)
  chosen = np.eye(units, dtype=bool)[:, None, :, None]  # [R, 1, U, 1]
  units_rcua = np.where(chosen, columns_ca[None, :, None, :], reference_ua[None, None])
  packed = actions_lib.pack_units(loaded, units_rcua)
  actions = packed.reshape((r * c, 1) + actions_lib.pack_units(loaded, reference_ua).shape)
  return np.repeat(actions, steps, axis=1)


def slot_control_grid(loaded, params, start_frame_HWc, steps: int, *, max_codes: int = 16,
                      seed: int = 0, reference_ua=None):
  """Fig. 4 as a grid: row i moves unit i through every code, the other units stay fixed.

  Cell (i, c) is the final frame of an H-step rollout in which unit i (slot, or agent for
  wm) takes code c at every step while every other unit takes its reference action
  (`actions.reference_units`: the IDM's action between two copies of the start frame, wm
  "stay"). lam / oc_lam have one scene action, so one row. Columns are the first
  `max_codes` codes, or, for Gaussian actions, `max_codes` draws from the N(0, I) prior
  (seeded, the same draws in every row). All R*C rollouts run as one batch in one call.

  The picture: a header row with the start frame's reconstruction and (slot variants) its
  slot masks coloured per slot; then one row per unit, led by the start frame with that
  slot's mask painted in its colour (or the plain reconstruction).

  Returns:
    (picture uint8, dict(final [R, C, H, W, 3], frames [R, C, H+1, H, W, 3],
    columns [C, a], reference [U, a], masks [K, N] or None)).
  """
  codebook = actions_lib.unit_codebook(loaded)
  if codebook is None:
    columns = np.asarray(jax.random.normal(jax.random.PRNGKey(seed),
                                           (max_codes, loaded.model.action_width)))
  else:
    columns = codebook[:max_codes]
  ref = (actions_lib.reference_units(loaded, params, start_frame_HWc) if reference_ua is None
         else np.asarray(reference_ua, np.float32))
  out = rollout.rollout_from_frame(loaded, params, start_frame_HWc,
                                   _grid_actions(loaded, columns, ref, steps))
  r = actions_lib.num_units(loaded)
  frames = out["frames"].reshape((r, len(columns)) + out["frames"].shape[1:])
  final = frames[:, :, -1]
  start = frames[0, 0, 0]
  if out["masks"] is not None:
    header = [start, images.mask_overlay(out["masks"][None], start[None], loaded.grid)[0]]
    leads = (_single_slot_highlight(loaded, out["masks"], start)
             if r == out["masks"].shape[0] else np.repeat(start[None], r, axis=0))
  else:
    header, leads = [start], np.repeat(start[None], r, axis=0)
  rows = [np.stack(header)] + [np.concatenate([leads[i][None], final[i]]) for i in range(r)]
  arrays = dict(final=final, frames=frames, columns=columns, reference=ref, masks=out["masks"])
  return images.grid(rows), arrays


def figure_rollout(loaded, params, frames_tHWc, gt_actions=None):
  """Figs. 7-9: rows = ground truth, slot masks over the frames (slot variants),
  tokenizer reconstruction, prediction (rolled from frame 0 with the IDM's actions).

  Returns (picture uint8, dict(ground_truth, masks, reconstruction, prediction [T, H, W, 3],
  indices)); the prediction row starts with a blank where the start frame is.
  """
  truth = rollout.as_frames(loaded, frames_tHWc)
  inferred = rollout.infer_clip(loaded, params, truth, gt_actions)
  predicted = rollout.rollout_frames(loaded, params, truth[0], inferred["actions"])  # [T, ...]
  blank = np.ones_like(truth[:1])
  prediction = np.concatenate([blank, predicted[1:]])
  rows = [truth]
  if inferred["masks"] is not None:
    rows.append(images.mask_overlay(inferred["masks"], inferred["reconstruction"], loaded.grid))
  rows += [inferred["reconstruction"], prediction]
  return images.grid(rows), dict(ground_truth=truth, masks=inferred["masks"],
                                 reconstruction=inferred["reconstruction"],
                                 prediction=predicted, indices=inferred["indices"])


def with_progress_bar(frames_tHWc) -> np.ndarray:
  """Frames [T, H, W, 3] with a bar below marking step t of T: shows where the loop starts
  (and keeps every GIF frame, since GIF writers merge identical consecutive frames)."""
  frames = images.to_uint8(frames_tHWc)
  t, _, w, _ = frames.shape
  filled = np.round(np.arange(1, t + 1) * w / t)  # [T] bar lengths in pixels.
  on_tw = np.arange(w)[None, :] < filled[:, None]  # [T, W]
  bar = np.where(on_tw[:, None, :, None], 200, 40).astype(np.uint8)  # [T, 1, W, 1]
  bar = np.broadcast_to(bar, (t, max(1, frames.shape[1] // 16), w, 3))
  return np.concatenate([frames, bar], axis=1)

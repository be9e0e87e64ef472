"""Controllable video generation with a trained latent action model (Sec 4.3, 5.9, Fig. 4).

Pick a start frame, choose a latent action per step (FLAM: one per slot), and roll the
forward dynamics model on its own predictions; the aggregator and the frozen tokenizer
turn each predicted state into pixels:

    frame 0 --encode--> z_q --factorizer--> s_0 --FDM(s, a_1..a_H)--> s_1..s_H
            --aggregator (greedy, KV cache) / regression--> z_q,1..H --decode--> frames

Actions are given per "control unit": a slot (flam), the one scene action (lam,
oc_lam) or an agent's ground-truth action (wm, one-hot over the 4 Multigrid actions).
They come from code indices (the FSQ codebook), random draws (codebook or N(0, I)
prior), or the IDM applied to a real clip.

    python -m flam_jax.generate --workdir=W --sample --steps 8
    python -m flam_jax.generate --workdir=W --actions "0,1;2,3;3,3" --episode 2
    python -m flam_jax.generate --workdir=W --infer --figure --control_grid
    python -m flam_jax.generate --workdir=W --image start.png --actions "1,0"

Outputs go to `--out` (default <workdir>/generate/): rollout.gif (a bar under the frames
marks the step) and rollout.png (with --infer also groundtruth.gif, comparison.gif, and a
ground-truth row in rollout.png), control_grid.png (--control_grid), figure.png (--figure).
Frame 0 of every rollout is the tokenizer's reconstruction of the start frame.
"""

import os
import weakref
from typing import Optional, Sequence

from absl import flags, logging
import jax
import jax.numpy as jnp
import numpy as np

from flam_jax import cli, filesystem
from flam_jax.data import multigrid, pipeline
from flam_jax.errors import ConfigError, DataError
from flam_jax.lib import images
from flam_jax.modules import fsq, latent_action
from flam_jax.modules.tokenizer import Tokenizer
from flam_jax.modules.world_model import SCENE_ACTIONS, LatentActionWorldModel
from flam_jax.stages import lam as lam_stage
from flam_jax.stages.lam import SLOT_COLORS

# WM's reference action for the agents a control grid row does not move.
WM_REFERENCE_ACTION = multigrid.STAY

_JITTED = weakref.WeakKeyDictionary()  # stage -> its compiled functions.


# ---- Control units: what one user-chosen action drives. ----
def _variant(stage) -> str:
  return stage.config.lam.variant


def unit_name(stage) -> str:
  return {"flam": "slot", "wm": "agent"}.get(_variant(stage), "scene action")


def num_units(stage) -> int:
  """Actions chosen per step: K slots (flam), 1 scene action (lam, oc_lam), agents (wm)."""
  variant = _variant(stage)
  if variant == "wm":
    return stage.num_agents
  return 1 if variant in SCENE_ACTIONS else stage.config.lam.num_slots


def unit_codebook(stage) -> Optional[np.ndarray]:
  """[C, a] action vector of each code a unit can take; None for Gaussian (continuous) actions."""
  if _variant(stage) == "wm":
    return np.eye(stage.model.num_agent_actions, dtype=np.float32)
  if stage.config.lam.action_kind == "gaussian":
    return None
  return np.asarray(fsq.all_codes(stage.model.action_bottleneck_levels), np.float32)


def num_codes(stage) -> Optional[int]:
  codebook = unit_codebook(stage)
  return None if codebook is None else codebook.shape[0]


def pack_units(stage, units_ua):
  """Per-unit actions [..., U, a] -> the model's actions [..., K|1, A] (wm: agents concatenated)."""
  units_ua = np.asarray(units_ua, np.float32)
  if _variant(stage) == "wm":
    return units_ua.reshape(units_ua.shape[:-2] + (1, -1))
  return units_ua


def _require_codebook(stage) -> np.ndarray:
  codebook = unit_codebook(stage)
  if codebook is None:
    raise ConfigError(
        "code indices need a discrete latent action codebook, but this model's actions are "
        "continuous (lam.action_kind='gaussian'); use --sample or --infer instead of --actions")
  return codebook


def actions_from_indices(stage, indices_hu) -> np.ndarray:
  """Code indices [H, U] -> actions [H, K|1, A] (FSQ codes, or wm one-hot actions)."""
  codebook = _require_codebook(stage)
  indices_hu = np.asarray(indices_hu, np.int64)
  if indices_hu.ndim != 2 or indices_hu.shape[1] != num_units(stage):
    raise ConfigError(f"actions need {num_units(stage)} code indices per step (one per "
                      f"{unit_name(stage)}), got shape {indices_hu.shape}")
  if indices_hu.size and (indices_hu.min() < 0 or indices_hu.max() >= len(codebook)):
    raise ConfigError(f"code indices must lie in [0, {len(codebook)}), got "
                      f"{indices_hu.min()}..{indices_hu.max()}")
  return pack_units(stage, codebook[indices_hu])


def parse_actions(stage, text: str) -> np.ndarray:
  """--actions "0,1;2,3" (steps split by ';', units by ',') -> code indices [H, U]."""
  units, codes = num_units(stage), len(_require_codebook(stage))
  example = ";".join([",".join(["0"] * units)] * 2)
  steps = text.replace(" ", "").split(";")
  if steps and steps[-1] == "":
    steps = steps[:-1]
  if not steps:
    raise ConfigError(f"--actions is empty; give {units} code indices per step, e.g. "
                      f"--actions \"{example}\"")
  rows = []
  for i, step in enumerate(steps):
    values = step.split(",")
    if len(values) != units:
      raise ConfigError(
          f"--actions step {i + 1} ({step!r}) gives {len(values)} code indices but this "
          f"{_variant(stage)} model takes {units} per step (one per {unit_name(stage)}); "
          f"separate {unit_name(stage)}s by ',' and steps by ';', e.g. \"{example}\"")
    try:
      row = [int(v) for v in values]
    except ValueError:
      raise ConfigError(f"--actions step {i + 1} ({step!r}) is not a list of integers; "
                        f"write e.g. \"{example}\"") from None
    for j, value in enumerate(row):
      if not 0 <= value < codes:
        raise ConfigError(
            f"--actions step {i + 1}: code {value} for {unit_name(stage)} {j} is out of range; "
            f"this model has {codes} codes per {unit_name(stage)} (0..{codes - 1})")
    rows.append(row)
  return np.asarray(rows, np.int64)


def sample_actions(stage, rng: jax.Array, steps: int, batch_shape: Sequence[int] = ()):
  """Random actions [*batch, H, K|1, A] and their code indices [*batch, H, U] (None: Gaussian).

  FSQ: uniform over the codebook; Gaussian: the N(0, I) prior; wm: uniform ground-truth actions.
  """
  shape = tuple(batch_shape) + (steps, num_units(stage))
  if _variant(stage) == "wm":
    indices = np.asarray(jax.random.randint(rng, shape, 0, stage.model.num_agent_actions))
    return actions_from_indices(stage, indices.reshape(-1, shape[-1])).reshape(
        shape[:-1] + (1, -1)), indices
  kind = stage.config.lam.action_kind
  if kind == "fsq":
    levels = stage.model.action_bottleneck_levels
    codes = latent_action.sample_random_actions(kind, rng, shape, levels)
    return np.asarray(codes), np.asarray(fsq.codes_to_indices(codes, levels))
  return np.asarray(latent_action.sample_random_actions(
      kind, rng, shape, stage.model.action_width)), None


# ---- Compiled pieces (one jit each; shapes retrace per H and batch). ----
def _fns(stage):
  if stage in _JITTED:
    return _JITTED[stage]
  model, tokenizer = stage.model, stage.tokenizer
  grid, n = stage.grid, stage.num_patches
  codebook = jnp.asarray(stage.codebook)
  classification = stage.config.lam.aggregator_mode == "classification"
  call = lambda params, *args, method: model.apply({"params": params}, *args, method=method)

  def encode(tok_params, frames_tHWc):  # -> z_q [T, N, Dz], tokens [T, N]
    z_q, tokens = tokenizer.apply({"params": tok_params}, frames_tHWc, method=Tokenizer.encode)
    t = frames_tHWc.shape[0]
    return z_q.reshape(t, n, -1), tokens.reshape(t, n)

  def decode(tok_params, features_mnd):  # -> pixels [M, H, W, 3] in [0, 1]
    z_q = features_mnd.reshape((features_mnd.shape[0],) + grid + (-1,))
    pixels = tokenizer.apply({"params": tok_params}, z_q, method=Tokenizer.decode)
    return jnp.clip(pixels, 0.0, 1.0)

  def rollout(params, tok_params, start_HWc, actions_bhka):
    b, h = actions_bhka.shape[:2]
    z_q, _ = encode(tok_params, start_HWc[None])  # [1, N, Dz]
    entities, masks = call(params, z_q[None], method=LatentActionWorldModel.entities)
    k, d = entities.shape[2:]
    start_bkd = jnp.broadcast_to(entities[:, 0], (b, k, d))
    predicted = call(params, start_bkd, actions_bhka, method=LatentActionWorldModel.rollout)
    predicted_mkd = predicted.reshape(b * h, k, d)  # [B*H, K, D]
    if classification:
      tokens_mn = call(params, predicted_mkd, method=LatentActionWorldModel.decode_tokens)
      features = codebook[tokens_mn]
      tokens = tokens_mn.reshape(b, h, n)
    else:
      features = call(params, predicted_mkd, method=LatentActionWorldModel.aggregate)
      tokens = None
    pixels = decode(tok_params, jnp.concatenate([z_q, features.astype(z_q.dtype)]))
    first = jnp.broadcast_to(pixels[:1][None], (b, 1) + pixels.shape[1:])
    frames = jnp.concatenate([first, pixels[1:].reshape((b, h) + pixels.shape[1:])], axis=1)
    return dict(frames=frames, tokens=tokens, features=features.reshape(b, h, n, -1),
                masks=None if masks is None else masks[0, 0])

  def infer(params, tok_params, frames_tHWc, gt_actions_tm):
    z_q, tokens = encode(tok_params, frames_tHWc)
    entities, masks = call(params, z_q[None], method=LatentActionWorldModel.entities)
    gt = None if gt_actions_tm is None else gt_actions_tm[None]
    acts = call(params, entities, gt, method=LatentActionWorldModel.infer_actions)
    return dict(actions=acts["actions"][0],
                indices=None if acts["indices"] is None else acts["indices"][0],
                masks=None if masks is None else masks[0], reconstruction=decode(tok_params, z_q),
                tokens=tokens)

  fns = dict(rollout=jax.jit(rollout), infer=jax.jit(infer))
  _JITTED[stage] = fns
  return fns


def as_frames(stage, frames) -> np.ndarray:
  """uint8 [0, 255] or float [0, 1] frames [..., S, S, 3] -> float32 in [0, 1]; checks the size."""
  frames = np.asarray(frames)
  size = stage.config.data.image_size
  if frames.shape[-3:] != (size, size, 3):
    raise DataError(f"frames are {frames.shape[-3:]} but the model was trained on "
                    f"{size}x{size} RGB frames; resize them to ({size}, {size}, 3)")
  if frames.dtype == np.uint8:
    return frames.astype(np.float32) / 255.0
  return frames.astype(np.float32)


def rollout(stage, params, start_frame_HWc, actions_bhka) -> dict:
  """B rollouts of H steps from one start frame, in one compiled call.

  Returns numpy dict(frames [B, H+1, H_px, W_px, 3] in [0, 1] (frame 0 is the tokenizer's
  reconstruction of the start frame), tokens [B, H, N] (classification; else None),
  features [B, H, N, Dz], masks [K, N] of the start frame (slot variants; else None)).
  """
  actions = jnp.asarray(actions_bhka, jnp.float32)
  if actions.ndim != 4:
    raise ValueError(f"actions must be [B, H, K|1, A], got {actions.shape}")
  out = _fns(stage)["rollout"](params, stage.tokenizer_params,
                               jnp.asarray(as_frames(stage, start_frame_HWc)), actions)
  return jax.tree.map(np.asarray, out)


def rollout_frames(stage, params, start_frame_HWc, actions_hka) -> np.ndarray:
  """One H-step rollout: start frame (uint8 or [0, 1]), actions [H, K|1, A] -> [H+1, H, W, 3]."""
  return rollout(stage, params, start_frame_HWc, np.asarray(actions_hka)[None])["frames"][0]


def infer_clip(stage, params, frames_tHWc, gt_actions=None) -> dict:
  """The IDM on a real clip: dict(actions [T-1, K|1, A], indices [T-1, U] or None,
  masks [T, K, N] or None, reconstruction [T, H, W, 3], tokens [T, N]); wm needs gt_actions."""
  if _variant(stage) == "wm":
    if gt_actions is None:
      raise ConfigError("the wm variant is driven by ground-truth actions; pass the clip's "
                        "actions [T-1, agents]")
    gt_actions = jnp.asarray(gt_actions, jnp.int32)
  else:
    gt_actions = None
  out = _fns(stage)["infer"](params, stage.tokenizer_params,
                             jnp.asarray(as_frames(stage, frames_tHWc)), gt_actions)
  out = jax.tree.map(np.asarray, out)
  if _variant(stage) == "wm":
    out["indices"] = np.asarray(gt_actions)
  return out


def reference_units(stage, params, start_frame_HWc) -> np.ndarray:
  """The fixed "no change" action [U, a] of the units a control-grid row does not move.

  Latent actions: what the IDM infers for each slot between two copies of the start frame
  (for FSQ a code of the codebook, for Gaussian the posterior mean). wm: "stay".
  """
  if _variant(stage) == "wm":
    eye = np.eye(stage.model.num_agent_actions, dtype=np.float32)
    return np.tile(eye[WM_REFERENCE_ACTION], (num_units(stage), 1))
  start = as_frames(stage, start_frame_HWc)
  return infer_clip(stage, params, np.stack([start, start]))["actions"][0]  # [K|1, A]


# ---- Pictures. ----
def _upsample_masks(stage, masks_tkn, size: int) -> np.ndarray:
  masks = np.asarray(masks_tkn, np.float32)
  scale = size // stage.grid[0]
  masks = masks.reshape(masks.shape[:-1] + tuple(stage.grid))
  return masks.repeat(scale, axis=-2).repeat(scale, axis=-1)  # [T, K, H, W]


def mask_overlay(stage, masks_tkn, frames_tHWc) -> np.ndarray:
  """Slot masks coloured per slot (SLOT_COLORS) over the frames, as in Figs. 7-9."""
  frames = np.asarray(frames_tHWc, np.float32)
  masks = _upsample_masks(stage, masks_tkn, frames.shape[1])
  colors = SLOT_COLORS[np.arange(masks.shape[1]) % len(SLOT_COLORS)]
  return np.einsum("tkhw,kc->thwc", masks, colors) * 0.7 + frames * 0.3


def _single_slot_highlight(stage, masks_kn, frame_HWc) -> np.ndarray:
  """[K, H, W, 3]: the frame with only slot k's mask painted in its colour."""
  masks = _upsample_masks(stage, masks_kn[None], frame_HWc.shape[0])[0][..., None]  # [K,H,W,1]
  colors = SLOT_COLORS[np.arange(masks.shape[0]) % len(SLOT_COLORS)][:, None, None]
  return frame_HWc[None] * (1.0 - 0.8 * masks) + 0.8 * masks * colors


def slot_control_grid(stage, params, start_frame_HWc, steps: int, *, max_codes: int = 16,
                      seed: int = 0, reference_ua=None):
  """Fig. 4 as a grid: row i moves unit i through every code, the other units stay fixed.

  Cell (i, c) is the final frame of an H-step rollout in which unit i (slot, or agent for
  wm) takes code c at every step while every other unit takes its reference action
  (`reference_units`: the IDM's action between two copies of the start frame, wm "stay").
  lam / oc_lam have one scene action, so one row. Columns are the first `max_codes` codes,
  or, for Gaussian actions, `max_codes` draws from the N(0, I) prior (seeded, the same
  draws in every row). All R*C rollouts run as one batch in one compiled call.

  The picture: a header row with the start frame's reconstruction and (slot variants) its
  slot masks coloured per slot; then one row per unit, led by the start frame with that
  slot's mask painted in its colour (or the plain reconstruction).

  Returns:
    (picture uint8, dict(final [R, C, H, W, 3], frames [R, C, H+1, H, W, 3],
    columns [C, a], reference [U, a], masks [K, N] or None)).
  """
  codebook = unit_codebook(stage)
  units = num_units(stage)
  if codebook is None:
    columns = np.asarray(jax.random.normal(jax.random.PRNGKey(seed),
                                           (max_codes, stage.model.action_width)))
  else:
    columns = codebook[:max_codes]
  ref = (reference_units(stage, params, start_frame_HWc) if reference_ua is None
         else np.asarray(reference_ua, np.float32))
  r, c = units, len(columns)
  chosen = np.eye(units, dtype=bool)[:, None, :, None]  # [R, 1, U, 1]
  units_rcua = np.where(chosen, columns[None, :, None, :], ref[None, None])  # [R, C, U, a]
  actions = pack_units(stage, units_rcua).reshape((r * c, 1) + pack_units(stage, ref).shape)
  actions = np.repeat(actions, steps, axis=1)  # [R*C, H, K|1, A]
  out = rollout(stage, params, start_frame_HWc, actions)
  frames = out["frames"].reshape((r, c) + out["frames"].shape[1:])
  final = frames[:, :, -1]
  start = frames[0, 0, 0]
  if out["masks"] is not None:
    header = [start, mask_overlay(stage, out["masks"][None], start[None])[0]]
    leads = (_single_slot_highlight(stage, out["masks"], start) if units == out["masks"].shape[0]
             else np.repeat(start[None], r, axis=0))
  else:
    header, leads = [start], np.repeat(start[None], r, axis=0)
  rows = [np.stack(header)] + [np.concatenate([leads[i][None], final[i]]) for i in range(r)]
  arrays = dict(final=final, frames=frames, columns=columns, reference=ref, masks=out["masks"])
  return images.grid(rows), arrays


def figure_rollout(stage, params, frames_tHWc, gt_actions=None):
  """Figs. 7-9: rows = ground truth, slot masks over the frames (slot variants),
  tokenizer reconstruction, prediction (rolled from frame 0 with the IDM's actions).

  Returns (picture uint8, dict(ground_truth, masks, reconstruction, prediction [T, H, W, 3],
  indices)); the prediction row starts with a blank where the start frame is.
  """
  truth = as_frames(stage, frames_tHWc)
  inferred = infer_clip(stage, params, truth, gt_actions)
  predicted = rollout_frames(stage, params, truth[0], inferred["actions"])  # [T, ...]
  blank = np.ones_like(truth[:1])
  prediction = np.concatenate([blank, predicted[1:]])
  rows = [truth]
  if inferred["masks"] is not None:
    rows.append(mask_overlay(stage, inferred["masks"], inferred["reconstruction"]))
  rows += [inferred["reconstruction"], prediction]
  return images.grid(rows), dict(ground_truth=truth, masks=inferred["masks"],
                                 reconstruction=inferred["reconstruction"],
                                 prediction=predicted, indices=inferred["indices"])


# ---- Inputs. ----
def load_image(path: str, size: int) -> np.ndarray:
  """A start frame from an image file: uint8 [size, size, 3]; one-line errors."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      frame = np.asarray(image.convert("RGB"))
  except FileNotFoundError:
    raise DataError(f"--image {path} does not exist") from None
  except (UnidentifiedImageError, OSError) as e:
    raise DataError(f"--image {path} is not a readable image ({type(e).__name__})") from None
  if frame.shape[:2] != (size, size):
    raise DataError(f"--image {path} is {frame.shape[1]}x{frame.shape[0]} pixels but the model "
                    f"was trained on {size}x{size} frames; resize it to {size}x{size}")
  return frame


def load_clip(stage, split: str, episode: int, start: int, steps: Optional[int],
              need_steps: bool):
  """A dataset clip from frame `start`: (frames uint8 [T, S, S, 3], actions [T-1, agents], H).

  With `need_steps` (the clip's actions or frames are used: --infer, --figure) the episode
  must hold H frames after the start (H defaults to what it holds, at most 8); otherwise
  H defaults to 8 and the clip holds what the episode has, up to H + 1 frames.
  """
  data_dir = stage.config.data.dir
  source = pipeline.WindowSource(data_dir, split, window_length=1, fields=("frames", "actions"))
  if not 0 <= episode < source.num_episodes:
    raise DataError(f"--episode {episode} is out of range: split {split!r} of {data_dir} has "
                    f"{source.num_episodes} episodes (0..{source.num_episodes - 1})")
  data = source.read_episode(episode)
  length = data["frames"].shape[0]
  if not 0 <= start < length - (1 if need_steps else 0):
    raise DataError(f"--start {start} is out of range: episodes have {length} frames "
                    f"(0..{length - (2 if need_steps else 1)})")
  available = length - 1 - start
  if steps is None:
    steps = min(8, available) if need_steps else 8
  elif need_steps and steps > available:
    raise DataError(f"--steps {steps} from --start {start} runs past the episode's {length} "
                    f"frames (--infer and --figure compare with the real clip); use --steps "
                    f"<= {available} or an earlier --start")
  stop = start + min(steps, available)
  return data["frames"][start:stop + 1], data["actions"][start:stop], steps


# ---- CLI. ----
def _define_flags() -> None:
  """The CLI's flags; defined only when run as a program, so importing defines none."""
  flags.DEFINE_string("workdir", None, "Workdir of a trained latent action model.")
  flags.DEFINE_integer("checkpoint_step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_integer("steps", None, "Rollout length H (default 8, or what the clip allows).")
  flags.DEFINE_string("split", "test", "Dataset split of the start frame.")
  flags.DEFINE_integer("episode", 0, "Episode of the start frame.")
  flags.DEFINE_integer("start", 0, "Index of the start frame in the episode.")
  flags.DEFINE_string("image", None, "Start frame from an image file instead of the dataset.")
  flags.DEFINE_string(
      "actions", None, "Code indices per step and unit: units split by ',', steps by ';' "
      "(e.g. \"0,1;2,3\"); a single step is repeated --steps times.")
  flags.DEFINE_bool("sample", False, "Random actions (codebook or prior); the default.")
  flags.DEFINE_bool("infer", False, "Actions the IDM infers from the real clip; also writes "
                    "the ground truth beside the rollout.")
  flags.DEFINE_bool("control_grid", False, "Also write control_grid.png (slots x codes).")
  flags.DEFINE_bool("figure", False, "Also write figure.png (Figs. 7-9 style).")
  flags.DEFINE_integer("max_codes", 16, "Control grid columns (codes, or prior draws).")
  flags.DEFINE_string("out", None, "Output directory (default <workdir>/generate).")
  flags.DEFINE_integer("fps", 4, "GIF frames per second.")
  flags.DEFINE_integer("upscale", 0, "Pixel upscaling of the outputs (0: to at least 128 px).")
  flags.DEFINE_integer("seed", 0, "Seed of --sample and of Gaussian control grid columns.")


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


def _format_indices(indices) -> str:
  return ";".join(",".join(str(int(v)) for v in row) for row in np.asarray(indices))


def generate(workdir: str, *, steps=None, split="test", episode=0, start=0, image=None,
             actions=None, sample=False, infer=False, control_grid=False, figure=False,
             max_codes=16, out=None, fps=4, upscale=0, seed=0, checkpoint_step=None) -> dict:
  """The CLI's work: loads the model, rolls out, writes pictures; returns {name: path}."""
  modes = [name for name, on in (("--actions", actions is not None), ("--sample", sample),
                                 ("--infer", infer)) if on]
  if len(modes) > 1:
    raise ConfigError(f"{' and '.join(modes)} are exclusive; pick one way to choose actions")
  if image is not None and (infer or figure):
    raise ConfigError("--infer and --figure need a real clip; drop --image and pick one with "
                      "--split/--episode/--start")
  if steps is not None and steps < 1:
    raise ConfigError(f"--steps {steps}; use at least 1")
  stage, params, step = lam_stage.load_trained(workdir, checkpoint_step)
  indices = None if actions is None else parse_actions(stage, actions)
  if indices is not None:
    if len(indices) == 1 and steps is not None:
      indices = np.repeat(indices, steps, axis=0)
    elif steps is not None and steps != len(indices):
      raise ConfigError(f"--actions gives {len(indices)} steps but --steps is {steps}; give one "
                        "step (repeated) or as many as --steps")
    steps = len(indices)
  size = stage.config.data.image_size
  clip = gt_actions = None
  if image is not None:
    start_frame = load_image(image, size)
    steps = 8 if steps is None else steps
  else:
    clip, gt_actions, steps = load_clip(stage, split, episode, start, steps,
                                        need_steps=infer or figure)
    start_frame = clip[0]
  print(f"{stage.config.lam.variant} model, checkpoint step {step}; {steps} steps from "
        f"{image or f'{split} episode {episode} frame {start}'}", flush=True)

  if infer:
    inferred = infer_clip(stage, params, clip, gt_actions)
    model_actions, indices = inferred["actions"], inferred["indices"]
  elif indices is not None:
    model_actions = actions_from_indices(stage, indices)
  else:
    model_actions, indices = sample_actions(stage, jax.random.PRNGKey(seed), steps)
  if indices is not None:
    print(f"actions (code per {unit_name(stage)}, steps split by ';'): "
          f"--actions \"{_format_indices(indices)}\"")
  frames = rollout_frames(stage, params, start_frame, model_actions)

  out = os.path.abspath(out or os.path.join(workdir, "generate"))
  upscale = upscale or max(1, 128 // size)
  paths = {}
  strip_rows = [frames]
  if infer:
    truth = as_frames(stage, clip)
    strip_rows = [truth, frames]
    paths["groundtruth.gif"] = images.save_gif(
        os.path.join(out, "groundtruth.gif"), with_progress_bar(truth), fps=fps, upscale=upscale)
    side = np.concatenate([truth, np.ones_like(truth[:, :, :2]), frames], axis=2)
    paths["comparison.gif"] = images.save_gif(
        os.path.join(out, "comparison.gif"), with_progress_bar(side), fps=fps, upscale=upscale)
  paths["rollout.gif"] = images.save_gif(
      os.path.join(out, "rollout.gif"), with_progress_bar(frames), fps=fps, upscale=upscale)
  paths["rollout.png"] = images.save_png(os.path.join(out, "rollout.png"),
                                         images.grid(strip_rows), upscale=upscale)
  if control_grid:
    picture, _ = slot_control_grid(stage, params, start_frame, steps, max_codes=max_codes,
                                   seed=seed)
    paths["control_grid.png"] = images.save_png(os.path.join(out, "control_grid.png"), picture,
                                                upscale=upscale)
  if figure:
    picture, _ = figure_rollout(stage, params, clip, gt_actions)
    paths["figure.png"] = images.save_png(os.path.join(out, "figure.png"), picture,
                                          upscale=upscale)
  for name, path in paths.items():
    print(f"  {name:17s} {path}")
  return paths


USAGE = ("python -m flam_jax.generate --workdir=<trained workdir> [--actions=\"0,1;2,3\" | "
         "--sample | --infer] [--control_grid] [--figure] [--out=<dir>]")


def main(argv):
  del argv  # Stray arguments are refused by cli.run.
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  if not f.workdir:
    raise ConfigError("--workdir is required: the workdir of a trained latent action model")
  filesystem.check_output_dir(f.out or os.path.join(f.workdir, "generate"), "--out")
  generate(f.workdir, steps=f.steps, split=f.split, episode=f.episode, start=f.start,
           image=f.image, actions=f.actions, sample=f.sample, infer=f.infer,
           control_grid=f.control_grid, figure=f.figure, max_codes=f.max_codes, out=f.out,
           fps=f.fps, upscale=f.upscale, seed=f.seed, checkpoint_step=f.checkpoint_step)


if __name__ == "__main__":
  _define_flags()
  cli.run(main, USAGE)

"""Actions a user chooses for generation, per "control unit" (see flam_jax.lib.variants).

A unit is a slot (flam), the one scene action (lam, oc_lam) or an agent's ground-truth
action (wm, one-hot over its actions). Actions come from code indices (the FSQ
codebook, or wm's action ids), random draws (`rollout.sample_actions`) or the IDM
applied to a real clip (`rollout.infer_clip`).

`loaded` below is anything with `config`, `model` and `num_agents` (a
`models.LoadedWorldModel`); `reference_units` also needs the loaded tokenizer.
"""

from typing import Optional, Sequence

import jax
import numpy as np

from flam_jax.data import multigrid
from flam_jax.errors import ConfigError
from flam_jax.lib import rollout, variants
from flam_jax.modules import fsq

# WM's reference action for the agents a control grid row does not move.
WM_REFERENCE_ACTION = multigrid.STAY


def _spec(loaded) -> variants.VariantSpec:
  return variants.variant_spec(loaded.model.variant)


def unit_name(loaded) -> str:
  return _spec(loaded).unit_name


def num_units(loaded) -> int:
  """Actions chosen per step: K slots (flam), 1 scene action (lam, oc_lam), agents (wm)."""
  return rollout.num_units(loaded.model)


def unit_codebook(loaded) -> Optional[np.ndarray]:
  """[C, a] action vector of each code a unit can take; None for Gaussian (continuous) actions."""
  if not _spec(loaded).latent_actions:
    return np.eye(loaded.model.num_agent_actions, dtype=np.float32)
  if loaded.model.action_kind == "gaussian":
    return None
  return np.asarray(fsq.all_codes(loaded.model.action_bottleneck_levels), np.float32)


def pack_units(loaded, units_ua):
  """Per-unit actions [..., U, a] -> the model's actions [..., K|1, A] (wm: agents concatenated)."""
  units_ua = np.asarray(units_ua, np.float32)
  if not _spec(loaded).latent_actions:
    return units_ua.reshape(units_ua.shape[:-2] + (1, -1))
  return units_ua


def _require_codebook(loaded) -> np.ndarray:
  codebook = unit_codebook(loaded)
  if codebook is None:
    raise ConfigError(
        "code indices need a discrete latent action codebook, but this model's actions are "
        "continuous (lam.action_kind='gaussian'); use --sample or --infer instead of --actions")
  return codebook


def actions_from_indices(loaded, indices_hu) -> np.ndarray:
  """Code indices [H, U] -> actions [H, K|1, A] (FSQ codes, or wm one-hot actions)."""
  codebook = _require_codebook(loaded)
  indices_hu = np.asarray(indices_hu, np.int64)
  if indices_hu.ndim != 2 or indices_hu.shape[1] != num_units(loaded):
    raise ConfigError(f"actions need {num_units(loaded)} code indices per step (one per "
                      f"{unit_name(loaded)}), got shape {indices_hu.shape}")
  if indices_hu.size and (indices_hu.min() < 0 or indices_hu.max() >= len(codebook)):
    raise ConfigError(f"code indices must lie in [0, {len(codebook)}), got "
                      f"{indices_hu.min()}..{indices_hu.max()}")
  return pack_units(loaded, codebook[indices_hu])


def _parse_step(loaded, i: int, step: str, codes: int, example: str):
  """One ';'-separated step of --actions -> its code indices [U]."""
  units, unit = num_units(loaded), unit_name(loaded)
  values = step.split(",")
  if len(values) != units:
    raise ConfigError(
        f"--actions step {i + 1} ({step!r}) gives {len(values)} code indices but this "
        f"{loaded.model.variant} model takes {units} per step (one per {unit}); "
        f"separate {unit}s by ',' and steps by ';', e.g. \"{example}\"")
  try:
    row = [int(v) for v in values]
  except ValueError:
    raise ConfigError(f"--actions step {i + 1} ({step!r}) is not a list of integers; "
                      f"write e.g. \"{example}\"") from None
  for j, value in enumerate(row):
    if not 0 <= value < codes:
      raise ConfigError(
          f"--actions step {i + 1}: code {value} for {unit} {j} is out of range; "
          f"this model has {codes} codes per {unit} (0..{codes - 1})")
  return row


def parse_actions(loaded, text: str) -> np.ndarray:
  """--actions "0,1;2,3" (steps split by ';', units by ',') -> code indices [H, U]."""
  units, codes = num_units(loaded), len(_require_codebook(loaded))
  example = ";".join([",".join(["0"] * units)] * 2)
  steps = text.replace(" ", "").split(";")
  if steps and steps[-1] == "":
    steps = steps[:-1]
  if not steps:
    raise ConfigError(f"--actions is empty; give {units} code indices per step, e.g. "
                      f"--actions \"{example}\"")
  return np.asarray([_parse_step(loaded, i, step, codes, example)
                     for i, step in enumerate(steps)], np.int64)


def sample_actions(loaded, rng: jax.Array, steps: int, batch_shape: Sequence[int] = ()):
  """Random actions [*batch, H, K|1, A] and their code indices [*batch, H, U] (None: Gaussian)."""
  shape = tuple(batch_shape) + (steps, num_units(loaded))
  actions, indices = rollout.sample_actions(loaded.model, rng, shape)
  return np.asarray(actions), None if indices is None else np.asarray(indices)


def reference_units(loaded, params, start_frame_HWc) -> np.ndarray:
  """The fixed "no change" action [U, a] of the units a control-grid row does not move.

  Latent actions: what the IDM infers for each slot between two copies of the start frame
  (for FSQ a code of the codebook, for Gaussian the posterior mean). wm: "stay".
  """
  if not _spec(loaded).latent_actions:
    eye = np.eye(loaded.model.num_agent_actions, dtype=np.float32)
    return np.tile(eye[WM_REFERENCE_ACTION], (num_units(loaded), 1))
  start = rollout.as_frames(loaded, start_frame_HWc)
  return rollout.infer_clip(loaded, params, np.stack([start, start]))["actions"][0]  # [K|1, A]


def format_indices(indices) -> str:
  """Code indices [H, U] as an --actions argument."""
  return ";".join(",".join(str(int(v)) for v in row) for row in np.asarray(indices))

"""What differs between FLAM and its baselines outside the model, written once as data.

| variant  | entities         | actions come from            | a control unit is |
|----------|------------------|------------------------------|-------------------|
| `flam`   | K slots (masks)  | the IDM, one latent per slot | a slot            |
| `lam`    | N patch tokens   | the IDM, one scene latent    | the scene action  |
| `oc_lam` | K slots (masks)  | the IDM, one scene latent    | the scene action  |
| `wm`     | N patch tokens   | the agents' true actions     | an agent          |

Evaluation, generation and the training pictures ask a `VariantSpec` instead of
comparing variant names.
"""

import dataclasses

from flam_jax.errors import ConfigError

SLOT_ACTIONS, SCENE_ACTION, GROUND_TRUTH = "per_slot", "scene", "ground_truth"


@dataclasses.dataclass(frozen=True)
class VariantSpec:
  """Attributes:
    name: the config.lam.variant.
    slot_entities: entities are Slot Attention slots (slot masks, ARI-FG, disentanglement).
    action_source: SLOT_ACTIONS, SCENE_ACTION or GROUND_TRUTH.
    unit_name: what one user-chosen action drives in generation.
  """

  name: str
  slot_entities: bool
  action_source: str
  unit_name: str

  @property
  def latent_actions(self) -> bool:
    """Actions are inferred by the IDM (and can be probed), not given."""
    return self.action_source != GROUND_TRUTH

  def num_units(self, num_slots: int, num_agents: int) -> int:
    """Actions chosen per step: K slots, 1 scene action, or every agent's action."""
    return {SLOT_ACTIONS: num_slots, SCENE_ACTION: 1,
            GROUND_TRUTH: num_agents}[self.action_source]


VARIANT_SPECS = {
    "flam": VariantSpec("flam", True, SLOT_ACTIONS, "slot"),
    "lam": VariantSpec("lam", False, SCENE_ACTION, "scene action"),
    "oc_lam": VariantSpec("oc_lam", True, SCENE_ACTION, "scene action"),
    "wm": VariantSpec("wm", False, GROUND_TRUTH, "agent"),
}


def variant_spec(variant: str) -> VariantSpec:
  if variant not in VARIANT_SPECS:
    raise ConfigError(f"config.lam.variant={variant!r} is not one of {tuple(VARIANT_SPECS)}")
  return VARIANT_SPECS[variant]

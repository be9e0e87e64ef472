"""The training state: everything the optimizer loop carries, as one pytree."""

from typing import Any

import flax
import jax


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of optimizer updates applied.
  params: Any
  opt_state: Any

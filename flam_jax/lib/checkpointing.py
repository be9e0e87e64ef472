"""Orbax checkpoints of model, optimizer, step, data-iterator state and config, together.

Layout: `<stage_dir>/checkpoints/<step>/{state,data_iter,config}`. Orbax writes each
step into a temporary directory and renames it when complete, so a run killed
mid-save never leaves a half-written checkpoint that looks like the latest one.
Re-running the same command resumes from the latest complete step.
"""

import json
import os
from typing import Any, Iterable, Optional

import grain
import jax
import orbax.checkpoint as ocp
from ml_collections import ConfigDict

from flam_jax.errors import CheckpointError
from flam_jax.lib.config_utils import flatten_dict


def _normalise(value):
  # JSON turns tuples into lists; compare structurally.
  return json.loads(json.dumps(value))


def _lookup(tree: dict, dotted: str):
  for part in dotted.split("."):
    if not isinstance(tree, dict) or part not in tree:
      return None
    tree = tree[part]
  return tree


def check_compatible(saved_config: dict, config: ConfigDict, keys: Iterable[str], where: str,
                     ignored: Iterable[str] = ()) -> None:
  """Raises CheckpointError naming the first config key (under dotted `keys`) that differs.

  `ignored`: dotted keys that change how a step runs but not what it computes (e.g.
  lam.remat), so a run may resume with them changed or missing from an older checkpoint.
  """
  current_config = _normalise(config.to_dict())
  saved = flatten_dict({k: _lookup(saved_config, k) for k in keys})
  current = flatten_dict({k: _lookup(current_config, k) for k in keys})
  for name in sorted((set(saved) | set(current)) - set(ignored)):
    if _normalise(saved.get(name)) != current.get(name):
      raise CheckpointError(
          f"checkpoint in {where} was written with config.{name}={saved.get(name)!r} but the "
          f"config now has {current.get(name)!r}; use a new --workdir, or set "
          f"--config.{name} back to match the checkpoint")


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` for one training stage."""

  def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_iter: Optional[Any], config: ConfigDict,
           force: bool = False) -> bool:
    items = dict(state=ocp.args.StandardSave(state),
                 config=ocp.args.JsonSave(_normalise(config.to_dict())))
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore_config(self, step: Optional[int] = None) -> dict:
    step = self.latest_step() if step is None else step
    try:
      return self._manager.restore(
          step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"cannot read the config of checkpoint {step} in {self.directory} ({type(e).__name__}); "
          "it is damaged or from another tool: delete it or use a new --workdir") from e

  def restore(self, abstract_state: Any, data_iter: Optional[Any] = None,
              step: Optional[int] = None) -> Any:
    """Restores the state (into the shardings of `abstract_state`) and the iterator in place."""
    step = self.latest_step() if step is None else step
    items = dict(state=ocp.args.StandardRestore(abstract_state))
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      first_line = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
      raise CheckpointError(
          f"checkpoint {step} in {self.directory} does not fit the current model ({first_line}); "
          "use a new --workdir or the config it was trained with") from e
    return restored.state

  def restore_params(self, step: Optional[int] = None) -> Any:
    """The saved parameters as numpy arrays, without a target structure (frozen reuse)."""
    step = self.latest_step() if step is None else step
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return restored.state["params"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def reached_preemption(self, step: int) -> bool:
    """True on every process once any process got a preemption notice (multi-host)."""
    return jax.process_count() > 1 and self._manager.reached_preemption(step)

  def close(self) -> None:
    self._manager.close()

"""Orbax checkpoints of model, optimizer, step, data-iterator state and config, together.

Layout: `<stage_dir>/checkpoints/<step>/{state,data_iter,config,integrity}`. Orbax writes
each step into a temporary directory and renames it when complete, so a run killed
mid-save never leaves a half-written checkpoint that looks like the latest one.
Re-running the same command resumes from the latest complete step.

Integrity (orbax keeps no checksums): `integrity` holds a CRC32 of every array of the
state, computed from the values being saved and written inside the same atomic save.
A restore recomputes them from what it read; a step whose arrays fail to load, differ
from the manifest or hold NaN/Inf parameters is damaged: restores fall back to the newest
good step with a one-line warning, and a training run moves the damaged newer steps to
`<stage_dir>/damaged_checkpoints/` (never deleting them). Old steps are deleted only
beyond `max_to_keep` *verified* steps (read back after their save finished), so a good
step is never deleted while a newer one is unverified.
"""

import json
import os
import shutil
import sys
import time
import zlib
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import grain
import jax
import numpy as np
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
                     ignored: Iterable[str] = (), defaults: Optional[Dict[str, Any]] = None,
                     fix: Optional[str] = None) -> None:
  """Raises CheckpointError naming the first config key (under dotted `keys`) that differs.

  `ignored`: dotted keys that change how a step runs but not what it computes (e.g.
  lam.remat), so a run may resume with them changed or missing from an older checkpoint.
  `defaults`: {dotted key: value} of keys added after some checkpoints were written: a
  saved config without the key was trained with that value (see with_defaults).
  `fix`: what the message tells the user to do (default: a new --workdir or the old value).
  """
  current_config = _normalise(config.to_dict())
  saved = flatten_dict({k: _lookup(saved_config, k) for k in keys})
  current = flatten_dict({k: _lookup(current_config, k) for k in keys})
  saved = with_defaults(saved, {k: v for k, v in (defaults or {}).items() if k in current})
  for name in sorted((set(saved) | set(current)) - set(ignored)):
    if _normalise(saved.get(name)) != current.get(name):
      raise CheckpointError(
          f"checkpoint in {where} was written with config.{name}={saved.get(name)!r} but the "
          f"config now has {current.get(name)!r}; " + (fix or (
              f"use a new --workdir, or set --config.{name} back to match the checkpoint")))


def with_defaults(flat: Dict[str, Any], defaults: Dict[str, Any]) -> Dict[str, Any]:
  """`flat` ({dotted key: value}) with each key of `defaults` it lacks set to its default:
  the value a config written before the key existed was trained with."""
  out = dict(flat)
  for name, value in defaults.items():
    out.setdefault(name, value)
  return out


INTEGRITY_VERSION = 1


def leaf_name(path) -> str:
  return jax.tree_util.keystr(path, simple=True, separator="/")


def array_checksums(tree: Any) -> Dict[str, str]:
  """{leaf path: CRC32 of its bytes} for every fully addressable array leaf of `tree`.

  Leaves of a TrainState and of the same state restored as nested dicts get the same
  names ("params/encoder/kernel"). Arrays split over several hosts are skipped (each
  host sees only its shards).
  """
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      continue
    value = np.ascontiguousarray(jax.device_get(leaf))
    out[leaf_name(path)] = f"{zlib.crc32(value.tobytes()) & 0xffffffff:08x}"
  return out


def tree_fingerprint(tree: Any) -> str:
  """CRC32 of `array_checksums(tree)`: names the exact parameters a cache was made with.

  Caches of derived data (tokens, latent actions) carry it in their tags, so a different
  model trained into the same workdir to the same step does not reuse a stale cache.
  """
  manifest = json.dumps(array_checksums(tree), sort_keys=True).encode()
  return f"{zlib.crc32(manifest) & 0xffffffff:08x}"


def nonfinite_leaves(tree: Any) -> List[str]:
  """Paths of floating-point leaves of `tree` holding NaN or Inf (fully addressable ones)."""
  bad = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      continue
    value = np.asarray(jax.device_get(leaf))
    if np.issubdtype(value.dtype, np.inexact) and not np.all(np.isfinite(value)):
      bad.append(leaf_name(path))
  return bad


def damage(restored: Any, manifest: Optional[dict], prefix: str = "") -> Optional[str]:
  """None, or why `restored` (a state or its subtree under `prefix`) is not what was saved."""
  bad = nonfinite_leaves(restored)
  if bad:
    return f"non-finite values in {prefix}{bad[0]}" + (f" and {len(bad) - 1} more" if bad[1:] else "")
  if manifest is None:
    return None  # Written before checksums existed: only the finiteness check applies.
  expected = {k[len(prefix):]: v for k, v in manifest["checksums"].items() if k.startswith(prefix)}
  actual = array_checksums(restored)
  for name in sorted(expected):
    if name in actual and actual[name] != expected[name]:
      return f"checksum mismatch in {prefix}{name}"
  missing = sorted(set(expected) - set(actual))
  if missing and not any(isinstance(l, jax.Array) and not l.is_fully_addressable
                         for l in jax.tree_util.tree_leaves(restored)):
    return f"array {prefix}{missing[0]} is missing"
  return None


def warn(message: str) -> None:
  """A one-line warning on stderr (process 0 only)."""
  if jax.process_index() == 0:
    print(f"warning: {' '.join(message.split())}", file=sys.stderr, flush=True)


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:200] if text else type(e).__name__


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` for one training stage, with integrity checks.

  `max_to_keep` counts verified steps (see the module docstring); older ones are deleted.
  """

  def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.max_to_keep = max_to_keep
    self._verified = set()  # Steps read back and found intact by this process.
    self._unverified = []  # Steps saved by this process, not read back yet.
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=None, create=True, enable_async_checkpointing=async_save))

  def latest_step(self) -> Optional[int]:
    """The newest complete step (not verified: see `latest_good_step`)."""
    return self._manager.latest_step()

  def all_steps(self) -> List[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iter: Optional[Any], config: ConfigDict,
           force: bool = False) -> bool:
    """Saves `step` (asynchronously); first verifies the previous save and prunes old steps."""
    self._verify_finished_saves()
    manifest = dict(version=INTEGRITY_VERSION, step=int(step), checksums=array_checksums(state))
    items = dict(state=ocp.args.StandardSave(state),
                 config=ocp.args.JsonSave(_normalise(config.to_dict())),
                 integrity=ocp.args.JsonSave(manifest))
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    saved = self._manager.save(step, args=ocp.args.Composite(**items), force=force)
    if saved:
      self._unverified.append(int(step))
    return saved

  def _manifest(self, step: int) -> Optional[dict]:
    """The integrity manifest of `step`; None for steps written before manifests existed."""
    if not os.path.isdir(os.path.join(self.directory, str(step), "integrity")):
      return None
    return self._manager.restore(
        step, args=ocp.args.Composite(integrity=ocp.args.JsonRestore())).integrity

  def fingerprint(self, step: Optional[int] = None) -> Optional[str]:
    """CRC32 of `step`'s integrity manifest (the checksums of every array it saved): tells a
    model trained again into the same directory to the same step from the one before, so
    caches keyed by it are not reused. None for a step saved before manifests existed."""
    step = self.latest_step() if step is None else step
    manifest = self._manifest(step)
    if manifest is None:
      return None
    checksums = json.dumps(manifest.get("checksums", {}), sort_keys=True).encode()
    return f"{zlib.crc32(checksums) & 0xffffffff:08x}"

  def restore_config(self, step: Optional[int] = None) -> dict:
    step = self.latest_step() if step is None else step
    try:
      return self._manager.restore(
          step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"cannot read the config of checkpoint {step} in {self.directory} ({type(e).__name__}); "
          "it is damaged or from another tool: delete it or use a new --workdir") from e

  def _read(self, step: int, items: dict, prefix: str = "") -> Tuple[Any, Optional[str]]:
    """(restored Composite, None) or (None, why step is damaged)."""
    try:
      manifest = self._manifest(step)
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      return None, f"{type(e).__name__}: {_first_line(e)}"
    state = restored.state if not prefix else restored.state[prefix.rstrip("/")]
    why = damage(state, manifest, prefix)
    return (None, why) if why else (restored, None)

  def _newest_good(self, read: Callable[[int], Tuple[Any, Optional[str]]],
                   step: Optional[int], what: str) -> Tuple[Any, int, List[int]]:
    """(restored, step, damaged newer steps): tries `step`, or every step newest first."""
    steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)
    if not steps:
      raise CheckpointError(f"no complete checkpoint in {self.directory}")
    damaged, first_reason = [], None
    for candidate in steps:
      restored, why = read(candidate)
      if why is None:
        self._verified.add(candidate)
        return restored, candidate, damaged
      first_reason = first_reason or why
      damaged.append(candidate)
      if step is None:
        warn(f"checkpoint {candidate} in {self.directory} is damaged ({why}); "
             f"trying the previous step")
    raise CheckpointError(
        f"no usable {what} in {self.directory}: step(s) {damaged} are damaged or do not fit the "
        f"current model (newest: {first_reason}); use a new --workdir or the config and code "
        "it was trained with")

  def restore(self, abstract_state: Any, data_iter: Optional[Any] = None,
              step: Optional[int] = None,
              check_config: Optional[Callable[[dict], None]] = None) -> Any:
    """Restores the newest good state (into the shardings of `abstract_state`) and the iterator.

    With `step` None, damaged newer steps are moved to `damaged_checkpoints/` next to this
    directory (after a warning) so that training can save those step numbers again.
    `check_config(saved_config)` raises for a checkpoint of an incompatible config: that
    is the user's to fix, not damage, so it stops the restore instead of falling back.
    """
    items = dict(state=ocp.args.StandardRestore(abstract_state))
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)

    def read(candidate):
      try:
        saved_config = self.restore_config(candidate)
      except CheckpointError as e:
        return None, _first_line(e.__cause__ or e)
      if check_config is not None:
        check_config(saved_config)
      return self._read(candidate, items)

    restored, good, damaged = self._newest_good(read, step, "checkpoint")
    if damaged and step is None:
      self._quarantine(damaged, good)
    return restored.state

  def _quarantine(self, steps: List[int], good: int) -> None:
    """Moves damaged steps newer than the good one out of the way (kept for inspection)."""
    if jax.process_index() == 0:
      target_dir = os.path.join(os.path.dirname(self.directory), "damaged_checkpoints")
      os.makedirs(target_dir, exist_ok=True)
      for step in steps:
        target = os.path.join(target_dir, f"{step}.{int(time.time())}")
        shutil.move(os.path.join(self.directory, str(step)), target)
        warn(f"moved damaged checkpoint {step} to {target}; resuming from step {good}")
    if jax.process_count() > 1:  # Every process lists the steps only after the move.
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("flam_jax_checkpoint_quarantine")
    self._manager.reload()

  def restore_params(self, step: Optional[int] = None) -> Any:
    """The saved parameters as numpy arrays, without a target structure (frozen reuse).

    `step` None: the newest good step (falling back with a warning); an explicit step that
    is damaged raises CheckpointError.
    """
    params, _ = self.restore_params_and_step(step)
    return params

  def restore_params_and_step(self, step: Optional[int] = None) -> Tuple[Any, int]:
    items = dict(state=ocp.args.StandardRestore())
    restored, good, _ = self._newest_good(
        lambda candidate: self._read(candidate, items, prefix="params/"), step, "parameters")
    return restored.state["params"], good

  def latest_good_step(self) -> Optional[int]:
    """The newest step whose parameters restore intact (reads them), or None if none does."""
    if not self.all_steps():
      return None
    try:
      return self.restore_params_and_step()[1]
    except CheckpointError:
      return self.latest_step()  # Let the caller's restore report why.

  def _verify_finished_saves(self) -> None:
    """Reads back the steps this process saved, then deletes steps beyond max_to_keep."""
    if not self._unverified:
      return
    self._manager.wait_until_finished()
    items = dict(state=ocp.args.StandardRestore())
    for step in self._unverified:
      _, why = self._read(step, items)
      if why is None:
        self._verified.add(step)
      else:
        warn(f"checkpoint {step} in {self.directory} did not read back intact ({why}); "
             "keeping the older steps")
    self._unverified = []
    self._prune()

  def _prune(self) -> None:
    """Deletes steps older than the max_to_keep-th newest verified step."""
    if not self.max_to_keep:
      return
    verified = sorted((s for s in self._verified if s in set(self.all_steps())), reverse=True)
    if len(verified) < self.max_to_keep:
      return
    oldest_kept = verified[self.max_to_keep - 1]
    for step in self.all_steps():
      if step < oldest_kept:
        self._manager.delete(step)
        self._verified.discard(step)

  def wait(self) -> None:
    """Waits for pending saves, verifies them and prunes old steps."""
    self._manager.wait_until_finished()
    self._verify_finished_saves()

  def reached_preemption(self, step: int) -> bool:
    """True on every process once any process got a preemption notice (multi-host)."""
    return jax.process_count() > 1 and self._manager.reached_preemption(step)

  def close(self) -> None:
    self._manager.close()

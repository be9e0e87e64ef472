"""Early checks of output paths, so a bad path fails in one line before any model is built;
small JSON files read leniently and written atomically (caches, evaluations)."""

import json
import os
import shutil
import tempfile

from flam_jax.errors import ConfigError, DataError

# Below this much free space a run stops before it starts: a checkpoint or a token cache
# that cannot be written ends a run later, after the compute is spent.
MIN_FREE_BYTES = 256 * 2**20


def _nearest_existing(path: str) -> str:
  path = os.path.abspath(path)
  while not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return path


def _can_create_file(directory: str) -> bool:
  """Creates and removes a file: os.access alone misses read-only mounts."""
  try:
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".flam_write_check"):
      return True
  except OSError:
    return False


def check_output_dir(path: str, flag: str, min_free_bytes: int = MIN_FREE_BYTES) -> str:
  """Raises ConfigError if `path` (named by `flag` in messages) cannot hold outputs.

  The directory need not exist: the nearest existing ancestor must be a writable directory.
  Returns the absolute path.
  """
  path = os.path.abspath(path)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"{flag}={path} is a file, not a directory; choose a directory path")
  existing = _nearest_existing(path)
  if not os.path.isdir(existing):
    raise ConfigError(f"{flag}={path}: {existing} is a file, not a directory; choose another "
                      "path")
  if not os.access(existing, os.W_OK | os.X_OK) or not _can_create_file(existing):
    raise ConfigError(f"{flag}={path}: {existing} is not writable; choose a writable directory "
                      "or fix its permissions")
  free = shutil.disk_usage(existing).free
  if free < min_free_bytes:
    raise ConfigError(f"{flag}={path}: only {free / 2**20:.0f} MiB free on its disk (need "
                      f"{min_free_bytes / 2**20:.0f} MiB); free space or choose another disk")
  return path


def check_input_dir(path: str, flag: str) -> str:
  """Raises DataError if `path` exists but is not a directory (a missing one is reported by
  its reader, which knows how to create it). Returns the absolute path."""
  path = os.path.abspath(path)
  if os.path.exists(path) and not os.path.isdir(path):
    raise DataError(f"{flag}={path} is a file, not a dataset directory; point it at the "
                    "directory that holds metadata.json")
  return path


def read_json(path: str):
  """The JSON value in `path`, or None where it is missing or unreadable (a cache miss)."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def write_json(path: str, payload, default=None) -> None:
  """Writes `payload` atomically (its folder made if needed): a reader sees the old file or
  the whole new one. `default` as json.dump's (e.g. str for values JSON cannot hold)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, default=default)
  os.replace(tmp, path)

"""What the command lines share (flam-train, flam-eval, flam-generate): absl flags and errors.

Flags are defined only when a program runs (importing a CLI module defines none);
a bad flag or a `FlamError` prints one line starting with "error: " and exits with
status 2; absl logging defaults to WARNING (orbax and grain are chatty at INFO; -v 0
shows it).
"""

import os
import sys
from typing import Callable

from absl import app, flags, logging

from flam_jax.errors import FlamError

FLAGS = flags.FLAGS


def define_workdir_flag(help_text: str) -> None:
  flags.DEFINE_string("workdir", None, help_text)


def resolve_config_path(value: str) -> str:
  """`configs/<file>.py[:arg]` from the installed configs package when not under the cwd."""
  path, sep, arg = value.partition(":")
  if os.path.exists(path) or not path.startswith("configs" + os.sep):
    return value
  import configs  # pylint: disable=g-import-not-at-top
  packaged = os.path.join(os.path.dirname(configs.__file__), path[len("configs" + os.sep):])
  return (packaged if os.path.exists(packaged) else path) + sep + arg


def parse_flags(argv):
  """absl flag parsing with a one-line error instead of a traceback, for bad flags and for
  unknown `--config.<key>` overrides; `--config=configs/...` resolves as `resolve_config_path`."""
  argv = [("--config=" + resolve_config_path(a[len("--config="):])
           if a.startswith("--config=") else a) for a in argv]
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}; run with --helpshort for the flags", file=sys.stderr)
  except (AttributeError, KeyError) as e:  # ml_collections' unknown override key.
    key = str(e).strip("'\"")
    where = [a for a in argv if a.startswith("--config.") and key in a.split("=")[0]]
    shown = where[0] if where else key
    print(f"error: unknown config key {key!r} in {shown}; check the spelling against the "
          "config file's get_config() (keys are listed in README.md)", file=sys.stderr)
  sys.exit(2)


def fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def _wrap(main: Callable) -> Callable:
  def wrapped(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    if "workdir" in FLAGS and not FLAGS.workdir:
      fail(f"--workdir is required: {FLAGS['workdir'].help}")
    try:
      return main(argv)
    except FlamError as e:
      fail(str(e))
  return wrapped


def run(main: Callable, define_flags: Callable[[], None]) -> None:
  """Defines the program's flags, then runs `main` under the conventions above."""
  define_flags()
  app.run(_wrap(main), flags_parser=parse_flags)

"""What the command lines share (flam-train, flam-eval, flam-generate): absl flags and errors.

Flags are defined only when a program runs (importing a CLI module defines none);
a bad flag or a `FlamError` prints one line starting with "error: " and exits with
status 2; absl logging defaults to WARNING (orbax and grain are chatty at INFO; -v 0
shows it).
"""

import sys
from typing import Callable

from absl import app, flags, logging

from flam_jax.errors import FlamError

FLAGS = flags.FLAGS


def define_workdir_flag(help_text: str) -> None:
  flags.DEFINE_string("workdir", None, help_text)


def parse_flags(argv):
  """absl flag parsing with a one-line error instead of a traceback."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}; run with --helpshort for the flags", file=sys.stderr)
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


def run(main: Callable, define_flags: Callable[[], None], flags_parser=parse_flags) -> None:
  """Defines the program's flags, then runs `main` under the conventions above."""
  define_flags()
  app.run(_wrap(main), flags_parser=flags_parser)

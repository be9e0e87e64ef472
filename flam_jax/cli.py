"""What the command lines share (flam-train, flam-eval, flam-generate, the Multigrid
writer): flags defined at run time, absl logging at WARNING, and one exit convention.

Flags are defined only when a program runs (importing a CLI module defines none);
absl logging defaults to WARNING (orbax and grain are chatty at INFO; -v 0 shows it).
Exit status:

  0    finished
  2    a user error (bad flag, config, data, path or checkpoint): one line `error: ...`
       on stderr naming the problem and the fix, no traceback
  143  preempted (SIGTERM) after saving a checkpoint; re-run the same command to resume
  130  interrupted with Ctrl-C
  1    anything else: a bug, reported with its traceback

    if __name__ == "__main__":
      cli.run(main, define_flags, usage="python -m flam_jax.x --workdir=DIR [--flag=VALUE ...]")
"""

import errno
import os
import re
import sys
from typing import Callable, NoReturn, Optional, Sequence

from absl import app, flags, logging

from flam_jax.errors import FlamError

FLAGS = flags.FLAGS

EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 143  # 128 + SIGTERM: tells a scheduler the job did not finish.
EXIT_INTERRUPTED = 130  # 128 + SIGINT.

# OSErrors that come from the machine or the user's paths, not from a bug.
ENVIRONMENT_ERRNOS = frozenset({
    errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
    errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.EMFILE})

_EXCEPTION_LINE = re.compile(r"^\s*(?:[\w.]+\.)?\w*(?:Error|Exception): (.+)$")


def define_workdir_flag(help_text: str) -> None:
  flags.DEFINE_string("workdir", None, help_text)


def fail(message: str) -> NoReturn:
  """Prints `error: message` (one line) to stderr and exits with status 2."""
  message = " ".join(str(message).split())  # Never more than one line.
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def one_line(exc: BaseException) -> str:
  """The informative line of an exception whose message may embed a traceback (config_flags)."""
  text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
  lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
  if not lines:
    return type(exc).__name__
  raised = [m.group(1) for m in map(_EXCEPTION_LINE.match, lines) if m]
  return raised[-1] if raised else lines[-1]


def _config_key_error(exc: BaseException, argv: Sequence[str]) -> str:
  """A misspelt --config.<key> override: name the argument and absl's suggestion."""
  while exc.args and isinstance(exc.args[0], BaseException):  # AttributeError(KeyError(...))
    exc = exc.args[0]
  text = str(exc.args[0]) if exc.args else str(exc)
  key = text.strip().splitlines()[0].strip("'\"") if text.strip() else "?"
  hint = re.search(r'Did you mean "([^"]+)"', text)
  where = [a for a in argv if a.startswith("--config.") and key in a.split("=")[0]]
  if not where:  # Not an override: the config file's get_config() itself failed.
    return _config_file_error(exc)
  shown = where[0]
  suggestion = f" (did you mean {hint.group(1)!r}?)" if hint else ""
  return (f"unknown config key {key!r} in {shown}{suggestion}; check the spelling against "
          "the config file's get_config() (keys are listed in README.md)")


def _config_file_error(exc: BaseException) -> str:
  return (f"loading the config failed ({type(exc).__name__}: {one_line(exc)}); fix the config "
          "file's get_config() or the --config flag")


def config_load_error(name: str = "config") -> Optional[str]:
  """Why the config file of the ml_collections flag `name` did not load, or None.

  config_flags defers a failed load (a missing file) to the config's first use.
  """
  if name not in flags.FLAGS:
    return None
  try:
    config = flags.FLAGS[name].value
    if config is not None:
      config.get("stage")
  except OSError as e:
    from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
    path = config_flags.get_config_filename(flags.FLAGS[name])
    return f"cannot load --{name}={path}: {one_line(e)}; check the path"
  except Exception:  # pylint: disable=broad-except
    return None
  return None


def resolve_config_path(value: str) -> str:
  """`configs/<file>.py[:arg]` from the installed configs package when not under the cwd."""
  path, sep, arg = value.partition(":")
  if os.path.exists(path) or not path.startswith("configs" + os.sep):
    return value
  import configs  # pylint: disable=g-import-not-at-top
  packaged = os.path.join(os.path.dirname(configs.__file__), path[len("configs" + os.sep):])
  return (packaged if os.path.exists(packaged) else path) + sep + arg


def parse_flags(argv: Sequence[str]):
  """absl flag parsing with one-line errors (flags, config files, config overrides);
  `--config=configs/...` resolves as `resolve_config_path`."""
  argv = [("--config=" + resolve_config_path(a[len("--config="):])
           if a.startswith("--config=") else a) for a in argv]
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    fail(config_load_error() or _parse_error(e, argv))


def _parse_error(e: Exception, argv: Sequence[str]) -> str:
  if isinstance(e, flags.Error):
    return f"{one_line(e)}; run with --helpshort for the flags"
  if isinstance(e, SyntaxError):
    return f"cannot load the config file {e.filename}: {e.msg} at line {e.lineno}; fix the file"
  if isinstance(e, (AttributeError, KeyError)):
    return _config_key_error(e, argv)
  if isinstance(e, OSError):  # A config file that is missing or unreadable.
    return f"cannot load the config: {one_line(e)}; check the --config path"
  # Flag parsing runs the config file's get_config(): whatever it raises is the file's.
  return _config_file_error(e)


def _user_os_error(e: OSError) -> str:
  where = f": {e.filename}" if e.filename else ""
  return (f"{e.strerror or type(e).__name__}{where}; fix the path, its permissions or the "
          "free space and re-run")


def wrap_main(main: Callable[[Sequence[str]], Optional[int]], usage: str):
  """`main` with the exit convention: stray arguments, a missing --workdir, FlamError and
  environment OSErrors become one line and status 2; `main`'s return value is the exit status."""

  def wrapped(argv):
    if len(argv) > 1:
      fail(f"unexpected arguments: {' '.join(argv[1:])}; usage: {usage}")
    if FLAGS.is_parsed():
      if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
      if "workdir" in FLAGS and not FLAGS.workdir:
        fail(f"--workdir is required: {FLAGS['workdir'].help.rstrip('.')}; usage: {usage}")
    try:
      return main(argv)
    except FlamError as e:
      fail(str(e))
    except OSError as e:
      if e.errno not in ENVIRONMENT_ERRNOS:
        raise
      fail(_user_os_error(e))
    except KeyboardInterrupt:
      print("interrupted", file=sys.stderr, flush=True)
      return EXIT_INTERRUPTED

  return wrapped


def run(main: Callable[[Sequence[str]], Optional[int]], define_flags: Callable[[], None],
        usage: str, argv: Optional[Sequence[str]] = None,
        flags_parser: Callable = parse_flags) -> None:
  """Defines the program's flags, then `absl.app.run` with one-line flag errors and the
  exit convention above."""
  define_flags()
  app.run(wrap_main(main, usage), argv=None if argv is None else list(argv),
          flags_parser=flags_parser)

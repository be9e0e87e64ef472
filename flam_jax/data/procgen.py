"""Procgen video with actions (Table 1's Procgen row), generated in an environment of its own.

    python -m flam_jax.data.procgen --game bigfish --episodes 1000 --out data/bigfish \
        [--image_size 64] [--max_frames 64] [--start_level 0] [--venv DIR]

procgen2 0.10.7 (the `procgen` package has no wheels for Python 3.11+) needs numpy<2
and gym<1, so it cannot live in the project's environment: on first use this command
creates a virtual environment (default ~/.cache/flam_jax/procgen-venv, Python 3.11,
`procgen2==0.10.7 numpy<2 gym<1`) and runs `procgen_worker.py` there. The worker plays
episodes on levels drawn from [start_level, start_level + episodes) with a sticky random
policy, background rendering disabled as in the paper, and saves frames and the action
per step as npz (the first max_frames frames of each episode);
this process then writes them in the record format through `import_video` (the npz
reader), 80/10/10 by episode. 64 px frames are Procgen's observations; larger sizes are
resized from its 512 px render. A second run with the same arguments reuses the dataset.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from flam_jax.data import import_video, pipeline
from flam_jax.errors import ConfigError, DataError

GAMES = ("bigfish", "bossfight", "caveflyer", "chaser", "climber", "coinrun", "dodgeball",
         "fruitbot", "heist", "jumper", "leaper", "maze", "miner", "ninja", "plunder",
         "starpilot")
REQUIREMENTS = ("procgen2==0.10.7", "numpy<2", "gym<1")
DEFAULT_VENV = os.path.join("~", ".cache", "flam_jax", "procgen-venv")
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "procgen_worker.py")
PYTHON = "python3.11"  # procgen2 0.10.7 ships cp311 wheels.


def _venv_python(venv: str) -> str:
  return os.path.join(venv, "bin", "python")


def ensure_environment(venv: str = DEFAULT_VENV) -> str:
  """The Procgen environment's interpreter, creating the environment on first use."""
  venv = os.path.expanduser(venv)
  python = _venv_python(venv)
  marker = os.path.join(venv, ".flam_jax_ready")
  if os.path.isfile(marker):
    return python
  base = sys.executable if sys.version_info[:2] == (3, 11) else shutil.which(PYTHON)
  if base is None:
    raise DataError(f"procgen2 0.10.7 needs Python 3.11 and none was found ({PYTHON} is not on"
                    " PATH); install Python 3.11 or pass --venv an environment with"
                    f" {' '.join(REQUIREMENTS)}")
  print(f"Creating the Procgen environment {venv} ({' '.join(REQUIREMENTS)}); once only",
        flush=True)
  for cmd in ([base, "-m", "venv", "--clear", venv],
              [python, "-m", "pip", "install", "-q", *REQUIREMENTS]):
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
      last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
      raise DataError(f"creating the Procgen environment failed at `{' '.join(cmd)}` ({last});"
                      " fix that (network, Python 3.11) and re-run")
  with open(marker, "w") as f:
    f.write(" ".join(REQUIREMENTS) + "\n")
  return python


def generate(game: str, episodes: int, out: str, *, image_size: int = 64, max_frames: int = 64,
             min_frames: int = 10, start_level: int = 0, sticky: float = 0.5, seed: int = 0,
             venv: str = DEFAULT_VENV, progress: bool = True) -> dict[str, Any]:
  """Generates `episodes` Procgen episodes of `game` into the record dataset `out`."""
  if game not in GAMES:
    raise ConfigError(f"unknown --game {game!r}; use one of {', '.join(GAMES)}")
  if episodes < 1 or max_frames < 2:
    raise ConfigError(f"--episodes={episodes}, --max_frames={max_frames}; use at least 1 and 2")
  settings = dict(game=game, episodes=episodes, max_frames=max_frames, start_level=start_level,
                  sticky=sticky, seed=seed, hires=image_size > 64)
  try:
    meta = pipeline.load_metadata(out)
    if meta.get("procgen") == settings and meta["config"]["resolution"] == image_size:
      if progress:
        print(f"{out} already holds this Procgen dataset; reusing it")
      return meta
  except DataError:
    pass
  python = ensure_environment(venv)
  with tempfile.TemporaryDirectory(prefix="procgen-") as raw:
    # -I: isolated, so the worker's folder (with this procgen.py) does not shadow the package.
    cmd = [python, "-I", WORKER, "--game", game, "--episodes", str(episodes), "--max_frames",
           str(max_frames), "--start_level", str(start_level), "--sticky", str(sticky),
           "--seed", str(seed), "--out", raw] + (["--hires"] if settings["hires"] else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
      last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
      raise DataError(f"the Procgen worker failed ({last}); delete {os.path.expanduser(venv)}"
                      " to rebuild the environment and re-run")
    meta = import_video.import_dataset(raw, "npz", out, image_size=image_size,
                                       min_frames=min_frames, skip_short=True, progress=progress)
  # Record what made it (the npz folder is gone, so the import signature cannot be reused).
  meta.update(generator="flam_jax.data.procgen", procgen=settings,
              command=f"python -m flam_jax.data.procgen --game {game} --episodes {episodes}"
                      f" --out {os.path.abspath(out)} --image_size {image_size}"
                      f" --max_frames {max_frames} --start_level {start_level} --seed {seed}")
  meta["config"].update(num_actions=15)  # Procgen's action space.
  from flam_jax.data import records  # pylint: disable=g-import-not-at-top
  records.write_metadata(out, meta)
  return meta


def _main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  try:
    meta = generate(f.game, f.episodes, f.out, image_size=f.image_size,
                    max_frames=f.max_frames, min_frames=f.min_frames,
                    start_level=f.start_level, sticky=f.sticky, seed=f.seed, venv=f.venv)
  except (ConfigError, DataError) as e:
    sys.exit(f"error: {e}")
  counts = ", ".join(f"{s}={meta['splits'][s]['num_episodes']}" for s in meta["splits"])
  print(f"wrote {meta['num_episodes']} {f.game} episodes to {os.path.abspath(f.out)} ({counts})")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_enum("game", "bigfish", GAMES, "Procgen game.")
  flags.DEFINE_integer("episodes", 1000, "Episodes (all splits).")
  flags.DEFINE_string("out", None, "Output dataset directory.", required=True)
  flags.DEFINE_integer("image_size", 64, "Frame side (64: observations; larger: the render).")
  flags.DEFINE_integer("max_frames", 64, "Frames per episode at most.")
  flags.DEFINE_integer("min_frames", 10, "Episodes that end sooner are dropped.")
  flags.DEFINE_integer("start_level", 0, "Levels are drawn from [start_level, +episodes).")
  flags.DEFINE_float("sticky", 0.5, "Probability the random policy repeats its action.")
  flags.DEFINE_integer("seed", 0, "Policy seed.")
  flags.DEFINE_string("venv", DEFAULT_VENV, "The Procgen environment (created if missing).")
  app.run(_main)

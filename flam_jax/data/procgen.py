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

Demonstrations for the policy stage (Sec 4.3), played by the worker's planner (lookahead
on copies of the game's state; a demonstrator better than random without a trained agent):

    python -m flam_jax.data.procgen --game bigfish --episodes 300 --out data/bigfish_demos \
        --demonstrations [--max_frames 64] [--plan_horizon 10]

Episode e plays level start_level + e for max_frames frames (fewer where it ends sooner:
its last frame is then repeated and `active` marks the real transitions), with the
actions as [L-1] and the planner's returns in the metadata. `ProcgenTask` plays policies
on held-out levels in the same environment (the worker's serve mode), beside the planner
and a random policy, for the policy stage's live evaluation.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Callable, Optional

import numpy as np
import tqdm

from flam_jax import filesystem
from flam_jax.data import import_video, pipeline, records
from flam_jax.errors import ConfigError, DataError

GAMES = ("bigfish", "bossfight", "caveflyer", "chaser", "climber", "coinrun", "dodgeball",
         "fruitbot", "heist", "jumper", "leaper", "maze", "miner", "ninja", "plunder",
         "starpilot")
REQUIREMENTS = ("procgen2==0.10.7", "numpy<2", "gym<1")
DEFAULT_VENV = os.path.join("~", ".cache", "flam_jax", "procgen-venv")
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "procgen_worker.py")
PYTHON = "python3.11"  # procgen2 0.10.7 ships cp311 wheels.
NUM_ACTIONS = 15  # Procgen's action space (every game).
MAX_EVAL_STEPS = 1000  # Procgen's own episode limit in most games.
EVAL_FIRST_LEVEL = 1_000_000  # Evaluation levels: far from any demonstration level.


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
  meta["config"].update(num_actions=NUM_ACTIONS)
  records.write_metadata(out, meta)
  return meta


def _run_worker(python: str, args: list[str], venv: str, progress: bool = False,
                total: int = 0) -> None:
  # -I: isolated, so the worker's folder (with this procgen.py) does not shadow the package.
  cmd = [python, "-I", WORKER] + args
  with tempfile.TemporaryFile() as err:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    with tqdm.tqdm(total=total, desc="demonstrations", disable=not progress) as bar:
      for line in proc.stdout:
        if line.startswith("episode "):
          bar.update(1)
    if proc.wait():
      err.seek(0)
      last = (err.read().decode(errors="replace").strip().splitlines() or ["no output"])[-1]
      raise DataError(f"the Procgen worker failed ({last}); delete {os.path.expanduser(venv)}"
                      " to rebuild the environment and re-run")


DEMO_FIELDS = ("frames", "actions", "active")


def _pad_demonstration(episode: dict, length: int) -> dict[str, np.ndarray]:
  """frames [L, 64, 64, 3] (the last repeated after an early end), actions int32 [L-1]
  (0 past the end), active uint8 [L] (1 where a real action follows the frame)."""
  frames, actions = episode["frames"], episode["actions"]
  n = len(actions)
  padded = np.concatenate([frames, np.repeat(frames[-1:], length - len(frames), axis=0)])
  active = np.zeros((length,), np.uint8)
  active[:n] = 1
  return dict(frames=padded, actions=np.pad(actions, (0, length - 1 - n)).astype(np.int32),
              active=active)


def write_demonstrations(game: str, episodes: int, out: str, *, episode_length: int = 64,
                         start_level: int = 0, seed: int = 0, plan_horizon: int = 10,
                         plan_hold: int = 2, eval_max_steps: int = MAX_EVAL_STEPS,
                         venv: str = DEFAULT_VENV, progress: bool = True) -> dict[str, Any]:
  """The planner's demonstrations of `game` (levels start_level..+episodes) as records;
  eval_max_steps bounds the policy stage's evaluation episodes (ProcgenTask.max_steps)."""
  if game not in GAMES:
    raise ConfigError(f"unknown --game {game!r}; use one of {', '.join(GAMES)}")
  if min(episodes, episode_length - 1, plan_horizon, eval_max_steps) < 1:
    raise ConfigError(f"--episodes={episodes}, --max_frames={episode_length}, --plan_horizon="
                      f"{plan_horizon}, --eval_max_steps={eval_max_steps}; use at least 1, 2, "
                      "1 and 1")
  settings = dict(game=game, episodes=episodes, episode_length=episode_length,
                  start_level=start_level, seed=seed, policy="planner",
                  plan_horizon=plan_horizon, plan_hold=plan_hold, eval_max_steps=eval_max_steps)
  try:
    meta = pipeline.load_metadata(out)
    if meta.get("procgen") == settings:
      if progress:
        print(f"{out} already holds these Procgen demonstrations; reusing them")
      return meta
  except DataError:
    pass
  python = ensure_environment(venv)
  records.remove_metadata(out)  # Stale metadata must not describe half-new shards.
  raw = os.path.join(out, "raw_episodes")  # Kept until the records are written: resumable.
  raw_settings = os.path.join(raw, "settings.json")
  if os.path.isdir(raw) and (not os.path.exists(raw_settings)
                             or filesystem.read_json(raw_settings) != settings):
    shutil.rmtree(raw)  # Episodes of other settings (a killed run with other flags).
  os.makedirs(raw, exist_ok=True)
  filesystem.write_json(raw_settings, settings)
  done = {int(os.path.basename(p)[8:14]) for p in glob.glob(os.path.join(raw, "episode_*.npz"))
          if ".tmp." not in p}
  missing = [e for e in range(episodes) if e not in done]
  if missing:  # A killed run resumes from its first missing episode.
    _run_worker(python, ["--game", game, "--episodes", str(episodes - missing[0]),
                         "--first_episode", str(missing[0]), "--max_frames",
                         str(episode_length), "--start_level", str(start_level), "--seed",
                         str(seed), "--policy", "planner", "--plan_horizon", str(plan_horizon),
                         "--plan_hold", str(plan_hold), "--out", raw],
                venv, progress, total=episodes - missing[0])
  returns = []

  def read(e):
    with np.load(os.path.join(raw, f"episode_{e:06d}.npz")) as f:
      episode = {k: f[k] for k in f.files}
    returns.append(float(episode["episode_return"]))
    return _pad_demonstration(episode, episode_length)

  shapes = dict(frames=(episode_length, 64, 64, 3), actions=(episode_length - 1,),
                active=(episode_length,))
  dtypes = dict(frames="uint8", actions="int32", active="uint8")
  splits, first = {}, 0
  for split, n in records.split_counts(episodes).items():
    splits[split] = records.write_split(out, split, (read(e) for e in range(first, first + n)),
                                        n, 256, DEMO_FIELDS, dtypes=dtypes)
    splits[split]["first_episode"] = first
    first += n
  command = (f"python -m flam_jax.data.procgen --demonstrations --game {game} --episodes "
             f"{episodes} --out {os.path.abspath(out)} --max_frames {episode_length} "
             f"--start_level {start_level} --seed {seed} --plan_horizon {plan_horizon} "
             f"--plan_hold {plan_hold} --eval_max_steps {eval_max_steps}")
  meta = dict(
      format_version=records.FORMAT_VERSION, generator="flam_jax.data.procgen",
      config=dict(resolution=64, episode_length=episode_length, num_agents=0,
                  num_actions=NUM_ACTIONS, game=game, max_steps=eval_max_steps,
                  plan_horizon=plan_horizon, plan_hold=plan_hold, seed=seed),
      seed=seed, num_episodes=episodes, episodes_per_shard=256, splits=splits,
      byte_order="little", ground_truth=["actions"], procgen=settings, command=command,
      demonstration_return=float(np.mean(returns)),
      fields=[dict(name=f, dtype=dtypes[f], shape=list(shapes[f])) for f in DEMO_FIELDS],
      record_bytes=sum(int(np.prod(shapes[f])) * np.dtype(dtypes[f]).itemsize
                       for f in DEMO_FIELDS))
  records.write_metadata(out, meta)
  shutil.rmtree(raw)
  return meta


class LiveEpisodes:
  """Procgen levels played in the Procgen environment's process (the worker's serve mode):
  frames come back as uint8 arrays, actions go in one call per step for every level."""

  def __init__(self, game: str, *, seed: int = 0, plan_horizon: int = 10, plan_hold: int = 2,
               venv: str = DEFAULT_VENV):
    self._venv = venv
    self._err = tempfile.TemporaryFile()
    self._proc = subprocess.Popen(
        [ensure_environment(venv), "-I", WORKER, "--serve", "--game", game, "--seed", str(seed),
         "--plan_horizon", str(plan_horizon), "--plan_hold", str(plan_hold)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err)

  def _request(self, **payload):
    try:
      self._proc.stdin.write((json.dumps(payload) + "\n").encode())
      self._proc.stdin.flush()
      line = self._proc.stdout.readline()
      answer = json.loads(line)
    except (BrokenPipeError, ValueError) as e:
      self._err.seek(0)
      last = (self._err.read().decode(errors="replace").strip().splitlines() or [str(e)])[-1]
      raise DataError(f"the Procgen worker stopped ({last}); delete "
                      f"{os.path.expanduser(self._venv)} to rebuild the environment") from e
    if "error" in answer:
      raise DataError(f"the Procgen worker refused {payload['cmd']!r}: {answer['error']}")
    if "frames_bytes" in answer:
      data = self._proc.stdout.read(answer["frames_bytes"])
      answer["frames"] = np.frombuffer(data, np.uint8).reshape(answer["frames_shape"])
    return answer

  def reset(self, levels) -> np.ndarray:
    """Starts one episode per level; their first frames uint8 [E, 64, 64, 3]."""
    return self._request(cmd="reset", levels=[int(l) for l in levels])["frames"]

  def step(self, actions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One action per running episode, in order: (frames [E, ...], rewards [E], done [E])."""
    answer = self._request(cmd="step", actions=[int(a) for a in actions])
    return answer["frames"], np.asarray(answer["rewards"]), np.asarray(answer["done"], bool)

  def play(self, policy: str, levels, max_steps: int) -> tuple[list, list]:
    """A reference policy (planner | random) played by the worker: (returns, steps)."""
    answer = self._request(cmd="play", policy=policy, levels=[int(l) for l in levels],
                           max_steps=int(max_steps))
    return answer["returns"], answer["steps"]

  def close(self) -> None:
    if self._proc.poll() is None:
      try:
        self._request(cmd="close")
      except DataError:
        pass
      self._proc.wait(timeout=60)
    self._err.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


@dataclasses.dataclass(frozen=True)
class ProcgenTask:
  """A Procgen game as the policy stage's task: pi_u is played on held-out levels (the
  demonstrations use [start_level, start_level + episodes); evaluation episode e of
  seed s plays level EVAL_FIRST_LEVEL + 1000 s + e) until the level ends or max_steps.
  With train_levels = (first, count), episode e plays the demonstrations' train level
  first + e instead (Procgen's train-level return; the seed then picks nothing)."""

  game: str = "bigfish"
  num_actions: int = NUM_ACTIONS
  max_steps: int = MAX_EVAL_STEPS
  seed: int = 0
  plan_horizon: int = 10
  plan_hold: int = 2
  num_agents: int = 1  # One controlled entity; the rest of the scene is the game's.
  train_levels: Optional[tuple[int, int]] = None  # (first, count): evaluate on these.
  cache_dir: Optional[str] = dataclasses.field(default=None, compare=False)
  venv: str = dataclasses.field(default=DEFAULT_VENV, compare=False)

  @classmethod
  def from_metadata(cls, config: dict[str, Any], cache_dir: Optional[str] = None,
                    venv: str = DEFAULT_VENV) -> "ProcgenTask":
    return cls(game=config["game"], num_actions=config["num_actions"],
               max_steps=config["max_steps"], seed=config["seed"],
               plan_horizon=config["plan_horizon"], plan_hold=config["plan_hold"],
               cache_dir=cache_dir, venv=venv)

  def metadata_config(self) -> dict[str, Any]:
    return dict(game=self.game, num_actions=self.num_actions, max_steps=self.max_steps,
                seed=self.seed, plan_horizon=self.plan_horizon, plan_hold=self.plan_hold)

  def levels(self, num_episodes: int, seed: int) -> list[int]:
    if self.train_levels is None:
      return [EVAL_FIRST_LEVEL + 1000 * seed + e for e in range(num_episodes)]
    first, count = self.train_levels
    if num_episodes > count:
      raise ConfigError(f"{num_episodes} evaluation episodes on the demonstrations' {count} "
                        "train levels; set --config.policy.eval_episodes to at most that")
    return [first + e for e in range(num_episodes)]

  def _live(self) -> LiveEpisodes:
    return LiveEpisodes(self.game, seed=self.seed, plan_horizon=self.plan_horizon,
                        plan_hold=self.plan_hold, venv=self.venv)

  def run_episodes(self, policy: Callable[[np.ndarray, Any], np.ndarray], num_episodes: int,
                   seed: int) -> dict[str, Any]:
    """`policy` (frames uint8 [E, 64, 64, 3], None) -> actions [E] on every held-out level in
    lock step: mean_return, mean_steps and the per-episode returns."""
    levels = self.levels(num_episodes, seed)
    returns = np.zeros(num_episodes)
    steps = np.zeros(num_episodes, np.int64)
    with self._live() as live:
      frames = live.reset(levels)
      running = np.ones(num_episodes, bool)
      for _ in range(self.max_steps):
        live_rows = np.flatnonzero(running)
        if not len(live_rows):
          break
        actions = np.asarray(policy(frames[live_rows], None))
        frames, rewards, done = live.step(actions)
        returns += np.where(running, rewards, 0.0)
        steps[live_rows] += 1
        running = ~done
    return dict(mean_return=float(returns.mean()), mean_steps=float(steps.mean()),
                returns=returns.tolist(), num_episodes=num_episodes, seed=seed)

  def references(self, num_episodes: int, seed: int) -> dict[str, Any]:
    """The planner ("expert") and a uniformly random policy on the same levels, cached in
    cache_dir (the demonstrations' folder) by what they depend on: minutes of planning."""
    key = dict(self.metadata_config(), num_episodes=int(num_episodes), seed=int(seed))
    if self.train_levels is not None:  # Only then: the held-out references stay cached.
      key["train_levels"] = list(self.train_levels)
    path = (os.path.join(self.cache_dir, "reference_returns.json") if self.cache_dir else None)
    cached = (filesystem.read_json(path) if path else None) or {}
    # One entry per key (levels, step limit, episodes), so evaluations of one dataset at
    # several settings do not replan each other's; a file of one {key, runs} still reads.
    entries = cached.get("entries", [cached] if "key" in cached else [])
    for entry in entries:
      if entry["key"] == key:
        return entry["runs"]
    levels = self.levels(num_episodes, seed)
    runs = {}
    with self._live() as live:
      for name, policy in (("expert", "planner"), ("random", "random")):
        returns, steps = live.play(policy, levels, self.max_steps)
        runs[name] = dict(mean_return=float(np.mean(returns)), mean_steps=float(np.mean(steps)),
                          returns=returns, num_episodes=num_episodes, seed=seed)
    if path:
      try:
        filesystem.write_json(path, dict(entries=entries + [dict(key=key, runs=runs)]))
      except OSError:
        pass  # A read-only dataset: the references are recomputed next time.
    return runs

  def evaluate(self, policy, num_episodes: int, seed: int) -> dict[str, Any]:
    """pi_u's episodes beside the planner's and a random policy's on the same levels."""
    return dict(policy=self.run_episodes(policy, num_episodes, seed),
                **self.references(num_episodes, seed))


def _main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  try:
    if f.demonstrations:
      if f.image_size != 64:
        raise ConfigError(f"--image_size={f.image_size}: demonstrations are Procgen's 64 px "
                          "observations (what a policy sees); drop --image_size")
      meta = write_demonstrations(f.game, f.episodes, f.out, episode_length=f.max_frames,
                                  start_level=f.start_level, seed=f.seed,
                                  plan_horizon=f.plan_horizon, plan_hold=f.plan_hold,
                                  eval_max_steps=f.eval_max_steps, venv=f.venv)
      print(f"the planner's mean return: {meta['demonstration_return']:.2f}")
    else:
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
  flags.DEFINE_bool("demonstrations", False, "The planner's demonstrations for the policy "
                    "stage (episode e on level start_level + e, max_frames frames each).")
  flags.DEFINE_integer("plan_horizon", 10, "Demonstrations: the planner's lookahead steps.")
  flags.DEFINE_integer("plan_hold", 2, "Demonstrations: steps each tried action is held.")
  flags.DEFINE_integer("eval_max_steps", MAX_EVAL_STEPS,
                       "Demonstrations: step limit of the policy stage's evaluation episodes.")
  app.run(_main)

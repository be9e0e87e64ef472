"""The Multigrid goal task: agent 0 must reach a goal cell while distractor agents wander.

Policy learning from action-free video (Sec 4.3) needs an environment with a task. This
module adds one to Multigrid (numpy only, no gym): the world, actions, headings and
movement rules of `flam_jax.data.multigrid`, plus

  * a goal cell drawn on a free cell (white, under any agent standing on it); it is
    floor (id 0) in the entity-id masks, so the masks keep multigrid's meaning;
  * agent 0 is controlled; agents 1..D are distractors that pick sticky random actions
    as in multigrid and never enter the goal cell (so it cannot be blocked for good);
  * success when agent 0 stands on the goal: reward 1 - 0.9 * steps / max_steps
    (MiniGrid's), episode terminated; truncated after `max_steps` steps;
  * `expert_action`: a scripted shortest-path expert (BFS around the walls and the
    distractors' current cells; it turns towards a neighbour one step closer,
    preferring its current heading, and moves);
  * `GoalTaskEnv`: a gymnasium-style `reset(seed=...)` / `step(action)` interface;
  * `write_dataset`: expert demonstration videos in multigrid's ArrayRecord format
    (frames, masks, actions of every agent, positions, headings, plus `active`), so the
    tokenizer and latent action stages train on them unchanged. An episode has
    max_steps + 1 frames; once agent 0 is on the goal it stays (action STAY) and
    `active` [L] uint8 turns 0: frame t with active=1 starts a demonstration transition.
  * `run_episodes`: success rate and return of any batched policy over N seeded episodes.

Episode e of a dataset with seed s (and evaluation episode e with seed s) is drawn from
np.random.default_rng([s, e]), so any episode can be regenerated alone.

CLI:
  python -m flam_jax.data.goal_task --out DIR --num_distractors 4 --episodes 2000
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from typing import Any, Callable, Optional

from absl import flags
import numpy as np
import tqdm

from flam_jax.data import multigrid as mg
from flam_jax.data import multigrid_render, records
from flam_jax.errors import ConfigError

GOAL_COLOR = np.array([255, 255, 255], np.uint8)
FIELDS = mg.FIELDS + ("active",)
FIELD_DTYPES = dict(mg.FIELD_DTYPES, active="uint8")
RECORD_DTYPES = dict(mg.RECORD_DTYPES, active=np.dtype("uint8"))


@dataclasses.dataclass(frozen=True)
class GoalTaskConfig:
  """World, task and rendering settings of the goal task."""

  grid_size: int = 8  # Cells per side, including the outer wall ring.
  resolution: int = 32  # Pixels per side; a multiple of grid_size (>= 4 px per cell).
  num_distractors: int = 4  # Randomly moving agents besides the controlled agent 0.
  max_steps: int = 15  # Step limit; demonstration episodes have max_steps + 1 frames.
  sticky_prob: float = 0.5  # Distractors: P(repeat the previous action).
  wall_density: float = 0.0  # Fraction of interior cells that are walls.

  def __post_init__(self):
    if self.num_distractors < 0:
      raise ConfigError(f"num_distractors={self.num_distractors}; use 0 or more")
    if self.max_steps < 1:
      raise ConfigError(f"max_steps={self.max_steps}; use at least 1")
    world = self.world  # Validates the multigrid settings.
    if world.num_free_cells < self.num_agents + 1:
      raise ConfigError(
          f"only {world.num_free_cells} free cells for {self.num_agents} agents and a goal;"
          " lower num_distractors or wall_density, or raise grid_size")
    if world.cell_size < 4:
      raise ConfigError(
          f"resolution={self.resolution} gives {world.cell_size} px per cell; headings are"
          f" invisible below 4 px, use resolution >= {4 * self.grid_size}")

  @property
  def num_agents(self) -> int:
    return 1 + self.num_distractors

  @property
  def episode_length(self) -> int:
    return self.max_steps + 1

  @property
  def num_actions(self) -> int:
    return mg.NUM_ACTIONS

  def evaluate(self, policy: Callable[[np.ndarray, list], np.ndarray], num_episodes: int,
               seed: int) -> dict[str, Any]:
    """`policy`'s episodes beside the expert's and a uniformly random policy's on the same
    episodes (`run_episodes` summaries under policy, expert, random)."""
    return {name: run_episodes(self, fn, num_episodes, seed)
            for name, fn in (("policy", policy), ("expert", expert_policy),
                             ("random", random_policy))}

  @property
  def world(self) -> mg.MultigridConfig:
    return mg.MultigridConfig(
        grid_size=self.grid_size, resolution=self.resolution, num_agents=self.num_agents,
        episode_length=self.episode_length, sticky_prob=self.sticky_prob,
        wall_density=self.wall_density)

  def metadata_config(self) -> dict[str, Any]:
    """The dataset metadata's `config`: multigrid's keys (read by the pipeline) + the task's."""
    return dict(dataclasses.asdict(self.world), num_distractors=self.num_distractors,
                max_steps=self.max_steps)

  @classmethod
  def from_metadata(cls, config: dict[str, Any]) -> "GoalTaskConfig":
    names = [f.name for f in dataclasses.fields(cls)]
    return cls(**{k: config[k] for k in names})


def goal_distances(walls_GG: np.ndarray, goal_rc) -> np.ndarray:
  """Shortest-path steps from every cell to the goal through free cells (BFS); -1 unreachable."""
  dist_GG = np.full(walls_GG.shape, -1, np.int32)
  dist_GG[tuple(goal_rc)] = 0
  frontier = [tuple(goal_rc)]
  while frontier:
    nxt = []
    for r, c in frontier:
      for dr, dc in mg.HEADING_DELTAS:
        q = (r + dr, c + dc)
        if not walls_GG[q] and dist_GG[q] < 0:
          dist_GG[q] = dist_GG[r, c] + 1
          nxt.append(q)
    frontier = nxt
  return dist_GG


def expert_action(walls_GG: np.ndarray, goal_rc, positions_k2: np.ndarray, heading: int) -> int:
  """The shortest-path expert's action for agent 0 (positions_k2[0]).

  Plans around the distractors where they stand now (their cells count as walls; if
  that cuts agent 0 off, it plans through them and waits for them to move). STAY on
  the goal; FORWARD if the cell ahead is one step closer; else turn towards a closer
  neighbour (right before left; left when the only one is behind).
  """
  blocked_GG = walls_GG.copy()
  blocked_GG[positions_k2[1:, 0], positions_k2[1:, 1]] = True
  r, c = int(positions_k2[0, 0]), int(positions_k2[0, 1])
  dist_GG = goal_distances(blocked_GG, goal_rc)
  if dist_GG[r, c] < 0:
    dist_GG = goal_distances(walls_GG, goal_rc)
  here = dist_GG[r, c]
  if here <= 0:
    return mg.STAY
  closer = [h for h in range(4)
            if dist_GG[r + mg.HEADING_DELTAS[h][0], c + mg.HEADING_DELTAS[h][1]] == here - 1]
  if heading in closer:
    return mg.FORWARD
  if (heading + 1) % 4 in closer:
    return mg.TURN_RIGHT
  return mg.TURN_LEFT


class GoalTaskEnv:
  """One episode of the goal task with a gymnasium-style interface.

  reset(seed=s, episode=e) -> (frame uint8 [H, W, 3], info);
  step(action of agent 0) -> (frame, reward, terminated, truncated, info).
  info: positions [K, 2], headings [K], goal (row, col), mask uint8 [H, W], steps.
  """

  def __init__(self, cfg: GoalTaskConfig):
    self.cfg = cfg
    self._world = cfg.world
    self._rng: Optional[np.random.Generator] = None
    self.done = True

  # ---- State. ----
  def reset(self, *, seed: int = 0, episode: int = 0, rng: Optional[np.random.Generator] = None):
    """Draws walls, goal, agents from `rng` (default np.random.default_rng([seed, episode]))."""
    cfg, g = self.cfg, self.cfg.grid_size
    self._rng = mg.episode_rng(seed, episode) if rng is None else rng
    self.walls_GG = mg.make_walls(self._world, self._rng)
    free = np.flatnonzero(~self.walls_GG)
    cells = self._rng.choice(free, cfg.num_agents + 1, replace=False)
    self.goal = np.array([cells[0] // g, cells[0] % g], np.int32)
    self.positions = np.stack([cells[1:] // g, cells[1:] % g], axis=-1).astype(np.int32)
    self.headings = self._rng.integers(0, 4, cfg.num_agents).astype(np.int32)
    self.dist_GG = goal_distances(self.walls_GG, self.goal)
    self._blocked_GG = self.walls_GG.copy()  # Distractors treat the goal as wall.
    self._blocked_GG[tuple(self.goal)] = True
    self._previous = None
    self.steps = 0
    self.done = False
    return self.render(), self.info()

  def info(self) -> dict[str, Any]:
    return dict(positions=self.positions.copy(), headings=self.headings.copy(),
                goal=self.goal.copy(), steps=self.steps,
                success=bool(np.array_equal(self.positions[0], self.goal)))

  def expert_action(self) -> int:
    return expert_action(self.walls_GG, self.goal, self.positions, int(self.headings[0]))

  # ---- Dynamics. ----
  def advance(self, action: int) -> None:
    """One simultaneous step of all agents (multigrid's rules); no episode bookkeeping."""
    k = self.cfg.num_agents
    fresh = self._rng.integers(0, mg.NUM_ACTIONS, k)
    sticky = self._rng.random(k) < self.cfg.sticky_prob
    acts = fresh if self._previous is None else np.where(sticky, self._previous, fresh)
    acts[0] = action
    occupied_GG = np.zeros_like(self.walls_GG)
    occupied_GG[self.positions[:, 0], self.positions[:, 1]] = True
    for i in self._rng.permutation(k):
      if acts[i] in (mg.TURN_LEFT, mg.TURN_RIGHT):
        self.headings[i] = (self.headings[i] + (1 if acts[i] == mg.TURN_RIGHT else -1)) % 4
      elif acts[i] == mg.FORWARD:
        target = self.positions[i] + mg.HEADING_DELTAS[self.headings[i]]
        blocked = (self.walls_GG if i == 0 else self._blocked_GG)[tuple(target)]
        if not blocked and not occupied_GG[tuple(target)]:
          occupied_GG[tuple(self.positions[i])] = False
          occupied_GG[tuple(target)] = True
          self.positions[i] = target
    self._previous = acts
    self.last_actions = acts.astype(np.int32)

  def step(self, action: int):
    if self.done:
      raise RuntimeError("step() after the episode ended; call reset() first")
    if not 0 <= int(action) < mg.NUM_ACTIONS:
      raise ValueError(f"action={action} is not in [0, {mg.NUM_ACTIONS})")
    self.advance(int(action))
    self.steps += 1
    info = self.info()
    terminated = info["success"]
    truncated = not terminated and self.steps >= self.cfg.max_steps
    reward = 1.0 - 0.9 * self.steps / self.cfg.max_steps if terminated else 0.0
    self.done = terminated or truncated
    return self.render(), reward, terminated, truncated, info

  # ---- Rendering. ----
  def render_masks(self, positions_lk2: np.ndarray, headings_lk: np.ndarray) -> np.ndarray:
    """Entity-id masks uint8 [L, H, W] (the goal is floor)."""
    return multigrid_render.render_masks(self._world, self.walls_GG, positions_lk2, headings_lk)

  def render_frames(self, masks_lhw: np.ndarray) -> np.ndarray:
    """Frames uint8 [L, H, W, 3]: multigrid's colours with the goal cell's floor in white."""
    frames = multigrid_render.COLOR_LUT[masks_lhw]
    c = self._world.cell_size
    (r, q) = self.goal
    cell = frames[:, r * c:(r + 1) * c, q * c:(q + 1) * c]
    floor = masks_lhw[:, r * c:(r + 1) * c, q * c:(q + 1) * c] == records.FLOOR_ID
    cell[floor] = GOAL_COLOR
    return frames

  def render(self) -> np.ndarray:
    masks = self.render_masks(self.positions[None], self.headings[None])
    return self.render_frames(masks)[0]


def generate_demonstration(cfg: GoalTaskConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """One expert episode of max_steps + 1 frames (the expert stays once on the goal).

  Returns multigrid's episode fields (frames, masks, actions [L-1, K] with agent 0's
  expert actions in column 0, positions, headings) and active uint8 [L] (1 while
  agent 0 has not reached the goal).
  """
  env = GoalTaskEnv(cfg)
  env.reset(rng=rng)
  l, k = cfg.episode_length, cfg.num_agents
  positions = np.zeros((l, k, 2), np.int32)
  headings = np.zeros((l, k), np.int32)
  actions = np.zeros((l - 1, k), np.int32)
  active = np.zeros((l,), np.uint8)
  positions[0], headings[0] = env.positions, env.headings
  for t in range(l - 1):
    active[t] = not np.array_equal(env.positions[0], env.goal)
    env.advance(env.expert_action())
    actions[t], positions[t + 1], headings[t + 1] = env.last_actions, env.positions, env.headings
  masks = env.render_masks(positions, headings)
  return dict(frames=env.render_frames(masks), masks=masks, actions=actions,
              positions=positions, headings=headings, active=active)


def write_dataset(out_dir: str, cfg: GoalTaskConfig, num_episodes: int, seed: int = 0,
                  episodes_per_shard: int = 256, progress: bool = True) -> dict[str, Any]:
  """Expert demonstrations as ArrayRecord shards + metadata.json (multigrid's layout)."""
  if num_episodes < 1:
    raise ConfigError(f"episodes={num_episodes}; generate at least 1 episode")
  os.makedirs(out_dir, exist_ok=True)
  records.remove_metadata(out_dir)  # Stale metadata must not describe half-new shards.
  shapes = dict(mg.field_shapes(cfg.world), active=(cfg.episode_length,))
  splits, first = {}, 0
  bar = tqdm.tqdm(total=num_episodes, desc="demonstrations", disable=not progress)
  for split, n in records.split_counts(num_episodes).items():
    episodes = (generate_demonstration(cfg, mg.episode_rng(seed, e))
                for e in range(first, first + n))
    splits[split] = records.write_split(out_dir, split, episodes, n, episodes_per_shard,
                                        FIELDS, dtypes=RECORD_DTYPES, bar=bar)
    splits[split]["first_episode"] = first
    first += n
  bar.close()
  metadata = dict(
      format_version=records.FORMAT_VERSION, generator="flam_jax.data.goal_task",
      config=cfg.metadata_config(), seed=seed, num_episodes=num_episodes,
      episodes_per_shard=episodes_per_shard, splits=splits, byte_order="little",
      fields=[dict(name=f, dtype=FIELD_DTYPES[f], shape=list(shapes[f])) for f in FIELDS],
      record_bytes=sum(math.prod(shapes[f]) * np.dtype(FIELD_DTYPES[f]).itemsize
                       for f in FIELDS))
  records.write_metadata(out_dir, metadata)
  return metadata


def run_episodes(cfg: GoalTaskConfig, policy: Callable[[np.ndarray, list], np.ndarray],
                 num_episodes: int, seed: int) -> dict[str, Any]:
  """Runs `policy` on episodes 0..N-1 of `seed`, all in lock step (one policy call a step).

  policy(frames uint8 [E, H, W, 3], envs) -> actions int [E] for the E running episodes
  (`envs` lets scripted policies read the state). Returns success_rate, mean_return,
  mean_steps (of all episodes) and the per-episode returns.
  """
  envs = [GoalTaskEnv(cfg) for _ in range(num_episodes)]
  frames = np.stack([env.reset(seed=seed, episode=e)[0] for e, env in enumerate(envs)])
  returns = np.zeros(num_episodes, np.float64)
  success = np.zeros(num_episodes, bool)
  running = np.ones(num_episodes, bool)
  while running.any():
    live = np.flatnonzero(running)
    actions = np.asarray(policy(frames[live], [envs[i] for i in live]))
    for i, action in zip(live, actions):
      frames[i], reward, terminated, truncated, _ = envs[i].step(int(action))
      returns[i] += reward
      success[i] |= terminated
      running[i] = not (terminated or truncated)
  return dict(success_rate=float(success.mean()), mean_return=float(returns.mean()),
              mean_steps=float(np.mean([env.steps for env in envs])),
              returns=returns.tolist(), num_episodes=num_episodes, seed=seed)


def expert_policy(frames, envs) -> np.ndarray:
  del frames
  return np.array([env.expert_action() for env in envs])


def random_policy(frames, envs) -> np.ndarray:
  """Uniform actions drawn from each episode's own rng (reproducible per episode)."""
  del frames
  return np.array([env._rng.integers(0, mg.NUM_ACTIONS) for env in envs])  # pylint: disable=protected-access


def _define_flags():
  defaults = GoalTaskConfig()
  flags.DEFINE_string("out", None, "Output directory.", required=True)
  flags.DEFINE_integer("episodes", 2000, "Demonstration episodes (all splits).")
  flags.DEFINE_integer("num_distractors", defaults.num_distractors, "Randomly moving agents.")
  flags.DEFINE_integer("grid_size", defaults.grid_size, "Cells per side, with the wall ring.")
  flags.DEFINE_integer("resolution", defaults.resolution, "Pixels per side.")
  flags.DEFINE_integer("max_steps", defaults.max_steps, "Step limit (episodes: +1 frames).")
  flags.DEFINE_float("sticky_prob", defaults.sticky_prob, "Distractors' P(repeat action).")
  flags.DEFINE_float("wall_density", defaults.wall_density, "Interior wall fraction.")
  flags.DEFINE_integer("seed", 0, "Dataset seed.")


def _main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  values = {f.name: flags.FLAGS[f.name].value for f in dataclasses.fields(GoalTaskConfig)}
  try:
    cfg = GoalTaskConfig(**values)
    meta = write_dataset(flags.FLAGS.out, cfg, flags.FLAGS.episodes, seed=flags.FLAGS.seed)
  except ConfigError as e:
    sys.exit(f"error: {e}")
  expert = run_episodes(cfg, expert_policy, min(200, meta["num_episodes"]),
                        seed=flags.FLAGS.seed + 1)
  print(f"wrote {meta['num_episodes']} demonstrations to {os.path.abspath(flags.FLAGS.out)}; "
        f"expert success rate {expert['success_rate']:.2f} on {expert['num_episodes']} fresh "
        "episodes")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(_main)

"""Runs inside the Procgen environment (numpy<2, gym<1, procgen2): plays episodes.

Not imported by the library: `flam_jax.data.procgen` runs this file with the interpreter
of the environment it created, because procgen2 cannot share the project's numpy. It
imports only numpy and procgen. Two modes:

* Recording (`--out`): writes one `episode_<e>.npz` per episode: frames uint8
  [T, S, S, 3] (S = 64, or the 512 px render with --hires) and actions int32 [T-1] (the
  action taken after frame t), at most max_frames frames from a level's beginning.
  `--policy=random` (Table 1's Procgen data): one environment for all episodes, on levels
  drawn from [start_level, start_level + episodes), a random policy that repeats its
  previous action with probability `sticky`. `--policy=planner` (the demonstrator of the
  policy experiments): episode e plays level start_level + e; at each step the planner
  copies the game's state into a second environment and tries every action for
  `plan_horizon` steps (the action held for `plan_hold` steps, then random ones), scoring
  the rewards and -10 for an end without the completion reward (a death), and takes the
  best action (ties broken at random). Its npz also holds rewards float32 [T-1],
  episode_return (the whole episode's, played on randomly after the recorded frames) and
  steps. An action that ends the episode is not recorded: the frame after it is the next
  level's.
* Serving (`--serve`): live episodes for evaluating a policy that runs in another
  process. Requests are JSON lines on stdin; each answer is one JSON line on stdout,
  followed by the frames' raw bytes when it says `frames_bytes`:
    {"cmd": "reset", "levels": [...]}      -> frames of the first observation of each level
    {"cmd": "step", "actions": [...]}      -> rewards, done; frames (one action per
                                              running episode, in order; done ones stay done)
    {"cmd": "play", "policy": "planner"|"random", "levels": [...], "max_steps": N}
                                            -> returns, steps (a reference policy's episodes)
    {"cmd": "close"}
"""

import argparse
import json
import os
import sys

import numpy as np

COMPLETION_REWARD = 10.0  # Procgen's reward for completing a level (bigfish, starpilot, ...).
DEATH_PENALTY = -10.0


def make_env(game, level, seed, hires=False):
  from procgen import ProcgenGym3Env  # pylint: disable=g-import-not-at-top
  return ProcgenGym3Env(num=1, env_name=game, start_level=level, num_levels=1,
                        use_backgrounds=False, distribution_mode="easy", rand_seed=seed,
                        render_mode="rgb_array" if hires else None)


class Episode:
  """One level of `game`, stepped one action at a time (gym3 resets it after its end)."""

  def __init__(self, game, level, seed, hires=False):
    self.env = make_env(game, level, seed, hires)
    self.hires = hires
    self.num_actions = self.env.ac_space.eltype.n

  def frame(self):
    return self.env.get_info()[0]["rgb"] if self.hires else self.env.observe()[1]["rgb"][0]

  def step(self, action):
    """(reward, ended): gym3 flags the first frame of the next episode after an end."""
    self.env.act(np.array([int(action)]))
    reward, _, first = self.env.observe()
    return float(reward[0]), bool(first[0])


class Planner:
  """Lookahead on copies of the game's state (a second environment of the same game)."""

  def __init__(self, game, seed, horizon, hold):
    self.sim = make_env(game, 0, seed)
    self.horizon, self.hold = horizon, hold

  def value(self, state, action, rng, num_actions):
    self.sim.callmethod("set_state", state)
    total = 0.0
    for t in range(self.horizon):
      self.sim.act(np.array([action if t < self.hold else int(rng.integers(num_actions))]))
      reward, _, first = self.sim.observe()
      total += float(reward[0])
      if first[0]:
        return total + (0.0 if reward[0] >= COMPLETION_REWARD else DEATH_PENALTY)
    return total

  def act(self, episode, rng):
    state = episode.env.callmethod("get_state")
    values = np.array([self.value(state, a, rng, episode.num_actions)
                       for a in range(episode.num_actions)])
    return int(rng.choice(np.flatnonzero(values == values.max())))


def play(episode, choose_action, *, max_frames, max_steps):
  """Plays one episode to its end (or max_steps): its first max_frames frames, the actions
  and rewards between them, and the whole return. choose_action(recording) -> action.
  An action that ends the episode is not recorded (its next frame is the next level's)."""
  frames, actions, rewards = [episode.frame()], [], []
  total, steps, ended = 0.0, 0, False
  while not ended and steps < max_steps:
    recording = len(frames) < max_frames
    action = choose_action(recording)
    reward, ended = episode.step(action)
    total, steps = total + reward, steps + 1
    if recording and not ended:
      frames.append(episode.frame())
      actions.append(action)
      rewards.append(reward)
  return dict(frames=np.stack(frames).astype(np.uint8), actions=np.asarray(actions, np.int32),
              rewards=np.asarray(rewards, np.float32), episode_return=np.float32(total),
              steps=np.int32(steps), num_actions=np.int32(episode.num_actions))


def reference_actions(policy, planner, episode, rng):
  """choose_action for the reference policies: the planner, or uniform random actions."""
  if policy == "planner":
    return lambda recording: planner.act(episode, rng)
  return lambda recording: int(rng.integers(episode.num_actions))


def record_random(args):
  """The sticky random policy's episodes (Table 1's Procgen data): one environment for all
  episodes, resetting itself onto levels drawn from [start_level, start_level + episodes)."""
  from procgen import ProcgenGym3Env  # pylint: disable=g-import-not-at-top
  # One environment for all episodes (creating one costs seconds): it resets itself at the
  # end of each episode onto a level drawn from [start_level, start_level + episodes).
  env = ProcgenGym3Env(num=1, env_name=args.game, start_level=args.start_level,
                       num_levels=args.first_episode + args.episodes, use_backgrounds=False,
                       distribution_mode="easy", rand_seed=args.seed,
                       render_mode="rgb_array" if args.hires else None)
  num_actions = env.ac_space.eltype.n
  rng = np.random.default_rng(args.seed)

  def frame():
    return env.get_info()[0]["rgb"] if args.hires else env.observe()[1]["rgb"][0]

  def step(action):
    env.act(np.array([action]))
    return bool(env.observe()[2][0])  # True: the episode ended and a new one began.

  for e in range(args.first_episode, args.first_episode + args.episodes):
    frames, actions, action = [frame()], [], int(rng.integers(num_actions))
    ended = False
    while len(frames) < args.max_frames:
      if rng.random() >= args.sticky:
        action = int(rng.integers(num_actions))
      if step(action):
        ended = True
        break
      frames.append(frame())
      actions.append(action)
    while not ended:  # Play the rest of a long episode unrecorded: each episode starts fresh.
      ended = step(int(rng.integers(num_actions)))
    save(args.out, e, dict(frames=np.stack(frames).astype(np.uint8),
                           actions=np.asarray(actions, np.int32),
                           num_actions=np.int32(num_actions)))


def record_planner(args):
  """The planner's episodes: episode e plays level start_level + e (reproducible alone)."""
  planner = Planner(args.game, args.seed, args.plan_horizon, args.plan_hold)
  for e in range(args.first_episode, args.first_episode + args.episodes):
    episode = Episode(args.game, args.start_level + e, args.seed, args.hires)
    rng = np.random.default_rng([args.seed, e])

    def choose_action(recording, episode=episode, rng=rng):
      # Past the recorded frames the episode is played on randomly, for its whole return.
      return planner.act(episode, rng) if recording else int(rng.integers(episode.num_actions))

    save(args.out, e, play(episode, choose_action, max_frames=args.max_frames,
                           max_steps=args.max_steps))


def save(out, e, episode):
  tmp = os.path.join(out, f"episode_{e:06d}.tmp.npz")
  np.savez(tmp, **episode)
  os.replace(tmp, os.path.join(out, f"episode_{e:06d}.npz"))
  print(f"episode {e}: {len(episode['frames'])} frames", flush=True)


def serve(args):
  out = sys.stdout.buffer
  episodes, running = [], np.zeros(0, bool)
  planner = None

  def answer(payload, frames=None):
    if frames is not None:
      payload["frames_bytes"] = int(frames.nbytes)
      payload["frames_shape"] = list(frames.shape)
    out.write((json.dumps(payload) + "\n").encode())
    if frames is not None:
      out.write(np.ascontiguousarray(frames, np.uint8).tobytes())
    out.flush()

  for line in sys.stdin:
    request = json.loads(line)
    cmd = request["cmd"]
    if cmd == "reset":
      episodes = [Episode(args.game, level, args.seed) for level in request["levels"]]
      running = np.ones(len(episodes), bool)
      answer(dict(ok=True), np.stack([e.frame() for e in episodes]))
    elif cmd == "step":
      live = np.flatnonzero(running)
      rewards, done = np.zeros(len(episodes)), ~running
      for i, action in zip(live, request["actions"]):
        rewards[i], ended = episodes[i].step(action)
        done[i] = ended
      frames = np.stack([e.frame() for e in episodes])
      running = ~done
      answer(dict(rewards=rewards.tolist(), done=done.tolist()), frames)
    elif cmd == "play":
      if request["policy"] == "planner" and planner is None:
        planner = Planner(args.game, args.seed, args.plan_horizon, args.plan_hold)
      returns, steps = [], []
      for level in request["levels"]:
        episode = Episode(args.game, level, args.seed)
        rng = np.random.default_rng([args.seed, level])
        ep = play(episode, reference_actions(request["policy"], planner, episode, rng),
                  max_frames=0, max_steps=request["max_steps"])
        returns.append(float(ep["episode_return"]))
        steps.append(int(ep["steps"]))
      answer(dict(returns=returns, steps=steps))
    elif cmd == "close":
      answer(dict(ok=True))
      return
    else:
      answer(dict(error=f"unknown cmd {cmd!r}"))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--game", required=True)
  parser.add_argument("--serve", action="store_true")
  parser.add_argument("--episodes", type=int, default=0)
  parser.add_argument("--first_episode", type=int, default=0)
  parser.add_argument("--max_frames", type=int, default=64)
  parser.add_argument("--max_steps", type=int, default=10_000)
  parser.add_argument("--start_level", type=int, default=0)
  parser.add_argument("--policy", choices=("random", "planner"), default="random")
  parser.add_argument("--sticky", type=float, default=0.5)
  parser.add_argument("--plan_horizon", type=int, default=10)
  parser.add_argument("--plan_hold", type=int, default=2)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--hires", action="store_true")
  parser.add_argument("--out")
  args = parser.parse_args()
  if args.serve:
    serve(args)
    return
  os.makedirs(args.out, exist_ok=True)
  (record_planner if args.policy == "planner" else record_random)(args)


if __name__ == "__main__":
  main()

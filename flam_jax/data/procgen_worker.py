"""Runs inside the Procgen environment (numpy<2, gym<1, procgen2): plays episodes, saves npz.

Not imported by the library: `flam_jax.data.procgen` runs this file with the interpreter
of the environment it created, because procgen2 cannot share the project's numpy. It
imports only numpy and procgen, and writes one `episode_<e>.npz` per episode:
frames uint8 [T, S, S, 3] (S = 64, or the 512 px render with --hires) and actions
int32 [T-1] (the action taken after frame t). One environment plays all episodes on levels
drawn from [start_level, start_level + episodes) with a random policy that repeats its
previous action with probability `sticky`; an episode longer than max_frames is played to
its end unrecorded, so every recorded episode starts at a level's beginning.
"""

import argparse
import os

import numpy as np


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--game", required=True)
  parser.add_argument("--episodes", type=int, required=True)
  parser.add_argument("--first_episode", type=int, default=0)
  parser.add_argument("--max_frames", type=int, required=True)
  parser.add_argument("--start_level", type=int, default=0)
  parser.add_argument("--sticky", type=float, default=0.5)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--hires", action="store_true")
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  from procgen import ProcgenGym3Env  # pylint: disable=g-import-not-at-top
  os.makedirs(args.out, exist_ok=True)
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
    tmp = os.path.join(args.out, f"episode_{e:06d}.tmp.npz")
    np.savez(tmp, frames=np.stack(frames).astype(np.uint8),
             actions=np.asarray(actions, np.int32), num_actions=np.int32(num_actions))
    os.replace(tmp, os.path.join(args.out, f"episode_{e:06d}.npz"))
    print(f"episode {e}: {len(frames)} frames", flush=True)


if __name__ == "__main__":
  main()

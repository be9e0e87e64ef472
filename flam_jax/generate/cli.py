"""flam-generate: controllable video from a trained latent action model (Sec 4.3, 5.9, Fig. 4).

Pick a start frame, choose an action per step and control unit (FLAM: one per slot),
and roll the world model forward on its own predictions (`flam_jax.lib.rollout`):

    frame 0 --encode--> z_q --entities--> s_0 --FDM(s, a_1..a_H)--> s_1..s_H
            --aggregator (greedy, KV cache) / regression--> z_q,1..H --decode--> frames

    flam-generate --workdir=W --sample --steps 8          (or python -m flam_jax.generate)
    flam-generate --workdir=W --actions "0,1;2,3;3,3" --episode 2
    flam-generate --workdir=W --infer --figure --control_grid
    flam-generate --workdir=W --image start.png --actions "1,0"

Outputs go to `--out` (default <workdir>/generate/): rollout.gif (a bar under the frames
marks the step) and rollout.png (with --infer also groundtruth.gif, comparison.gif, and a
ground-truth row in rollout.png), control_grid.png (--control_grid), figure.png (--figure).
Frame 0 of every rollout is the tokenizer's reconstruction of the start frame.
"""

import os

from absl import flags
import jax
import numpy as np

from flam_jax import cli
from flam_jax.errors import ConfigError
from flam_jax.generate import actions as actions_lib
from flam_jax.generate import inputs, pictures
from flam_jax.lib import images, loading, rollout


def define_flags() -> None:
  """The CLI's flags; defined only when run as a program, so importing defines none."""
  cli.define_workdir_flag("Workdir of a trained latent action model.")
  flags.DEFINE_integer("checkpoint_step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_integer("steps", None, "Rollout length H (default 8, or what the clip allows).")
  flags.DEFINE_string("split", "test", "Dataset split of the start frame.")
  flags.DEFINE_integer("episode", 0, "Episode of the start frame.")
  flags.DEFINE_integer("start", 0, "Index of the start frame in the episode.")
  flags.DEFINE_string("image", None, "Start frame from an image file instead of the dataset.")
  flags.DEFINE_string(
      "actions", None, "Code indices per step and unit: units split by ',', steps by ';' "
      "(e.g. \"0,1;2,3\"); a single step is repeated --steps times.")
  flags.DEFINE_bool("sample", False, "Random actions (codebook or prior); the default.")
  flags.DEFINE_bool("infer", False, "Actions the IDM infers from the real clip; also writes "
                    "the ground truth beside the rollout.")
  flags.DEFINE_bool("control_grid", False, "Also write control_grid.png (slots x codes).")
  flags.DEFINE_bool("figure", False, "Also write figure.png (Figs. 7-9 style).")
  flags.DEFINE_integer("max_codes", 16, "Control grid columns (codes, or prior draws).")
  flags.DEFINE_string("out", None, "Output directory (default <workdir>/generate).")
  flags.DEFINE_integer("fps", 4, "GIF frames per second.")
  flags.DEFINE_integer("upscale", 0, "Pixel upscaling of the outputs (0: to at least 128 px).")
  flags.DEFINE_integer("seed", 0, "Seed of --sample and of Gaussian control grid columns.")


def _check_modes(actions, sample, infer, image, figure, steps) -> None:
  modes = [name for name, on in (("--actions", actions is not None), ("--sample", sample),
                                 ("--infer", infer)) if on]
  if len(modes) > 1:
    raise ConfigError(f"{' and '.join(modes)} are exclusive; pick one way to choose actions")
  if image is not None and (infer or figure):
    raise ConfigError("--infer and --figure need a real clip; drop --image and pick one with "
                      "--split/--episode/--start")
  if steps is not None and steps < 1:
    raise ConfigError(f"--steps {steps}; use at least 1")


def _given_indices(loaded, actions, steps):
  """--actions as code indices [H, U] (one step repeated --steps times), or None."""
  if actions is None:
    return None
  indices = actions_lib.parse_actions(loaded, actions)
  if len(indices) == 1 and steps is not None:
    return np.repeat(indices, steps, axis=0)
  if steps is not None and steps != len(indices):
    raise ConfigError(f"--actions gives {len(indices)} steps but --steps is {steps}; give one "
                      "step (repeated) or as many as --steps")
  return indices


def _choose_actions(loaded, params, indices, infer, clip, gt_actions, steps, seed):
  """(model actions [H, K|1, A], code indices [H, U] or None) from the chosen source."""
  if infer:
    inferred = rollout.infer_clip(loaded, params, clip, gt_actions)
    return inferred["actions"], inferred["indices"]
  if indices is not None:
    return actions_lib.actions_from_indices(loaded, indices), indices
  return actions_lib.sample_actions(loaded, jax.random.PRNGKey(seed), steps)


def _write_rollout(out, frames, truth, fps, upscale) -> dict:
  """rollout.gif/png, and with a ground truth clip groundtruth.gif and comparison.gif."""
  paths, strip_rows = {}, [frames]
  gif = lambda name, frames_: images.save_gif(os.path.join(out, name),
                                              pictures.with_progress_bar(frames_), fps=fps,
                                              upscale=upscale)
  if truth is not None:
    strip_rows = [truth, frames]
    paths["groundtruth.gif"] = gif("groundtruth.gif", truth)
    paths["comparison.gif"] = gif(
        "comparison.gif", np.concatenate([truth, np.ones_like(truth[:, :, :2]), frames], axis=2))
  paths["rollout.gif"] = gif("rollout.gif", frames)
  paths["rollout.png"] = images.save_png(os.path.join(out, "rollout.png"),
                                         images.grid(strip_rows), upscale=upscale)
  return paths


def generate(workdir: str, *, steps=None, split="test", episode=0, start=0, image=None,
             actions=None, sample=False, infer=False, control_grid=False, figure=False,
             max_codes=16, out=None, fps=4, upscale=0, seed=0, checkpoint_step=None) -> dict:
  """The CLI's work: loads the model, rolls out, writes pictures; returns {name: path}."""
  _check_modes(actions, sample, infer, image, figure, steps)
  loaded, params, step = loading.load_trained(workdir, checkpoint_step)
  indices = _given_indices(loaded, actions, steps)
  steps = steps if indices is None else len(indices)
  size = loaded.config.data.image_size
  clip = gt_actions = None
  if image is not None:
    start_frame = inputs.load_image(image, size)
    steps = 8 if steps is None else steps
  else:
    clip, gt_actions, steps = inputs.load_clip(loaded, split, episode, start, steps,
                                               need_steps=infer or figure)
    start_frame = clip[0]
  print(f"{loaded.config.lam.variant} model, checkpoint step {step}; {steps} steps from "
        f"{image or f'{split} episode {episode} frame {start}'}", flush=True)
  model_actions, indices = _choose_actions(loaded, params, indices, infer, clip, gt_actions,
                                           steps, seed)
  if indices is not None:
    print(f"actions (code per {actions_lib.unit_name(loaded)}, steps split by ';'): "
          f"--actions \"{actions_lib.format_indices(indices)}\"")
  frames = rollout.rollout_frames(loaded, params, start_frame, model_actions)

  out = os.path.abspath(out or os.path.join(workdir, "generate"))
  upscale = upscale or max(1, 128 // size)
  truth = rollout.as_frames(loaded, clip) if infer else None
  paths = _write_rollout(out, frames, truth, fps, upscale)
  if control_grid:
    picture, _ = pictures.slot_control_grid(loaded, params, start_frame, steps,
                                            max_codes=max_codes, seed=seed)
    paths["control_grid.png"] = images.save_png(os.path.join(out, "control_grid.png"), picture,
                                                upscale=upscale)
  if figure:
    picture, _ = pictures.figure_rollout(loaded, params, clip, gt_actions)
    paths["figure.png"] = images.save_png(os.path.join(out, "figure.png"), picture,
                                          upscale=upscale)
  for name, path in paths.items():
    print(f"  {name:17s} {path}")
  return paths


def main(argv):
  del argv
  f = cli.FLAGS
  generate(f.workdir, steps=f.steps, split=f.split, episode=f.episode, start=f.start,
           image=f.image, actions=f.actions, sample=f.sample, infer=f.infer,
           control_grid=f.control_grid, figure=f.figure, max_codes=f.max_codes, out=f.out,
           fps=f.fps, upscale=f.upscale, seed=f.seed, checkpoint_step=f.checkpoint_step)


def run() -> None:
  """Console entry point `flam-generate`."""
  cli.run(main, define_flags)

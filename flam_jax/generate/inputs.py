"""Start frames and clips for generation: an image file or a dataset episode."""

from typing import Optional

import numpy as np

from flam_jax.data import pipeline
from flam_jax.errors import DataError


def load_image(path: str, size: int) -> np.ndarray:
  """A start frame from an image file: uint8 [size, size, 3]; one-line errors."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      frame = np.asarray(image.convert("RGB"))
  except FileNotFoundError:
    raise DataError(f"--image {path} does not exist") from None
  except (UnidentifiedImageError, OSError) as e:
    raise DataError(f"--image {path} is not a readable image ({type(e).__name__})") from None
  if frame.shape[:2] != (size, size):
    raise DataError(f"--image {path} is {frame.shape[1]}x{frame.shape[0]} pixels but the model "
                    f"was trained on {size}x{size} frames; resize it to {size}x{size}")
  return frame


def load_clip(loaded, split: str, episode: int, start: int, steps: Optional[int],
              need_steps: bool):
  """A dataset clip from frame `start`: (frames uint8 [T, S, S, 3], actions [T-1, agents], H).

  With `need_steps` (the clip's actions or frames are used: --infer, --figure) the episode
  must hold H frames after the start (H defaults to what it holds, at most 8); otherwise
  H defaults to 8 and the clip holds what the episode has, up to H + 1 frames.
  """
  data_dir = loaded.config.data.dir
  source = pipeline.WindowSource(data_dir, split, window_length=1, fields=("frames", "actions"))
  if not 0 <= episode < source.num_episodes:
    raise DataError(f"--episode {episode} is out of range: split {split!r} of {data_dir} has "
                    f"{source.num_episodes} episodes (0..{source.num_episodes - 1})")
  data = source.read_episode(episode)
  length = data["frames"].shape[0]
  if not 0 <= start < length - (1 if need_steps else 0):
    raise DataError(f"--start {start} is out of range: episodes have {length} frames "
                    f"(0..{length - (2 if need_steps else 1)})")
  available = length - 1 - start
  if steps is None:
    steps = min(8, available) if need_steps else 8
  elif need_steps and steps > available:
    raise DataError(f"--steps {steps} from --start {start} runs past the episode's {length} "
                    f"frames (--infer and --figure compare with the real clip); use --steps "
                    f"<= {available} or an earlier --start")
  stop = start + min(steps, available)
  return data["frames"][start:stop + 1], data["actions"][start:stop], steps


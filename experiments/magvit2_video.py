"""The real-video tokenizer (Table 4, tokenizer.kind=magvit2) on imported mp4, with its PSNR.

    python experiments/magvit2_video.py --out=runs/magvit2 [--src=DIR_OF_MP4] [--steps=1500]
    python experiments/magvit2_video.py --out=runs/magvit2 --eval_only

Without --src it writes synthetic "sports-like" mp4 clips (coloured balls moving with
independent velocities over a textured pitch, 128x96, 48 frames, h264 at crf 0) into
<workdir>/videos, because no real video ships with the repository. Imports them with
`import_video` (centre crop, 64 px), trains configs/video.py:tokenizer at a CPU-sized
setting (channels (32, 64, 64): 8x8 tokens of FSQ [4]*7 = 16384 codes) and reports the
reconstruction PSNR on the test split's frames (never seen in training) into
<workdir>/psnr.json.
"""

import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=wrong-import-position

_OUT = flags.DEFINE_string("out", None, "Output directory (the run's workdir).", required=True)
_SRC = flags.DEFINE_string("src", "", "Folder of mp4/webm videos (default: synthetic clips).")
_STEPS = flags.DEFINE_integer("steps", 1500, "Tokenizer training steps.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Frame side.")
_EVAL_ONLY = flags.DEFINE_bool("eval_only", False, "Only evaluate the latest checkpoint.")


def synthetic_videos(out: str, num_videos: int = 24, height: int = 96, width: int = 128,
                     frames: int = 48) -> str:
  """Clips of 3-6 coloured balls bouncing with noisy velocities over a textured pitch."""
  from tests import video_fixtures  # pylint: disable=g-import-not-at-top
  os.makedirs(out, exist_ok=True)
  y, x = np.mgrid[0:height, 0:width]
  for v in range(num_videos):
    path = os.path.join(out, f"match{v:02d}.mp4")
    if os.path.exists(path):
      continue
    rng = np.random.default_rng(v)
    pitch = np.stack([40 + 20 * np.sin(x / 7.0 + v),
                      120 + 30 * np.sin(y / 11.0) * np.cos(x / 13.0),
                      50 + 10 * np.cos(y / 5.0)], -1)
    n = rng.integers(3, 7)
    pos = rng.uniform([8, 8], [height - 8, width - 8], (n, 2))
    vel = rng.normal(0, 2.0, (n, 2))
    col, rad = rng.uniform(0, 255, (n, 3)), rng.uniform(3, 8, n)
    clip = []
    for _ in range(frames):
      img = pitch.copy()
      for k in range(n):
        img[(y - pos[k, 0])**2 + (x - pos[k, 1])**2 < rad[k]**2] = col[k]
      clip.append(np.clip(img, 0, 255).astype(np.uint8))
      vel += rng.normal(0, 0.5, vel.shape)
      pos += vel
      for axis, limit in ((0, height), (1, width)):
        bounce = (pos[:, axis] < 4) | (pos[:, axis] > limit - 4)
        vel[bounce, axis] *= -1
        pos[:, axis] = np.clip(pos[:, axis], 4, limit - 4)
    video_fixtures.write_video(path, np.stack(clip), fps=15)
  return out


def tokenizer_config(data_dir: str, image_size: int, steps: int):
  from configs import video  # pylint: disable=g-import-not-at-top
  config = video.get_config("tokenizer")
  config.data.dir, config.data.image_size = data_dir, image_size
  config.data.num_workers = 0
  config.tokenizer.encoder_channels = (32, 64, 64)
  config.tokenizer.z_channels = config.tokenizer.codebook_dim = 64
  config.batch_size, config.num_train_steps = 16, steps
  config.log_every_steps, config.checkpoint_every_steps, config.image_every_steps = 50, 250, 500
  config.optim.learning_rate, config.optim.warmup_steps = 1e-3, 50
  config.progress_bar = False
  return config


def test_psnr(workdir: str, data_dir: str, batch: int = 64) -> dict:
  """Mean reconstruction PSNR over every frame of the test split (latest checkpoint)."""
  import jax  # pylint: disable=g-import-not-at-top
  from ml_collections import ConfigDict  # pylint: disable=g-import-not-at-top
  from flam_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from flam_jax.lib import checkpointing, metrics  # pylint: disable=g-import-not-at-top
  from flam_jax.lib.models import make_tokenizer  # pylint: disable=g-import-not-at-top
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "tokenizer", "checkpoints"),
                                    async_save=False)
  step = ckpt.latest_step()
  config = ConfigDict(ckpt.restore_config(step))
  params = ckpt.restore_params(step)
  ckpt.close()
  model = make_tokenizer(config)
  recon = jax.jit(lambda p, f: metrics.psnr(f, model.apply({"params": p}, f)[0].clip(0, 1)))
  source = pipeline.WindowSource(data_dir, "test", window_length=1)
  frames = np.concatenate([source.read_episode(e)["frames"] for e in range(source.num_episodes)])
  psnrs = []
  for lo in range(0, len(frames), batch):
    chunk = frames[lo:lo + batch].astype(np.float32) / 255.0
    padded = np.zeros((batch,) + chunk.shape[1:], np.float32)
    padded[:len(chunk)] = chunk
    psnrs.append(np.asarray(recon(params, padded))[:len(chunk)])
  return dict(step=int(step), test_frames=len(frames), psnr=float(np.mean(np.concatenate(psnrs))),
              tokens=[int(n) // model.stride for n in frames.shape[1:3]], codes=model.codebook_size,
              kind=config.tokenizer.kind)


def main(argv):
  del argv
  from flam_jax import train  # pylint: disable=g-import-not-at-top
  from flam_jax.data import import_video  # pylint: disable=g-import-not-at-top
  workdir = os.path.abspath(_OUT.value)
  data_dir = os.path.join(workdir, "data")
  if not _EVAL_ONLY.value:
    src = _SRC.value or synthetic_videos(os.path.join(workdir, "videos"))
    import_video.import_dataset(src, "mp4", data_dir, image_size=_IMAGE_SIZE.value)
    train.run(tokenizer_config(data_dir, _IMAGE_SIZE.value, _STEPS.value), workdir)
  result = test_psnr(workdir, data_dir)
  path = os.path.join(workdir, "psnr.json")
  with open(path + ".tmp", "w") as f:
    json.dump(result, f, indent=2)
  os.replace(path + ".tmp", path)
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)

"""Stage 1 (Sec 4.1): train the FSQ VQ-VAE on frames with the reconstruction loss (Eq. 1)."""

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from flam_jax.errors import ConfigError
from flam_jax.lib import images, metrics
from flam_jax.modules.tokenizer import KINDS, Tokenizer, reconstruction_loss

NUM_PICTURE_FRAMES = 8


def compute_dtype(config: ConfigDict):
  names = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
  if config.compute_dtype not in names:
    raise ConfigError(f"config.compute_dtype={config.compute_dtype!r} is not one of "
                      f"{sorted(names)}; set --config.compute_dtype=float32 or bfloat16")
  return names[config.compute_dtype]


def make_tokenizer(config: ConfigDict) -> Tokenizer:
  """The tokenizer declared by `config.tokenizer`, checked against `config.data.image_size`."""
  tok = config.tokenizer
  kind = tok.get("kind", "impala")  # Configs saved before the key existed: IMPALA.
  if kind not in KINDS:
    raise ConfigError(f"config.tokenizer.kind={kind!r} is not one of {KINDS}; set "
                      "--config.tokenizer.kind accordingly")
  stride = 2 ** len(tok.encoder_channels)
  if config.data.image_size % stride:
    raise ConfigError(
        f"config.data.image_size={config.data.image_size} is not divisible by the tokenizer "
        f"stride {stride} (2^len(tokenizer.encoder_channels)); use a multiple of {stride}")
  return Tokenizer(encoder_channels=tuple(tok.encoder_channels), z_channels=tok.z_channels,
                   codebook_dim=tok.codebook_dim, levels=tuple(tok.levels),
                   dtype=compute_dtype(config), kind=kind)


def frames_to_float(frames_uint8):
  return frames_uint8.astype(jnp.float32) / 255.0


class TokenizerStage:
  """Frames [B, T, H, W, 3] uint8 are flattened to B*T images and reconstructed."""

  name = "tokenizer"
  data_fields = ("frames",)
  checkpoint_keys = ("stage", "tokenizer", "data.image_size")
  progress_keys = ("loss", "psnr")

  def __init__(self, config: ConfigDict):
    self.config = config
    self.model = make_tokenizer(config)

  def validate(self, metadata: dict) -> None:
    del metadata  # Image size and window length are checked by the pipeline.

  @staticmethod
  def _images(batch):
    frames = batch["frames"]  # [B, T, H, W, 3] uint8
    return frames_to_float(frames.reshape((-1,) + frames.shape[2:]))  # [B*T, H, W, 3]

  def init(self, rng, batch):
    return self.model.init(rng, self._images(batch))["params"]

  def loss(self, params, batch, rng):
    del rng
    images_bHWc = self._images(batch)
    recon_bHWc, indices_bhw = self.model.apply({"params": params}, images_bHWc)
    loss = reconstruction_loss(images_bHWc, recon_bHWc)
    codes_used = jnp.sum(jnp.bincount(indices_bhw.reshape(-1), length=self.model.codebook_size) > 0)
    return loss, dict(psnr=jnp.mean(metrics.psnr(images_bHWc, recon_bHWc)),
                      codebook_usage=codes_used / self.model.codebook_size)

  def visualize_arrays(self, params, batch):
    images_bHWc = self._images(batch)[:NUM_PICTURE_FRAMES]
    recon_bHWc, _ = self.model.apply({"params": params}, images_bHWc)
    return dict(originals=images_bHWc, reconstructions=recon_bHWc)

  def visualize(self, arrays) -> dict:
    """Originals above reconstructions."""
    return dict(reconstruction=images.grid([arrays["originals"], arrays["reconstructions"]]))

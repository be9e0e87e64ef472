"""Stage 1 (Sec 4.1): train the FSQ VQ-VAE on frames with the reconstruction loss (Eq. 1)."""

import jax.numpy as jnp
from ml_collections import ConfigDict

from flam_jax.lib import images, metrics
from flam_jax.lib.models import make_tokenizer
from flam_jax.modules.tokenizer import reconstruction_loss

NUM_PICTURE_FRAMES = 8


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

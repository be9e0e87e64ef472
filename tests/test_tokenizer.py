"""Tokenizer: shapes, codebook lookup consistency, that it learns, bf16."""

import jax
import jax.numpy as jnp
import numpy as np

from flam_jax.modules import fsq
from flam_jax.modules.tokenizer import Tokenizer
from tests.param_utils import reconstruction_losses

TINY = dict(encoder_channels=(8, 8), z_channels=8, codebook_dim=8, levels=(4, 4, 2))


def _frames(n=4, size=16, seed=0):
  rng = np.random.default_rng(seed)
  frames = np.zeros((n, size, size, 3), np.float32)
  for i in range(n):  # A coloured square on black: easy to reconstruct.
    y, x = rng.integers(0, size - 4, 2)
    frames[i, y:y + 4, x:x + 4] = rng.uniform(0.3, 1.0, 3)
  return jnp.asarray(frames)


def test_shapes_and_encode_decode_api():
  model = Tokenizer(**TINY)
  frames = _frames()
  params = model.init(jax.random.PRNGKey(0), frames)["params"]
  z_q, indices = model.apply({"params": params}, frames, method=Tokenizer.encode)
  assert z_q.shape == (4, 4, 4, 8) and indices.shape == (4, 4, 4)
  assert indices.dtype == jnp.int32 and int(indices.max()) < fsq.codebook_size(TINY["levels"])
  # The codebook lookup from indices gives exactly the quantized features.
  z_from_idx = model.apply({"params": params}, indices, method=Tokenizer.indices_to_features)
  np.testing.assert_allclose(z_from_idx, z_q, atol=1e-6)
  recon = model.apply({"params": params}, z_q, method=Tokenizer.decode)
  assert recon.shape == frames.shape and recon.dtype == jnp.float32


def test_training_reduces_reconstruction_loss():
  model = Tokenizer(**TINY)
  frames = _frames(n=8)
  losses = reconstruction_losses(model, frames)
  assert losses[-1] < 0.5 * losses[0], losses


def test_bfloat16_compute_keeps_float32_params_and_output():
  model = Tokenizer(**TINY, dtype=jnp.bfloat16)
  frames = _frames()
  params = model.init(jax.random.PRNGKey(0), frames)["params"]
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  recon, _ = model.apply({"params": params}, frames)
  assert recon.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(recon)))


def test_patch_local_encoder_tokens_depend_on_their_own_patch_only():
  model = Tokenizer(**TINY, patch_local=True)
  frames = _frames()
  params = model.init(jax.random.PRNGKey(0), frames)["params"]
  encode = jax.jit(lambda f: model.apply({"params": params}, f, method=Tokenizer.encode))
  z_q, indices = encode(frames)
  assert z_q.shape == (4, 4, 4, 8) and indices.shape == (4, 4, 4)
  # Changing the pixels of patch (1, 2) changes its features and nothing else.
  changed = frames.at[:, 4:8, 8:12].set(0.5)
  z_changed, _ = encode(changed)
  diff = np.abs(np.asarray(z_changed - z_q)).max(axis=(0, 3))
  assert diff[1, 2] > 1e-4
  diff[1, 2] = 0.0
  np.testing.assert_array_equal(diff, 0.0)
  # The whole-frame encoder's receptive field crosses patch borders (the reason for the option).
  whole = Tokenizer(**TINY)
  whole_params = whole.init(jax.random.PRNGKey(0), frames)["params"]
  encoder_out = lambda f: whole.apply({"params": whole_params}, f,
                                     method=lambda m, x: m.encoder(x))  # Before quantisation.
  assert np.abs(np.asarray(encoder_out(changed) - encoder_out(frames)))[:, 1, 1].max() > 1e-6

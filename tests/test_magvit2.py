"""The MAGVIT-v2-style tokenizer (tokenizer.kind=magvit2): shapes, pixel shuffle, that it learns."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flam_jax.errors import ConfigError
from flam_jax.modules import fsq, magvit2
from flam_jax.modules.tokenizer import Tokenizer
from tests.test_tokenizer import _frames
from tests.param_utils import reconstruction_losses

TINY = dict(encoder_channels=(8, 8), z_channels=8, codebook_dim=8, levels=(4, 4, 2),
            kind="magvit2")


def test_depth_to_space_moves_channels_to_2x2_pixels():
  x = jnp.arange(2 * 1 * 1 * 8).reshape(2, 1, 1, 8)
  y = magvit2.depth_to_space(x)
  assert y.shape == (2, 2, 2, 2)
  np.testing.assert_array_equal(y[0, :, :, 0], [[0, 2], [4, 6]])
  np.testing.assert_array_equal(y[0, :, :, 1], [[1, 3], [5, 7]])


def test_shapes_stride_and_group_norm():
  model = Tokenizer(**TINY)
  frames = _frames()
  params = model.init(jax.random.PRNGKey(0), frames)["params"]
  z_q, indices = model.apply({"params": params}, frames, method=Tokenizer.encode)
  assert model.stride == 4 and z_q.shape == (4, 4, 4, 8) and indices.shape == (4, 4, 4)
  assert int(indices.max()) < fsq.codebook_size(TINY["levels"])
  recon, _ = model.apply({"params": params}, frames)
  assert recon.shape == frames.shape
  names = str(jax.tree_util.tree_structure(params))
  assert "GroupNorm" in names and "ResBlock" in names


def test_table4_size_gives_14x14_tokens_of_16384_codes():
  model = Tokenizer(encoder_channels=(8, 8, 8, 8), z_channels=8, codebook_dim=8,
                    levels=(4,) * 7, kind="magvit2")
  shapes = jax.eval_shape(lambda: model.init_with_output(
      jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))[0][1])
  assert shapes.shape == (1, 14, 14) and model.codebook_size == 16384


def test_training_reduces_reconstruction_loss():
  model = Tokenizer(**TINY)
  frames = _frames(n=8)
  losses = reconstruction_losses(model, frames)
  assert losses[-1] < 0.5 * losses[0], losses


def test_unknown_kind_is_a_config_error():
  from configs import video  # pylint: disable=g-import-not-at-top
  from flam_jax.lib.models import make_tokenizer  # pylint: disable=g-import-not-at-top
  config = video.get_config("tokenizer")
  assert make_tokenizer(config).kind == "magvit2"
  config.tokenizer.kind = "vqgan"
  with pytest.raises(ConfigError, match="tokenizer.kind='vqgan'"):
    make_tokenizer(config)

"""Spatial-broadcast slot decoder: shapes, masks, both position embeddings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flam_jax.modules.slot_attention import patch_grid
from flam_jax.modules.slot_decoder import BroadcastMLP, SpatialBroadcastDecoder
from flam_jax.modules.transformer import MLP

B, K, D, N, F = 2, 3, 8, 16, 5


def _slots(seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (B, K, D))


@pytest.mark.parametrize("position_embedding", ["learned", "grid"])
def test_masks_partition_each_patch_and_features_are_their_mixture(position_embedding):
  model = SpatialBroadcastDecoder(num_patches=N, feature_dim=F,
                                  position_embedding=position_embedding)
  params = model.init(jax.random.PRNGKey(0), _slots())
  features_bnf, alpha_bkn = model.apply(params, _slots(1))
  assert features_bnf.shape == (B, N, F) and alpha_bkn.shape == (B, K, N)
  np.testing.assert_allclose(np.asarray(alpha_bkn.sum(axis=1)), 1.0, rtol=1e-5)
  # Swapping two slots swaps their masks and leaves the decoded frame unchanged.
  swapped = _slots(1)[:, ::-1]
  features2_bnf, alpha2_bkn = model.apply(params, swapped)
  np.testing.assert_allclose(np.asarray(features2_bnf), np.asarray(features_bnf), atol=1e-5)
  np.testing.assert_allclose(np.asarray(alpha2_bkn), np.asarray(alpha_bkn[:, ::-1]),
                             atol=1e-6)


def test_the_first_layer_per_slot_and_per_patch_equals_the_mlp_of_their_sum():
  """The decoder applies fc1 to slots and positions apart (it is linear) and adds them before
  the GELU: the same as transformer.MLP on the [B, K, N, D] sum, with the same parameters."""
  model = SpatialBroadcastDecoder(num_patches=N, feature_dim=F)
  params = model.init(jax.random.PRNGKey(0), _slots())["params"]
  assert set(params["mlp"]) == {"fc1", "fc2"}
  slots_bkd = _slots(1)
  hidden_bknd = BroadcastMLP(2 * D).apply({"params": params["mlp"]}, slots_bkd,
                                         params["pos_embedding"])
  summed_bknd = slots_bkd[:, :, None, :] + params["pos_embedding"]
  expected_bknd = MLP(2 * D).apply({"params": params["mlp"]}, summed_bknd)
  np.testing.assert_allclose(np.asarray(hidden_bknd), np.asarray(expected_bknd), rtol=1e-5,
                             atol=1e-5)


def test_grid_positions_replace_the_free_vector_and_are_smooth():
  params = SpatialBroadcastDecoder(num_patches=N, feature_dim=F, position_embedding="grid"
                                   ).init(jax.random.PRNGKey(0), _slots())["params"]
  assert "pos_embedding" not in params and params["pos_grid"]["kernel"].shape == (4, D)
  emb = np.asarray(patch_grid(N) @ params["pos_grid"]["kernel"] + params["pos_grid"]["bias"])
  dist = lambda i, j: np.linalg.norm(emb[i] - emb[j])
  assert dist(0, 1) < dist(0, 3) and dist(0, 4) < dist(0, 12)
  learned = SpatialBroadcastDecoder(num_patches=N, feature_dim=F).init(
      jax.random.PRNGKey(0), _slots())["params"]
  assert learned["pos_embedding"].shape == (N, D) and "pos_grid" not in learned


def test_unknown_position_embedding_is_refused():
  with pytest.raises(ValueError, match="position_embedding"):
    SpatialBroadcastDecoder(num_patches=N, feature_dim=F, position_embedding="sine").init(
        jax.random.PRNGKey(0), _slots())


def test_the_decoder_fits_a_frame_that_varies_with_position():
  """Fit a frame whose left half is one feature and right half another from two fixed
  slots: only the grid positions tell the halves apart, so the loss falls only if they
  reach the output (gradients flow through the Dense of the coordinates)."""
  grid_n = np.asarray(patch_grid(N))
  target_bnf = jnp.asarray(np.where(grid_n[:, 1:2] < 0.5, 1.0, -1.0) * np.ones((1, N, F)))
  slots_bkd = jax.random.normal(jax.random.PRNGKey(3), (1, 2, D))
  model = SpatialBroadcastDecoder(num_patches=N, feature_dim=F, position_embedding="grid")
  params = model.init(jax.random.PRNGKey(0), slots_bkd)
  loss = lambda p: jnp.mean((model.apply(p, slots_bkd)[0] - target_bnf) ** 2)
  step = jax.jit(lambda p: jax.tree_util.tree_map(lambda w, g: w - 0.1 * g, p,
                                                  jax.grad(loss)(p)))
  start = float(loss(params))
  for _ in range(300):
    params = step(params)
  assert float(loss(params)) < 0.05 * start

"""Tests for the classification (autoregressive) and regression aggregators (aggregator.py)."""


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flam_jax.modules import aggregator as agg_lib
from tests.param_utils import random_params

B, K, DS, N = 2, 3, 24, 8
SIZES = (4, 4)
C = 16


def _slots(seed=0):
  return jax.random.normal(jax.random.key(seed), (B, K, DS))


def _targets(seed=1):
  return jax.random.randint(jax.random.key(seed), (B, N), 0, C)


def _make(dtype=jnp.float32, name=None):
  return agg_lib.ClassificationAggregator(
      num_patches=N, subtoken_sizes=SIZES, d_model=32, num_blocks=2, num_heads=4, dtype=dtype,
      codebook_size=C, name=name)


@pytest.fixture(scope="module")
def cls_agg():
  model = _make()
  params = random_params(model, _slots(), _targets())
  return model, params, jax.jit(model.apply)


@pytest.fixture(scope="module")
def decoded(cls_agg):
  model, params, _ = cls_agg
  slots = _slots(5)
  out = {}
  for use_cache in (True, False):
    fn = jax.jit(lambda p, s, uc=use_cache: model.apply(p, s, method=model.decode, use_cache=uc))
    out[use_cache] = fn(params, slots)
  return slots, out


def test_subtoken_round_trip_and_order():
  sizes = (32, 32)
  idx = jnp.arange(1024)
  sub = agg_lib.indices_to_subtokens(idx, sizes)
  assert sub.shape == (1024, 2)
  np.testing.assert_array_equal(sub[:, 0] * 32 + sub[:, 1], idx)  # First most significant.
  np.testing.assert_array_equal(agg_lib.subtokens_to_indices(sub, sizes), idx)
  sizes3 = (3, 5, 2)
  idx3 = jnp.arange(30).reshape(5, 6)
  sub3 = agg_lib.indices_to_subtokens(idx3, sizes3)
  assert sub3.shape == (5, 6, 3) and int(sub3[..., 1].max()) == 4
  np.testing.assert_array_equal(agg_lib.subtokens_to_indices(sub3, sizes3), idx3)


def test_subtoken_sizes_must_match_codebook():
  model = agg_lib.ClassificationAggregator(
      num_patches=N, subtoken_sizes=(4, 8), d_model=16, num_blocks=1, num_heads=2,
      codebook_size=C)
  with pytest.raises(ValueError, match="prod"):
    jax.eval_shape(model.init, jax.random.key(0), _slots(), _targets())


def _np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_teacher_forced_shapes_loss_accuracy(cls_agg):
  model, params, apply = cls_agg
  tgt = _targets(2)
  logits = apply(params, _slots(), tgt)
  assert isinstance(logits, tuple) and len(logits) == len(SIZES)
  for l, s in zip(logits, SIZES):
    assert l.shape == (B, N, s) and l.dtype == jnp.float32
  # loss / accuracy need no params (unbound module) and are jittable.
  metrics = jax.jit(lambda l, t: (model.loss(l, t), model.accuracy(l, t)))
  loss, acc = metrics(logits, tgt)
  assert loss.shape == (B,) and acc.shape == (B,)
  assert np.all((acc >= 0) & (acc <= 1))
  # Same as -mean_n log p(c_n) with log p(c) = log p(s_0) + log p(s_1 | s_0), a proper
  # C-way distribution built from the two small softmaxes (s_1's given the true s_0).
  log_p_c = (_np_log_softmax(logits[0])[..., :, None] +
             _np_log_softmax(logits[1])[..., None, :]).reshape(B, N, C)
  np.testing.assert_allclose(np.exp(log_p_c).sum(-1), 1.0, atol=1e-6)
  tgt_np = np.asarray(tgt)
  expected = -np.take_along_axis(log_p_c, tgt_np[..., None], axis=-1)[..., 0].mean(-1)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(acc, (log_p_c.argmax(-1) == tgt_np).mean(-1))
  # Logits pointing at the targets: accuracy 1, loss ~0.
  sub = np.stack([tgt_np // SIZES[1], tgt_np % SIZES[1]], axis=-1)
  perfect = tuple(20.0 * np.eye(s, dtype=np.float32)[sub[..., j]] for j, s in enumerate(SIZES))
  loss_p, acc_p = metrics(perfect, tgt)
  np.testing.assert_array_equal(acc_p, 1.0)
  assert float(loss_p.max()) < 1e-6


def test_causality(cls_agg):
  _, params, apply = cls_agg
  tgt = _targets(3)
  base = apply(params, _slots(), tgt)
  for n in (0, 3, N - 2):
    changed = apply(params, _slots(), tgt.at[:, n].set((tgt[:, n] + 5) % C))
    # Target n is the input of position n+1 and the condition of position n's second
    # sub-token head: the first head is untouched up to n, the second before n...
    np.testing.assert_allclose(changed[0][:, :n + 1], base[0][:, :n + 1], atol=1e-5)
    np.testing.assert_allclose(changed[1][:, :n], base[1][:, :n], atol=1e-5)
    # ...and position n+1 does see it.
    assert max(float(jnp.abs(lc[:, n + 1] - lb[:, n + 1]).max())
               for lb, lc in zip(base, changed)) > 1e-4


def test_second_subtoken_is_conditioned_on_the_first(cls_agg):
  # Hierarchical sub-tokens: p(s_1 | h, s_0). Changing only s_0 of the last target moves
  # the last position's second-head logits; changing only s_1 moves nothing there.
  _, params, apply = cls_agg
  tgt = _targets(6)
  base = apply(params, _slots(), tgt)
  new_s0 = apply(params, _slots(), tgt.at[:, -1].set((tgt[:, -1] + SIZES[1]) % C))
  new_s1 = apply(params, _slots(), tgt.at[:, -1].set(
      tgt[:, -1] - tgt[:, -1] % SIZES[1] + (tgt[:, -1] + 1) % SIZES[1]))
  assert float(jnp.abs(new_s0[1][:, -1] - base[1][:, -1]).max()) > 1e-4
  np.testing.assert_allclose(new_s0[0], base[0], atol=1e-5)
  for lb, lc in zip(base, new_s1):
    np.testing.assert_allclose(lc, lb, atol=1e-5)


def test_conditioned_on_slots(cls_agg):
  _, params, apply = cls_agg
  tgt = _targets(4)
  a = apply(params, _slots(0), tgt)
  b = apply(params, _slots(1), tgt)
  assert float(jnp.abs(a[0] - b[0]).max()) > 1e-4


@pytest.mark.parametrize("use_cache", [True, False])
def test_decode_matches_teacher_forcing(cls_agg, decoded, use_cache):
  _, params, apply = cls_agg
  slots, out = decoded
  indices, dec_logits = out[use_cache]
  assert indices.shape == (B, N) and indices.dtype == jnp.int32
  assert int(indices.min()) >= 0 and int(indices.max()) < C
  # Greedy: each decoded index is the per-sub-token argmax of its own logits.
  np.testing.assert_array_equal(agg_lib.logits_to_indices(dec_logits, SIZES), indices)
  tf_logits = apply(params, slots, indices)
  for lt, ld in zip(tf_logits, dec_logits):
    assert ld.shape == lt.shape
    np.testing.assert_allclose(ld, lt, atol=1e-4)


def test_cached_and_uncached_decodes_agree(decoded):
  _, out = decoded
  np.testing.assert_array_equal(out[True][0], out[False][0])
  assert len(np.unique(np.asarray(out[True][0]))) > 1  # Not a degenerate constant decode.


def test_decode_init_and_nested_in_parent(cls_agg):
  """`init` through `decode` creates the same params; decode works as a submodule's method."""
  _, ref_params, _ = cls_agg

  class Parent(nn.Module):

    @nn.compact
    def __call__(self, slots):
      return _make(name="agg").decode(slots)

  # Abstract evaluation traces everything (flax scoping errors would surface) but compiles nothing.
  pv = jax.eval_shape(Parent().init, jax.random.key(0), _slots())
  assert set(pv) == {"params"}  # The KV cache never leaks out of `decode`.
  assert jax.tree.structure(pv["params"]["agg"]) == jax.tree.structure(ref_params["params"])
  idx, _ = jax.eval_shape(Parent().apply, {"params": {"agg": ref_params["params"]}}, _slots())
  assert idx.shape == (B, N)


def test_bf16_finite(cls_agg):
  """dtype only changes the compute dtype: the float32 params are reused as is."""
  _, params, _ = cls_agg
  model = _make(jnp.bfloat16)
  shapes = jax.eval_shape(model.init, jax.random.key(0), _slots(), _targets())
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes))
  logits = jax.jit(model.apply)(params, _slots(), _targets())
  assert all(l.dtype == jnp.float32 and np.all(np.isfinite(l)) for l in logits)
  idx, dec_logits = jax.jit(lambda p, s: model.apply(p, s, method=model.decode))(params, _slots())
  assert idx.shape == (B, N) and all(np.all(np.isfinite(l)) for l in dec_logits)


def test_regression_aggregator():
  feat = 5
  kwargs = dict(num_patches=N, feature_dim=feat, d_model=32, num_blocks=1, num_heads=4)
  model = agg_lib.RegressionAggregator(**kwargs)
  slots = _slots()
  params = random_params(model, slots)
  pred = jax.jit(model.apply)(params, slots)
  assert pred.shape == (B, N, feat) and pred.dtype == jnp.float32
  np.testing.assert_array_equal(model.loss(pred, pred), 0.0)
  # Mean over patches and channels: an error of 1 everywhere costs 1.
  np.testing.assert_allclose(model.loss(pred, pred + 1.0), 1.0, rtol=1e-6)
  # Patches differ (positional embedding); batch items differ only in their slots.
  assert float(jnp.abs(pred[:, 0] - pred[:, 1]).max()) > 1e-4
  assert float(jnp.abs(pred[0] - pred[1]).max()) > 1e-4
  bf = agg_lib.RegressionAggregator(dtype=jnp.bfloat16, **kwargs)
  shapes_bf = jax.eval_shape(bf.init, jax.random.key(0), slots)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes_bf))
  pred_bf = jax.jit(bf.apply)(params, slots)
  assert np.all(np.isfinite(pred_bf))


def test_anchor_conditions_decoding_and_teacher_forcing():
  """With an anchor frame, decode still equals teacher forcing on its own output."""
  model = _make()
  anchor = _targets(7)
  params = random_params(model, _slots(), _targets(), anchor)
  apply = jax.jit(model.apply)
  tgt = _targets(8)
  with_anchor = apply(params, _slots(), tgt, anchor)
  other_anchor = apply(params, _slots(), tgt, (anchor + 3) % C)
  assert float(jnp.abs(with_anchor[0] - other_anchor[0]).max()) > 1e-4
  for use_cache in (True, False):
    idx, dec_logits = jax.jit(lambda p, s, a, uc=use_cache: model.apply(
        p, s, a, method=model.decode, use_cache=uc))(params, _slots(5), anchor)
    tf_logits = apply(params, _slots(5), idx, anchor)
    for lt, ld in zip(tf_logits, dec_logits):
      np.testing.assert_allclose(ld, lt, atol=1e-4)


def test_regression_anchor_is_a_residual():
  feat = 5
  model = agg_lib.RegressionAggregator(num_patches=N, feature_dim=feat, d_model=32,
                                       num_blocks=1, num_heads=4)
  anchor = jax.random.normal(jax.random.key(3), (B, N, feat))
  params = random_params(model, _slots(), anchor)
  pred = jax.jit(model.apply)(params, _slots(), anchor)
  assert pred.shape == (B, N, feat)
  # A zero output head leaves exactly the anchor: z_hat = z_t + Aggregator(.).
  zero_head = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.zeros_like(x) if "head" in jax.tree_util.keystr(path) else x, params)
  np.testing.assert_allclose(jax.jit(model.apply)(zero_head, _slots(), anchor), anchor,
                             atol=1e-6)
  assert float(jnp.abs(pred - anchor).max()) > 1e-4


def test_parallel_aggregator_sees_no_target_tokens_and_decodes_in_one_pass():
  """parallel=True: predictions come from slots and anchor only; decode is their argmax."""
  model = agg_lib.ClassificationAggregator(
      num_patches=N, subtoken_sizes=SIZES, d_model=32, num_blocks=2, num_heads=4,
      codebook_size=C, parallel=True)
  anchor = _targets(7)
  params = random_params(model, _slots(), _targets(), anchor)
  apply = jax.jit(model.apply)
  first = apply(params, _slots(), _targets(8), anchor)
  other_targets = apply(params, _slots(), _targets(9), anchor)
  # The first sub-token never sees a target (no teacher forcing to lean on) ...
  np.testing.assert_allclose(first[0], other_targets[0], atol=1e-6)
  # ... but every patch sees the whole anchor frame (bidirectional) and the slots.
  changed_last = anchor.at[:, -1].set((anchor[:, -1] + 1) % C)
  moved = apply(params, _slots(), _targets(8), changed_last)
  assert float(jnp.abs(moved[0][:, 0] - first[0][:, 0]).max()) > 1e-4
  assert float(jnp.abs(apply(params, _slots(3), _targets(8), anchor)[0] - first[0]).max()) > 1e-4
  idx, dec_logits = jax.jit(lambda p, s, a: model.apply(p, s, a, method=model.decode))(
      params, _slots(), anchor)
  tf_logits = apply(params, _slots(), idx, anchor)  # Heads conditioned on the decoded s_0.
  for lt, ld in zip(tf_logits, dec_logits):
    np.testing.assert_allclose(ld, lt, atol=1e-5)
  np.testing.assert_array_equal(idx, agg_lib.logits_to_indices(dec_logits, SIZES))


def test_patch_weights_make_a_weighted_mean_over_patches():
  logits = tuple(jax.random.normal(jax.random.key(j), (B, N, s)) for j, s in enumerate(SIZES))
  targets = _targets()
  per_patch = jnp.stack([agg_lib.classification_loss(
      tuple(l[:, n:n + 1] for l in logits), targets[:, n:n + 1], SIZES) for n in range(N)], -1)
  weights = jnp.where(jnp.arange(N) % 3 == 0, 10.0, 1.0)[None].repeat(B, 0)
  expected = jnp.sum(per_patch * weights, -1) / jnp.sum(weights, -1)
  np.testing.assert_allclose(agg_lib.classification_loss(logits, targets, SIZES, weights),
                             expected, rtol=1e-5)
  np.testing.assert_allclose(agg_lib.classification_loss(logits, targets, SIZES, jnp.ones((B, N))),
                             agg_lib.classification_loss(logits, targets, SIZES), rtol=1e-6)
  pred, target = jax.random.normal(jax.random.key(1), (2, B, N, 3))
  per_patch_sq = jnp.mean(jnp.square(pred - target), -1)
  np.testing.assert_allclose(agg_lib.regression_loss(pred, target, weights),
                             jnp.sum(per_patch_sq * weights, -1) / jnp.sum(weights, -1), rtol=1e-5)


def test_regression_with_anchor_starts_at_no_change():
  # The zero-initialised head: an untrained residual regressor predicts the start frame
  # (copy), so training begins at the no-change baseline instead of far from it (on the
  # toy of test_learning.py a random head began at 4.7x copy's loss and settled in a
  # basin that ignored the actions).
  feat = 5
  model = agg_lib.RegressionAggregator(num_patches=N, feature_dim=feat, d_model=32,
                                       num_blocks=1, num_heads=4)
  anchor = jax.random.normal(jax.random.key(3), (B, N, feat))
  params = model.init(jax.random.key(0), _slots(), anchor)
  np.testing.assert_array_equal(jax.jit(model.apply)(params, _slots(), anchor), anchor)
  # Without an anchor the head keeps a random init (zero would predict all-zero features).
  plain = model.init(jax.random.key(0), _slots())
  assert float(jnp.abs(plain["params"]["head"]["kernel"]).max()) > 0

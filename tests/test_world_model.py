"""The latent action stage: shapes of every variant, that each learns, and its clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flam_jax.errors import CheckpointError, ConfigError
from flam_jax.lib import trainer
from flam_jax.modules.world_model import LatentActionWorldModel, rollout_indices
from flam_jax.modules.world_model import training_pairs
from flam_jax.lib.loading import load_frozen_tokenizer
from flam_jax.stages.lam import LatentActionStage
from flam_jax.stages.tokenizer import TokenizerStage
from tests import stage_fixtures

VARIANTS = ["flam", "lam", "oc_lam", "wm", "flam_v2", "flam_regression"]
REGRESSION = ("flam_v2", "flam_regression")


def test_rollout_indices_cover_every_transition():
  idx = rollout_indices(window_length=10, prediction_steps=5)
  assert idx.shape == (5, 5)  # 5 steps x 5 starts.
  np.testing.assert_array_equal(idx[0], np.arange(5))  # 1-step predictions from starts 0..4.
  assert idx.max() == 8  # The last transition, 8 -> 9, is predicted.
  with pytest.raises(ValueError, match="must exceed"):
    rollout_indices(window_length=3, prediction_steps=3)


def test_training_pairs_full_and_every_start():
  start_v, step_v = training_pairs(10, 5, "full")
  # Row (s, j) predicts transition s + j, in rollout_indices' [P, S] order transposed.
  np.testing.assert_array_equal(start_v + step_v, rollout_indices(10, 5).T.reshape(-1))
  every_start_v, every_step_v = training_pairs(10, 5, "every")
  assert len(every_start_v) == 9 + 8 + 7 + 6 + 5
  assert (every_start_v + every_step_v).max() == 8  # Never past the window's last frame.
  assert every_start_v.max() == 8 and every_step_v.max() == 4
  assert set(zip(start_v, step_v)) < set(zip(every_start_v, every_step_v))
  with pytest.raises(ValueError, match="unknown rollout starts"):
    training_pairs(10, 5, "all")


@pytest.mark.parametrize("variant", ["flam", "lam"])
def test_every_start_adds_rows_and_predicts_the_full_rows_alike(variant):
  """lam.rollout_starts="every" trains every start, rolled until the window ends: the rows
  that "full" also has are the same predictions, and the loss and its metrics are finite."""
  config, _, (batch,) = stage_fixtures.make("lam", batch_size=2, num_batches=1, variant=variant)
  t, p = config.data.window_length, config.lam.prediction_steps
  outs = {}
  for starts in ("full", "every"):
    config.lam.rollout_starts = starts
    stage = stage_fixtures.make_lam_stage(config)
    params = jax.jit(stage.init)(jax.random.PRNGKey(0), batch)
    features, tokens = stage.features(batch)
    outs[starts] = jax.jit(lambda prm, f, tok: stage.model.apply(  # pylint: disable=cell-var-from-loop
        {"params": prm}, f, tok, prediction_steps=p))(params, features, tokens)
    loss, metrics = jax.jit(stage.loss)(params, batch, jax.random.PRNGKey(1))
    assert np.isfinite(float(loss)) and np.isfinite(float(metrics[f"accuracy_step{p}"]))
  b = tokens.shape[0]
  pairs = {starts: list(zip(*training_pairs(t, p, starts))) for starts in outs}
  assert outs["every"]["targets"].shape[0] == b * len(pairs["every"]) > b * len(pairs["full"])
  rows = [i * len(pairs["every"]) + pairs["every"].index(pair)
          for i in range(b) for pair in pairs["full"]]
  for full_logits, every_logits in zip(outs["full"]["prediction"], outs["every"]["prediction"]):
    np.testing.assert_allclose(np.asarray(every_logits)[rows], np.asarray(full_logits),
                               rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(np.asarray(outs["every"]["targets"])[rows],
                                np.asarray(outs["full"]["targets"]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_shapes(variant):
  config, stage, (batch,) = stage_fixtures.make("lam", batch_size=2, num_batches=1, variant=variant)
  params = jax.jit(stage.init)(jax.random.PRNGKey(0), batch)
  features, tokens = stage.features(batch)
  out = jax.jit(lambda p, f, t, a: stage.model.apply(
      {"params": p}, f, t, a, prediction_steps=2, deterministic=False,
      rngs={"action": jax.random.PRNGKey(1), "dropout": jax.random.PRNGKey(2)}))(params, features, tokens, batch["actions"])
  b, t, n = tokens.shape
  s, p = t - 2, 2
  num_entities = config.lam.num_slots if variant in ("flam", "oc_lam", "flam_v2",
                                                     "flam_regression") else n
  assert out["entities"].shape == (b, t, num_entities, config.lam.d_model)
  assert out["targets"].shape == (b * s * p, n)
  if variant in REGRESSION:
    assert out["prediction"].shape == (b * s * p, n, stage.codebook.shape[-1])
  else:
    assert [l.shape for l in out["prediction"]] == [(b * s * p, n, 4), (b * s * p, n, 8)]
  if variant in ("flam", "oc_lam", "flam_regression", "lam"):
    per_transition = config.lam.num_slots if variant != "lam" and variant != "oc_lam" else 1
    assert out["action_indices"].shape == (b, t - 1, per_transition)
  if variant in ("flam", "oc_lam"):
    assert out["masks"].shape == (b, t, config.lam.num_slots, n)
    np.testing.assert_allclose(out["masks"].sum(axis=2), 1.0, atol=1e-5)
  if variant == "oc_lam":
    assert "reconstruction" in out


def test_flam_actions_take_at_most_prod_levels_values():
  _, stage, (batch,) = stage_fixtures.make("lam", batch_size=8, num_batches=1)
  params = jax.jit(stage.init)(jax.random.PRNGKey(0), batch)
  features, _ = stage.features(batch)
  entities, _ = stage.model.apply({"params": params}, features,
                                  method=LatentActionWorldModel.entities)
  acts = stage.model.apply({"params": params}, entities, method=LatentActionWorldModel.infer_actions)
  actions = np.asarray(acts["actions"]).reshape(-1, 2)
  assert len({tuple(a) for a in actions}) <= 4  # Multigrid: FSQ [2, 2] = 4 codes per slot.
  assert acts["actions"].shape == (8, 3, 2, 2)


def test_wm_uses_ground_truth_actions():
  _, stage, (batch,) = stage_fixtures.make("lam", batch_size=2, num_batches=1, variant="wm")
  params = jax.jit(stage.init)(jax.random.PRNGKey(0), batch)
  assert "idm" not in params and "bottleneck" not in params
  features, _ = stage.features(batch)
  entities, _ = stage.model.apply({"params": params}, features,
                                  method=LatentActionWorldModel.entities)
  acts = stage.model.apply({"params": params}, entities, batch["actions"],
                           method=LatentActionWorldModel.infer_actions)
  onehot = np.asarray(acts["actions"]).reshape(2, 3, 2, 4)  # [B, T-1, agents, actions]
  np.testing.assert_array_equal(onehot.argmax(-1), batch["actions"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_loss_falls_within_a_few_dozen_steps(variant):
  config, stage, batches = stage_fixtures.make("lam", batch_size=4, num_batches=1, variant=variant)
  config.optim.learning_rate = 3e-3
  config.num_train_steps = 40
  # Learnable structure: the next frame's tokens are this frame's, shifted by one patch.
  rng = np.random.default_rng(0)
  first = rng.integers(0, 32, (4, 1, 16))
  tokens = np.concatenate([np.roll(first, s, axis=-1) for s in range(4)], axis=1)
  batch = dict(batches[0], tokens=tokens.reshape(4, 4, 4, 4).astype(np.int32))
  from flam_jax.lib import optim, sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(1, devices=jax.devices()[:1])
  tx = optim.make_optimizer(config.optim, config.num_train_steps)
  state = trainer.create_train_state(stage, config, batch, mesh, tx)
  step = trainer.jit_train_step(stage, config, mesh, tx)
  global_batch = sharding.to_global_batch(batch, mesh)
  losses = []
  for _ in range(config.num_train_steps):
    state, metrics = step(state, global_batch)
    losses.append(float(metrics["prediction_loss"]))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3]), losses


def test_bfloat16_compute_runs_with_float32_params():
  config, stage, (batch,) = stage_fixtures.make("lam", batch_size=2, num_batches=1)
  config.compute_dtype = "bfloat16"
  stage = stage_fixtures.make_lam_stage(config)
  params = jax.jit(stage.init)(jax.random.PRNGKey(0), batch)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  loss, _ = jax.jit(stage.loss)(params, batch, jax.random.PRNGKey(1))
  assert loss.dtype == jnp.float32 and np.isfinite(float(loss))


@pytest.mark.parametrize("variant", ["lam", "flam_regression"])
def test_remat_changes_memory_not_the_function(variant):
  """lam.remat (and lam.remat_chunks, slices of the batch recomputed in a loop) recompute
  IDM/FDM/aggregator activations: same params, loss and grads. Without remat the FDM's
  rollout is unrolled, with it a loop (`models.build_world_model`), so this also checks
  that the two rollouts are one function."""
  config, _, (batch,) = stage_fixtures.make("lam", batch_size=2, num_batches=1, variant=variant)
  grads = {}
  for remat, chunks in ((False, 1), (True, 1), (True, 2)):
    config.lam.remat, config.lam.remat_chunks = remat, chunks
    stage = stage_fixtures.make_lam_stage(config)
    params = jax.jit(stage.init)(jax.random.PRNGKey(0), batch)
    loss_fn = lambda p: stage.loss(p, batch, jax.random.PRNGKey(1))[0]  # pylint: disable=cell-var-from-loop
    grads[remat, chunks] = jax.jit(jax.value_and_grad(loss_fn))(params)
  loss_plain, grad_plain = grads[False, 1]
  for key in ((True, 1), (True, 2)):
    loss_remat, grad_remat = grads[key]
    assert jax.tree.structure(grad_plain) == jax.tree.structure(grad_remat)
    np.testing.assert_allclose(float(loss_plain), float(loss_remat), rtol=1e-5)
    for g_plain, g_remat in zip(jax.tree.leaves(grad_plain), jax.tree.leaves(grad_remat)):
      np.testing.assert_allclose(np.asarray(g_plain), np.asarray(g_remat), rtol=1e-3, atol=1e-5)


def test_config_errors_name_the_key():
  config = stage_fixtures.tiny_config("lam")
  config.lam.subtoken_sizes = (4, 4)
  with pytest.raises(ConfigError, match="subtoken_sizes"):
    LatentActionStage.check_config(config)
  config = stage_fixtures.tiny_config("lam")
  config.lam.prediction_steps = 4
  with pytest.raises(ConfigError, match="prediction_steps"):
    LatentActionStage.check_config(config)


def test_missing_or_mismatched_tokenizer_checkpoint(tmp_path):
  config = stage_fixtures.tiny_config("lam")
  with pytest.raises(CheckpointError, match="no tokenizer checkpoint"):
    load_frozen_tokenizer(config, str(tmp_path))

  # Save a real tokenizer checkpoint (2 steps), then ask for other token shapes.
  tok_config = stage_fixtures.tiny_config("tokenizer")
  tok_config.num_train_steps = 2
  tok_config.checkpoint_every_steps = 2
  tok_config.progress_bar = False
  from flam_jax.data import multigrid  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path / "data")
  multigrid.write_dataset(data_dir, multigrid.MultigridConfig(
      grid_size=8, resolution=16, num_agents=2, episode_length=6), num_episodes=6, progress=False)
  tok_config.data.dir = data_dir
  tok_config.batch_size = 2
  trainer.train(TokenizerStage(tok_config), tok_config, str(tmp_path / "tokenizer"))

  tokenizer, params, _, step = load_frozen_tokenizer(config, str(tmp_path))
  assert step == 2 and "encoder" in params
  config.tokenizer.levels = (4, 4, 4, 4, 4)
  with pytest.raises(CheckpointError, match="tokenizer.levels"):
    load_frozen_tokenizer(config, str(tmp_path))


def test_tokenizer_params_of_another_architecture_are_a_one_line_error():
  from flam_jax.lib import loading, models  # pylint: disable=g-import-not-at-top
  config = stage_fixtures.tiny_config("lam")
  tokenizer = models.make_tokenizer(config)
  size = config.data.image_size
  params = tokenizer.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))["params"]
  loading.check_tokenizer_params(tokenizer, params, size, "ckpt", "retrain")
  leaf_path, leaf = jax.tree_util.tree_leaves_with_path(params)[-1]
  wrong = jax.tree_util.tree_map_with_path(
      lambda p, v: np.zeros(v.shape + (2,)) if p == leaf_path else v, params)
  with pytest.raises(CheckpointError, match="does not fit this version's tokenizer.*retrain"):
    loading.check_tokenizer_params(tokenizer, wrong, size, "ckpt", "retrain")


@pytest.mark.parametrize("variant", ["flam", "flam_v2"])
def test_predicted_slots_reconstruct_the_next_frame_when_asked(variant):
  config = stage_fixtures.tiny_config("lam", variant)
  config.lam.predicted_slot_reconstruction_weight = 1.0
  stage = stage_fixtures.make_lam_stage(config)
  batch = {k: v for k, v in stage_fixtures.random_batches(config, 2, 1)[0].items()
           if k in stage.data_fields}
  params = jax.jit(stage.init)(jax.random.PRNGKey(0), batch)
  loss_fn = jax.jit(stage.loss)
  _, metrics = loss_fn(params, batch, jax.random.PRNGKey(1))
  assert np.isfinite(float(metrics["predicted_slot_reconstruction_loss"]))
  # The term trains the FDM (its only path to the loss besides the aggregator).
  grads = jax.grad(lambda p: stage.model.apply(
      {"params": p}, *stage.features(batch), None, prediction_steps=2,
      deterministic=True)["predicted_slot_reconstruction"].sum())(params)
  fdm_norm = sum(float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads["fdm_scan"]))
  assert fdm_norm > 0
  config.lam.predicted_slot_reconstruction_weight = 0.0
  _, metrics = jax.jit(stage_fixtures.make_lam_stage(config).loss)(params, batch,
                                                                    jax.random.PRNGKey(1))
  assert "predicted_slot_reconstruction_loss" not in metrics


def test_slot_reconstruction_counts_the_changing_patches_w_times():
  config = stage_fixtures.tiny_config("lam", "flam")
  config.lam.slot_reconstruction_changed_weight = 1.0  # The plain mean.
  stage = stage_fixtures.make_lam_stage(config)
  # One example, 3 frames, 2 patches: patch 1's token changes between frames 1 and 2.
  tokens_btn = jnp.asarray([[[0, 0], [0, 0], [0, 1]]])
  features_btnf = jnp.zeros((1, 3, 2, 2))
  recon_btnf = features_btnf.at[:, :, 1].set(1.0)  # Wrong at patch 1 only.
  trained, plain = stage._slot_reconstruction_loss(recon_btnf, features_btnf, tokens_btn)
  assert float(trained) == float(plain) == pytest.approx(0.5)
  config.lam.slot_reconstruction_changed_weight = 4.0
  weighted, plain = stage_fixtures.make_lam_stage(config)._slot_reconstruction_loss(
      recon_btnf, features_btnf, tokens_btn)
  # Frame 0: patch 1 unchanged (0.5); frames 1 and 2: patch 1 counts 4 times (4 / 5 each).
  assert float(weighted) == pytest.approx((0.5 + 0.8 + 0.8) / 3)
  assert float(plain) == pytest.approx(0.5)  # The logged loss stays the plain mean.

"""The evaluator: metric plumbing, the probe, end-to-end eval steps, sweeps and the eval stage.

Compiles dominate: every model-level test uses the same tiny FLAM spec (the eval step is
jit-cached on it), plus one LAM step and one 2-run sweep.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from flam_jax.data import multigrid
from flam_jax.errors import ConfigError, DataError
from flam_jax.lib import checkpointing, config_validation, eval_step, evaluator, rollout
from flam_jax.lib import probe as probe_lib
from tests import stage_fixtures

WINDOW = 4  # stage_fixtures.tiny_config("lam").data.window_length


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("data"))
  multigrid.write_dataset(out, multigrid.MultigridConfig(
      grid_size=4, resolution=16, num_agents=2, episode_length=6), num_episodes=20, progress=False)
  return out  # Test split: 2 episodes x 3 windows of 4 frames.


@pytest.fixture(scope="module")
def batches(data_dir):
  return list(evaluator.dataset_batches(data_dir, "test", window_length=WINDOW, batch_size=4))


def _random_params(init_fn, seed):
  """Random parameters of init_fn's shapes without compiling it (XLA:CPU compiles dominate).

  Traces `init_fn` abstractly, then draws every kernel/embedding from N(0, 1/fan_in),
  with LayerNorm scales 1 and biases 0: a random model, like a fresh init.
  """
  shapes = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = str(path[-1])
    if "scale" in name:
      return np.ones(leaf.shape, leaf.dtype)
    if "bias" in name:
      return np.zeros(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
    return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


_TOKENIZER = {}


def _stage_and_params(variant, seeds=(0,), **lam_overrides):
  """(config, stage, [params per seed]): stage_fixtures' tiny config on a random tokenizer."""
  from flam_jax.stages.lam import LatentActionStage  # pylint: disable=g-import-not-at-top
  from flam_jax.lib.models import make_tokenizer  # pylint: disable=g-import-not-at-top
  config = stage_fixtures.tiny_config("lam", variant)
  config.lam.update(lam_overrides)
  tokenizer = make_tokenizer(config)
  if "params" not in _TOKENIZER:
    _TOKENIZER["params"] = _random_params(
        lambda rng: tokenizer.init(rng, np.zeros((1, 16, 16, 3), np.float32))["params"], 0)
  LatentActionStage.check_config(config)
  stage = LatentActionStage(config, tokenizer, _TOKENIZER["params"], grid=stage_fixtures.GRID,
                            num_agents=stage_fixtures.NUM_AGENTS)
  example = dict(tokens=np.zeros((1, WINDOW) + stage_fixtures.GRID, np.int32),
                 actions=np.zeros((1, WINDOW - 1, stage_fixtures.NUM_AGENTS), np.int32))
  return config, stage, [_random_params(lambda rng: stage.init(rng, example), s) for s in seeds]


def test_delta_psnr_on_fixed_predictions():
  target = np.zeros((1, 2, 4, 4, 3), np.float32)
  inferred = np.full_like(target, 0.1)  # 20 dB.
  random = np.full_like(target, 0.2)    # 20 - 20 log10(2) dB.
  out = eval_step.prediction_metrics(target, inferred, random)
  np.testing.assert_allclose(out["psnr_t"], 20.0, rtol=1e-5)
  np.testing.assert_allclose(out["delta_psnr_t"], 20 * np.log10(2.0), rtol=1e-5)
  swapped = eval_step.prediction_metrics(target, random, inferred)
  np.testing.assert_allclose(swapped["delta_psnr_t"], -20 * np.log10(2.0), rtol=1e-5)


def test_dataset_batches_pad_and_label_episodes(batches):
  assert [b["frames"].shape for b in batches] == [(4, WINDOW, 16, 16, 3)] * 2
  np.testing.assert_array_equal(np.concatenate([b["valid"] for b in batches]), [1] * 6 + [0] * 2)
  np.testing.assert_array_equal(batches[0]["episode"], [0, 0, 0, 1])
  assert batches[0]["masks"].shape == (4, WINDOW, 16, 16)
  assert batches[0]["actions"].shape == (4, WINDOW - 1, 2)


def test_summarize_ignores_padding():
  _, stage, _ = _stage_and_params("flam")
  spec = eval_step.EvalSpec.from_stage(stage)
  per_example = dict(valid=np.array([True, True, False]), episode=np.arange(3),
                     tokenizer_psnr=np.array([10.0, 20.0, 1e9]))
  for key in ("psnr_t", "ssim_t", "psnr_random_t", "delta_psnr_t"):
    per_example[key] = np.array([[1.0, 2.0], [3.0, 4.0], [np.nan, np.nan]])
  out = evaluator.summarize(per_example, spec)
  assert out["num_windows"] == 2 and out["tokenizer_psnr"] == 15.0
  assert out["psnr_t"] == [2.0, 3.0] and out["token_accuracy_t"] is None
  assert out["ari_fg"] is None and out["probe_accuracy"] is None
  assert out["action_perplexity"] is None  # No codes given (Gaussian actions, WM).
  # Two slots, each always its own code: 2 codes in use overall, 1 per slot.
  per_example["action_code_counts"] = np.array([[[3, 0, 0, 0], [0, 3, 0, 0]]] * 3)
  out = evaluator.summarize(per_example, spec)
  assert out["action_perplexity"] == pytest.approx(2.0)
  assert out["action_perplexity_per_slot"] == pytest.approx(1.0)


def test_probe_beats_majority_on_separable_data():
  rng = np.random.default_rng(0)
  labels = rng.choice(4, size=400, p=[0.55, 0.15, 0.15, 0.15])
  x = np.eye(4)[labels] * 2.0 + rng.normal(scale=0.3, size=(400, 4))
  out = probe_lib.fit_probe(x[:200], labels[:200], x[200:], labels[200:], 4, steps=100)
  assert out["accuracy"] > 0.95 and out["majority"] < 0.7

  # Per-agent blocks: agent 1's latent code is its action shifted by one; split by episode.
  _, stage, _ = _stage_and_params("flam")
  spec = eval_step.EvalSpec.from_stage(stage)
  m = 40
  actions = rng.integers(0, 4, (m, 3, 2))
  codes = (actions + np.array([0, 1])) % 4  # FSQ [2, 2]: 4 codes.
  ex = dict(probe_latent=np.zeros((m, 3, 2, 2), np.float32), probe_code=codes,
            probe_valid=np.ones((m, 3, 2), bool), probe_label=actions,
            episode=np.repeat(np.arange(4), m // 4))
  probe = probe_lib.probe_latent_actions(ex, spec, steps=100)
  assert probe["accuracy"] == 1.0 and probe["majority"] < 0.5
  assert probe["train_pairs"] == probe["test_pairs"] == m // 2 * 6
  assert "accuracy_given_heading" not in probe  # No headings in the data.


def test_probe_takes_single_agent_actions_stored_per_step():
  """Procgen and other one-agent imports store actions [T-1], so batches hold [B, T-1]."""
  _, stage, _ = _stage_and_params("lam")
  spec = dataclasses.replace(eval_step.EvalSpec.from_stage(stage), num_agents=1)
  rng = np.random.default_rng(5)
  b, t1 = 16, 3
  gt_bt = rng.integers(0, 4, (b, t1))
  codes = (gt_bt + 1) % 4
  acts = dict(actions=jnp.zeros((b, t1, 1, 4)), indices=jnp.asarray(codes[..., None]))
  pairs = jax.device_get(eval_step._probe_pairs(spec, acts, None, jnp.asarray(gt_bt)))  # pylint: disable=protected-access
  assert pairs["probe_label"].shape == pairs["probe_valid"].shape == (b, t1, 1)
  ex = dict(pairs, episode=np.repeat(np.arange(4), b // 4))
  probe = probe_lib.probe_latent_actions(ex, spec, steps=100)
  assert probe["accuracy"] == 1.0, probe


def _heading_task(seed: int, m: int):
  """(flam eval spec, rng, actions and headings [m, 3 transitions, 2 agents]) for the probe."""
  rng = np.random.default_rng(seed)
  _, stage, _ = _stage_and_params("flam")
  spec = eval_step.EvalSpec.from_stage(stage)
  return spec, rng, rng.integers(0, 4, (m, 3, 2)), rng.integers(0, 4, (m, 3, 2))


def test_probe_given_heading_decodes_absolute_codes():
  """A code that is the agent's next absolute heading (heading + action mod 4) tells the
  egocentric action nothing alone (the plain probe is at chance) and everything given the
  heading at t; a Gaussian latent likewise."""
  m = 200
  spec, rng, actions, headings = _heading_task(seed=1, m=m)
  codes = (headings + actions) % 4
  ex = dict(probe_latent=np.zeros((m, 3, 2, 2), np.float32), probe_code=codes,
            probe_valid=np.ones((m, 3, 2), bool), probe_label=actions,
            probe_heading=headings, episode=np.repeat(np.arange(8), m // 8))
  probe = probe_lib.probe_latent_actions(ex, spec, steps=200)
  assert probe["accuracy"] < 0.4 and probe["accuracy_given_heading"] > 0.95, probe
  # Gaussian latents (here the one-hot of the same code): latent x one-hot heading.
  features = probe_lib._probe_features(  # pylint: disable=protected-access
      np.eye(4, dtype=np.float32)[codes.reshape(-1)], None, np.zeros(m * 6, int), 1, 0,
      mean=np.zeros(4), std=np.ones(4), headings=headings.reshape(-1), num_headings=4)
  out = probe_lib.fit_probe(features[:600], actions.reshape(-1)[:600], features[600:],
                            actions.reshape(-1)[600:], 4, steps=300)
  assert out["accuracy"] > 0.95, out


def test_probe_on_bound_agents_separates_binding_from_the_latents():
  """Where a slot does not hold its agent (share < BOUND_SHARE) its code is noise: the
  probe over all pairs drops, the probe on bound agents stays exact."""
  m = 200
  spec, rng, actions, headings = _heading_task(seed=2, m=m)
  share = np.where(rng.random((m, 3, 2)) < 0.5, 0.9, 0.1)
  codes = np.where(share >= probe_lib.BOUND_SHARE, (headings + actions) % 4,
                   rng.integers(0, 4, (m, 3, 2)))
  ex = dict(probe_latent=np.zeros((m, 3, 2, 2), np.float32), probe_code=codes,
            probe_valid=np.ones((m, 3, 2), bool), probe_label=actions,
            probe_heading=headings, matched_share=share,
            episode=np.repeat(np.arange(8), m // 8))
  probe = probe_lib.probe_latent_actions(ex, spec, steps=200)
  assert probe["accuracy_given_heading"] < 0.75 < 0.95 < probe["accuracy_given_heading_bound"]


@pytest.mark.parametrize("variant", ["flam", "lam"])
def test_eval_step_end_to_end(variant, batches):
  config, stage, (params,) = _stage_and_params(variant)
  out = evaluator.Evaluator(stage).evaluate(params, batches)
  p = config.lam.prediction_steps
  assert out["num_windows"] == 6 and out["variant"] == variant
  for key in ("psnr_t", "ssim_t", "psnr_random_t", "delta_psnr_t", "token_accuracy_t",
              "copy_psnr_t", "copy_token_accuracy_t"):
    assert len(out[key]) == p and np.all(np.isfinite(out[key])), key
  np.testing.assert_allclose(out["delta_psnr_t"],
                             np.subtract(out["psnr_t"], out["psnr_random_t"]), atol=1e-4)
  assert all(-1.0 <= s <= 1.0 for s in out["ssim_t"])
  assert np.isfinite(out["tokenizer_psnr"])
  assert 0.0 <= out["probe_accuracy"] <= 1.0 and 0.0 <= out["probe_majority"] <= 1.0
  codes = np.prod(stage.model.action_bottleneck_levels)
  assert 1.0 - 1e-6 <= out["action_perplexity_per_slot"] <= out["action_perplexity"] + 1e-6
  assert out["action_perplexity"] <= codes + 1e-6
  if variant == "flam":
    assert -1.0 <= out["ari_fg"] <= 1.0
    assert 1.0 / config.lam.num_slots - 1e-6 <= out["disentanglement"] <= 1.0
    assert 0.0 <= out["bound_fraction"] <= 1.0
  else:
    assert out["ari_fg"] is None and out["disentanglement"] is None
    assert out["bound_fraction"] is None


def test_copy_baseline_is_exact_on_static_windows(batches):
  """With every frame equal to frame 0, "copy" predicts each token and pixel of the
  tokenizer's reconstruction: token accuracy 1 and PSNR = the tokenizer's PSNR."""
  _, stage, (params,) = _stage_and_params("flam")
  static = []
  for batch in batches:
    batch = dict(batch)
    for key in ("frames", "masks"):
      batch[key] = np.repeat(batch[key][:, :1], batch[key].shape[1], axis=1)
    static.append(batch)
  out = evaluator.Evaluator(stage).evaluate(params, static)
  np.testing.assert_allclose(out["copy_token_accuracy_t"], 1.0)
  np.testing.assert_allclose(out["copy_psnr_t"], out["tokenizer_psnr"], rtol=1e-4)


def test_copy_baseline_copies_each_start_frame():
  """With eval.starts='all' the copy baseline of start s predicts frame s (not frame 0):
  frame t is the constant t/10, so copying start s at step j errs by (j+1)/10."""
  t, p = 5, 2
  pixels = np.broadcast_to(np.arange(t, dtype=np.float32)[None, :, None, None, None] / 10,
                           (1, t, 4, 4, 3))
  tokens = np.broadcast_to(np.array([0, 0, 1, 1, 1], np.int32)[None, :, None], (1, t, 6))
  steps_sp = np.arange(p)[None, :] + np.arange(t - p)[:, None]
  out = jax.device_get(eval_step.copy_baseline(pixels, pixels, tokens, steps_sp))
  assert out["copy_psnr_t"].shape == (1, t - p, p)
  want = -20 * np.log10((np.arange(p) + 1) / 10.0)  # PSNR of an error of (j+1)/10.
  np.testing.assert_allclose(out["copy_psnr_t"][0], np.broadcast_to(want, (t - p, p)), rtol=1e-5)
  # Tokens change between frames 1 and 2: start 0 copies to [0, 1], start 1 to [1, 1], ...
  np.testing.assert_array_equal(out["copy_token_accuracy_t"][0], [[1, 0], [0, 0], [1, 1]])


def test_all_starts_on_one_start_windows_equal_first(batches):
  """'all' on windows of P+1 frames has one start, frame 0: every per-step metric (random
  actions included) must equal 'first' on the full windows, whose start is frame 0 too."""
  config, stage, (params,) = _stage_and_params("flam")
  p = config.lam.prediction_steps
  first = evaluator.Evaluator(stage).evaluate(params, batches)
  short = [dict(b, frames=b["frames"][:, :p + 1], masks=b["masks"][:, :p + 1],
                actions=b["actions"][:, :p], headings=b["headings"][:, :p + 1])
           for b in batches]
  one_start = evaluator.Evaluator(stage, starts="all").evaluate(params, short)
  assert first["starts"] == "first" and one_start["starts"] == "all"
  for key in evaluator.PER_STEP_KEYS:
    np.testing.assert_allclose(one_start[key], first[key], rtol=1e-5, err_msg=key)


def test_all_starts_are_the_training_starts(batches):
  """eval.starts='all' against the training forward pass (WorldModel.predict, which the
  lam loss uses): its starts, recursively initialised slots and anchors, greedily decoded,
  give the same PSNR and token accuracy, and its anchors the same copy token accuracy.
  Without the residual anchor a random model's predictions follow its slots and actions
  (with it they are mostly the anchor's tokens), so a wrong start frame or action shows."""
  from flam_jax.lib import metrics  # pylint: disable=g-import-not-at-top
  from flam_jax.modules.world_model import LatentActionWorldModel, rollout_indices  # pylint: disable=g-import-not-at-top
  config, stage, (params,) = _stage_and_params("flam", aggregator_residual=False)
  p, model = config.lam.prediction_steps, stage.model
  every = evaluator.Evaluator(stage, starts="all").evaluate(params, batches)

  @jax.jit
  def training_starts(params, frames):
    variables = {"params": params}
    b, t = frames.shape[:2]
    pixels = frames / 255.0
    tokens = rollout.encode(stage.tokenizer, stage.tokenizer_params,
                            pixels.reshape((b * t,) + frames.shape[2:])).reshape(b, t, -1)
    features = rollout.features(stage.codebook, tokens)
    entities, _ = rollout.entities(model, params, features)
    actions = rollout.infer_actions(model, params, entities)["actions"]
    out = model.apply(variables, entities, actions, features, tokens, prediction_steps=p,
                      method=LatentActionWorldModel.predict)
    greedy = model.apply(variables, out["predicted_entities"], out["anchor_tokens"],
                         method=LatentActionWorldModel.decode_tokens)
    hits = jnp.mean((greedy == out["targets"]).astype(jnp.float32), -1).reshape(b, -1, p)
    copy = jnp.mean((out["anchor_tokens"] == out["targets"]).astype(jnp.float32), -1)
    predicted = rollout.decode_pixels(stage.tokenizer, stage.tokenizer_params,
                                      rollout.features(stage.codebook, greedy), stage.grid)
    targets = jnp.moveaxis(pixels[:, rollout_indices(t, p) + 1], 2, 1)  # Rows (b, s, p).
    psnr = metrics.psnr(targets.reshape(predicted.shape), predicted).reshape(b, -1, p)
    return hits, copy.reshape(b, -1, p), psnr

  outs = [jax.device_get(training_starts(params, b["frames"])) for b in batches]
  hits, copy, psnr = (np.concatenate([o[i][b["valid"]] for o, b in zip(outs, batches)])
                      for i in range(3))
  assert hits.shape[1] == WINDOW - p  # Every training start.
  np.testing.assert_allclose(every["psnr_t"], psnr.mean(axis=(0, 1)), rtol=1e-4)
  np.testing.assert_allclose(every["token_accuracy_t"], hits.mean(axis=(0, 1)), rtol=1e-5)
  np.testing.assert_allclose(every["copy_token_accuracy_t"], copy.mean(axis=(0, 1)), rtol=1e-5)


def test_all_starts_finite_with_the_same_keys(batches):
  config, stage, (params,) = _stage_and_params("flam")
  first = evaluator.Evaluator(stage).evaluate(params, batches)
  every = evaluator.Evaluator(stage, starts="all").evaluate(params, batches)
  assert set(every) == set(first) and every["num_windows"] == first["num_windows"]
  for key in evaluator.PER_STEP_KEYS:
    assert len(every[key]) == config.lam.prediction_steps and np.all(np.isfinite(every[key]))
  # Windows of 4 frames, P = 2: starts 0 and 1; the copy baseline differs from frame 0's.
  assert every["copy_psnr_t"] != first["copy_psnr_t"]
  with pytest.raises(ConfigError, match="eval.starts='middle'"):
    evaluator.Evaluator(stage, starts="middle")
  config.eval = ConfigDict(dict(starts="middle"))
  assert config_validation.problems(config, "eval") == [
      "config.eval.starts='middle' is not one of ('first', 'all'); set --config.eval.starts to "
      "one of them"]


def test_skipped_metrics_follow_the_missing_ground_truth():
  specs = {v: eval_step.EvalSpec.from_stage(_stage_and_params(v)[1]) for v in ("flam", "lam")}
  everything = ("frames", "masks", "actions")
  assert eval_step.skipped_metrics(specs["flam"], everything) == {}
  assert set(eval_step.skipped_metrics(specs["flam"], ("frames",))) == {
      "ari_fg", "disentanglement", "probe"}
  # Per-slot actions are matched to agents through the masks; LAM's scene action is not.
  assert "masks" in eval_step.skipped_metrics(specs["flam"], ("frames", "actions"))["probe"]
  assert eval_step.skipped_metrics(specs["lam"], ("frames", "masks")) == {
      "probe": "the dataset has no ground-truth actions"}
  wm = dataclasses.replace(specs["lam"], model=specs["lam"].model.clone(variant="wm"))
  assert eval_step.skipped_metrics(wm, ("frames", "actions")) == {}
  with pytest.raises(DataError, match="wm baseline is driven by ground-truth actions"):
    eval_step.skipped_metrics(wm, ("frames", "masks"))


def test_sweep_equals_separate_evaluations(batches):
  _, stage, params = _stage_and_params("flam", seeds=(0, 1))
  ev = evaluator.Evaluator(stage)
  swept = ev.evaluate_sweep(params, batches)
  separate = [ev.evaluate(p, batches) for p in params]
  assert swept[0]["psnr_t"] != swept[1]["psnr_t"]  # Two different models.
  for a, b in zip(swept, separate):
    for key in ("psnr_t", "ssim_t", "delta_psnr_t", "token_accuracy_t", "tokenizer_psnr",
                "ari_fg", "disentanglement", "probe_accuracy", "probe_majority"):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-4, err_msg=key)


def _save(directory, step, params, config):
  ckpt = checkpointing.Checkpointer(directory, async_save=False)
  ckpt.save(step, dict(params=params), None, config)
  ckpt.wait()
  ckpt.close()


def test_eval_stage_through_train_py(tmp_path, data_dir):
  import train  # pylint: disable=g-import-not-at-top
  config, stage, params = _stage_and_params("flam", seeds=(0, 1))
  workdir = str(tmp_path / "run")
  tok_config = stage_fixtures.tiny_config("tokenizer")
  _save(os.path.join(workdir, "tokenizer", "checkpoints"), 5, stage.tokenizer_params, tok_config)
  config = config.copy_and_resolve_references()
  config.data.dir = data_dir
  for step, p in zip((1, 2), params):
    _save(os.path.join(workdir, "lam", "checkpoints"), step, p, config)

  config.stage = "eval"
  config.eval = ConfigDict(dict(batch_size=4))
  single = train.run(config, workdir)
  with open(os.path.join(workdir, "eval", "metrics.json")) as f:
    saved = json.load(f)
  assert saved["step"] == 2 and saved["num_windows"] == 6 and not single["preempted"]
  assert saved["psnr_t"] == pytest.approx(single["psnr_t"])
  assert "| PSNR t=1 |" in single["table"] and "| ARI-FG |" in single["table"]

  config.eval.steps = "1,2"
  swept = train.run(config, workdir)
  assert [r["step"] for r in swept["runs"]] == [1, 2]
  assert swept["runs"][1]["psnr_t"] == pytest.approx(single["psnr_t"], abs=1e-4)

  # Frame 0 given more slot-attention iterations at evaluation only: the same parameters,
  # other slots (the tiny config trains 1 iteration), said below the table.
  config.eval.steps = ""
  config.eval.init_slot_iterations = 3
  more = train.run(config, workdir)
  assert more["init_slot_iterations"] == 3 and "eval.init_slot_iterations" in more["table"]
  assert more["ari_fg"] != pytest.approx(single["ari_fg"], abs=1e-6)
  with pytest.raises(ConfigError, match="init_slot_iterations=-1"):
    config.eval.init_slot_iterations = -1
    train.run(config, workdir)
  config.eval.init_slot_iterations = 0

  config.eval.spelling_mistake = 1
  with pytest.raises(ConfigError, match="spelling_mistake"):
    train.run(config, workdir)

"""The policy stage end to end on a tiny goal task: modes, exact resume, one-line errors."""

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import multigrid as multigrid_config
from flam_jax import train
from flam_jax.data import goal_task
from flam_jax.errors import FlamError

TASK = goal_task.GoalTaskConfig(grid_size=6, resolution=24, num_distractors=2, max_steps=8)


def tiny_config(stage: str, data_dir: str, **policy):
  config = multigrid_config.get_config("flam")
  config.stage = stage
  config.data.dir = data_dir
  config.data.image_size = 24
  config.data.window_length = 1 if stage in ("tokenizer", "policy") else 4
  config.data.num_workers = 0
  config.batch_size = 4
  config.num_train_steps = 2
  config.log_every_steps = config.image_every_steps = config.checkpoint_every_steps = 1000
  config.progress_bar = False
  config.optim.warmup_steps = 1
  config.tokenizer.update(dict(encoder_channels=(8, 8), z_channels=8, codebook_dim=8,
                               levels=(4, 4, 2)))
  config.lam.update(dict(d_model=16, num_heads=2, num_blocks=1, aggregator_blocks=1,
                         num_slots=TASK.num_agents, slot_iterations=1, prediction_steps=2,
                         subtoken_sizes=(4, 8), scene_action_levels=(4, 4), remat=False))
  config.policy.update(dict(num_labels=10, decoder_steps=20, channels=(8,), hidden=16,
                            eval_episodes=4))
  config.policy.update(policy)
  return config


@pytest.fixture(scope="module")
def lam_workdir(tmp_path_factory):
  """Goal-task demonstrations, a tokenizer and a FLAM trained for 2 steps each."""
  root = tmp_path_factory.mktemp("policy")
  data_dir = str(root / "data")
  goal_task.write_dataset(data_dir, TASK, num_episodes=10, seed=0, progress=False)
  workdir = str(root / "flam")
  train.run(tiny_config("tokenizer", data_dir), workdir)
  train.run(tiny_config("lam", data_dir), workdir)
  return workdir, data_dir


def _params(stage_dir, step):
  return ocp.StandardCheckpointer().restore(
      os.path.join(stage_dir, "checkpoints", str(step), "state"))["params"]


def test_pseudo_labels_train_resume_exactly_and_evaluate(tmp_path, lam_workdir):
  lam_dir, data_dir = lam_workdir
  config = tiny_config("policy", data_dir, lam_workdir=lam_dir)
  config.num_train_steps, config.checkpoint_every_steps = 6, 3
  full = train.run(config, str(tmp_path / "full"))
  assert full["step"] == 6 and np.isfinite(full["metrics"]["loss"])
  evaluation = full["evaluation"]
  assert evaluation["policy"]["num_episodes"] == 4
  assert evaluation["expert"]["success_rate"] >= evaluation["random"]["success_rate"]
  labelling = evaluation["labelling"]
  assert labelling["labelled"] == 10 and 0.0 <= labelling["pseudo_label_accuracy"] <= 1.0
  assert labelling["lam_variant"] == "flam"

  # A run that crashed after its step-3 checkpoint resumes to the same parameters.
  workdir = str(tmp_path / "resumed")
  train.run(config, workdir)
  shutil.rmtree(os.path.join(workdir, "policy", "checkpoints", "6"))
  resumed = train.run(config, workdir)
  assert resumed["step"] == 6
  jax.tree.map(np.testing.assert_array_equal, _params(os.path.join(workdir, "policy"), 6),
               _params(os.path.join(tmp_path / "full", "policy"), 6))


@pytest.mark.parametrize("mode, transitions", [("labelled", 10), ("true_actions", None)])
def test_behaviour_cloning_on_true_actions(tmp_path, lam_workdir, mode, transitions):
  lam_dir, data_dir = lam_workdir
  config = tiny_config("policy", data_dir, mode=mode)
  config.lam.tokenizer_checkpoint = os.path.join(lam_dir, "tokenizer")
  summary = train.run(config, str(tmp_path / mode))
  labelling = summary["evaluation"]["labelling"]
  assert labelling["mode"] == mode
  if transitions is not None:
    assert sum(labelling["label_counts"]) == transitions
  else:
    assert sum(labelling["label_counts"]) == labelling["transitions"] > 10


def test_bad_inputs_give_one_line_errors(tmp_path, lam_workdir):
  lam_dir, data_dir = lam_workdir
  cases = [
      (dict(lam_workdir=str(tmp_path / "nowhere")), {}, "has no latent action model"),
      (dict(lam_workdir=lam_dir), {"tokenizer.z_channels": 16}, "tokenizer/lam mismatch"),
      (dict(lam_workdir=lam_dir, num_labels=10**6), {}, "num_labels=1000000 is larger"),
  ]
  for policy, overrides, message in cases:
    config = tiny_config("policy", data_dir, **policy)
    for key, value in overrides.items():
      section, leaf = key.split(".")
      config[section][leaf] = value
    with pytest.raises(FlamError) as error:
      train.run(config, str(tmp_path / "w"))
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_matched_slot_reference_needs_slots(tmp_path, lam_workdir):
  """decoder_slots=matched_by_masks on a monolithic LAM: a one-line error naming the fix,
  before the stage tokenizes or infers anything."""
  lam_dir, data_dir = lam_workdir
  config = tiny_config("lam", data_dir)
  config.lam.variant = "lam"
  config.lam.tokenizer_checkpoint = os.path.join(lam_dir, "tokenizer")
  monolithic = str(tmp_path / "lam")
  train.run(config, monolithic)
  config = tiny_config("policy", data_dir, lam_workdir=monolithic, decoder_slots="matched_by_masks")
  workdir = str(tmp_path / "w")
  with pytest.raises(FlamError) as error:
    train.run(config, workdir)
  message = str(error.value)
  assert "holds a 'lam' model, not slots" in message and "decoder_slots=attention" in message
  assert "\n" not in message
  assert not os.path.exists(os.path.join(workdir, "tokens"))


def test_shares_the_world_models_token_cache(tmp_path, lam_workdir):
  """With lam.token_cache_dir at the world model's cache (same demonstrations, same
  tokenizer) the policy stage reads those tokens instead of encoding the videos again."""
  lam_dir, data_dir = lam_workdir
  cache = os.path.join(lam_dir, "tokens")
  before = os.path.getmtime(os.path.join(cache, "metadata.json"))
  config = tiny_config("policy", data_dir, lam_workdir=lam_dir)  # pseudo_labels
  config.lam.token_cache_dir = cache
  workdir = str(tmp_path / "shared")
  train.run(config, workdir)
  assert os.path.getmtime(os.path.join(cache, "metadata.json")) == before
  assert not os.path.exists(os.path.join(workdir, "tokens"))


def test_binding_diagnostics_match_the_slot_masks(tmp_path, lam_workdir):
  """infer_latent_actions says which slot holds agent 0 and how much of it: checked against
  the world model's own slot masks by brute force over slot assignments, and reported by
  the stage (a diagnostic: f never sees the masks)."""
  import itertools  # pylint: disable=g-import-not-at-top
  from flam_jax.data import pipeline, records  # pylint: disable=g-import-not-at-top
  from flam_jax.lib import loading, rollout  # pylint: disable=g-import-not-at-top
  from flam_jax.lib import policy as policy_lib  # pylint: disable=g-import-not-at-top
  lam_dir, data_dir = lam_workdir
  loaded, params, _ = loading.load_trained(lam_dir)
  length = TASK.max_steps + 1
  tokens = np.stack([pipeline.WindowSource(os.path.join(lam_dir, "tokens"), "train",
                                           window_length=length, fields=("tokens",)
                                           ).read_episode(e)["tokens"] for e in range(3)])
  ids = np.stack([pipeline.WindowSource(data_dir, "train", window_length=length,
                                        fields=("masks",)).read_episode(e)["masks"]
                  for e in range(3)])
  inferred = policy_lib.infer_latent_actions(loaded, params, tokens, ids,
                                             num_agents=TASK.num_agents, agent=0,
                                             episodes_per_call=2)
  assert inferred["actions"].shape[:3] == inferred["keys"].shape[:3] == (3, length - 1, 3)

  e, l, h, w = tokens.shape
  _, masks = rollout.entities(loaded.model, params, rollout.features(
      loaded.codebook, jax.numpy.asarray(tokens.reshape(e, l, h * w))))
  masks = np.asarray(masks)  # [E, L, K, N]
  # f's keys: each slot's share of each token code in use under its mask, at frame t.
  codes = np.unique(tokens)
  covered = np.einsum("elkn,elnu->elku", masks[:, :-1], (tokens.reshape(e, l, -1, 1) == codes)[:, :-1])
  np.testing.assert_allclose(inferred["keys"], covered / masks[:, :-1].sum(-1, keepdims=True),
                             atol=1e-5)
  cell = ids.shape[-1] // w
  agent_pixels = [ids == records.FIRST_AGENT_ID + a for a in range(TASK.num_agents)]
  for ep in range(e):
    for t in range(l - 1):
      share = np.zeros((TASK.num_agents, masks.shape[2]))
      for a, pixels in enumerate(agent_pixels):
        for frame in (t, t + 1):
          per_patch = pixels[ep, frame].reshape(h, cell, w, cell).sum(axis=(1, 3)).reshape(-1)
          share[a] += masks[ep, frame] @ per_patch
        share[a] /= max(pixels[ep, t].sum() + pixels[ep, t + 1].sum(), 1)
      best = max(itertools.permutations(range(masks.shape[2]), TASK.num_agents),
                 key=lambda slots: sum(share[a, s] for a, s in enumerate(slots)))
      np.testing.assert_allclose(inferred["agent_share"][ep, t], share[0, best[0]], atol=1e-4)
      assert np.isclose(share[0, inferred["agent_slot"][ep, t]], share[0, best[0]], atol=1e-4)

  config = tiny_config("policy", data_dir, lam_workdir=lam_dir)
  labelling = train.run(config, str(tmp_path / "policy"))["evaluation"]["labelling"]
  for key in ("controlled_agent_share", "controlled_agent_bound_fraction",
              "decoder_attends_controlled_slot"):
    assert 0.0 <= labelling[key] <= 1.0, (key, labelling)

  # The reference that reads the slot the masks match to agent 0: f is fitted on that
  # slot's latent action and key alone, as one computes it by hand from the cached latents.
  from flam_jax.modules.policy import LatentActionDecoder  # pylint: disable=g-import-not-at-top
  config = tiny_config("policy", data_dir, lam_workdir=lam_dir, decoder_slots="matched_by_masks")
  workdir = str(tmp_path / "matched")
  labelling = train.run(config, workdir)["evaluation"]["labelling"]
  assert labelling["decoder_attends_controlled_slot"] == 1.0
  latents = np.load(os.path.join(workdir, "policy_latents.npz"))
  demos = policy_lib.demonstration_transitions(os.path.join(workdir, "tokens"), data_dir, length)
  episode_m, time_m = demos["episode_m"], demos["time_m"]
  true_m = demos["actions_elk"][episode_m, time_m, 0].astype(np.int32)
  slot_m = latents["agent_slot"][episode_m, time_m]
  every = np.arange(len(slot_m))
  a_m1a = latents["actions"][episode_m, time_m][every, slot_m][:, None]
  k_m1u = latents["keys"][episode_m, time_m][every, slot_m][:, None]
  labelled = policy_lib.labelled_draw(len(slot_m), 10, config.seed)
  decoder = LatentActionDecoder(num_actions=4, hidden=config.policy.decoder_hidden)
  f_params, _ = policy_lib.fit_decoder(
      decoder, a_m1a[labelled], k_m1u[labelled], true_m[labelled], steps=20,
      learning_rate=config.policy.decoder_learning_rate, seed=config.seed,
      validation_fraction=config.policy.decoder_validation_fraction)
  pseudo_m, _ = policy_lib.decode_labels(decoder, f_params, a_m1a, k_m1u)
  assert labelling["label_counts"] == np.bincount(pseudo_m, minlength=4).tolist()
  assert np.isclose(labelling["pseudo_label_accuracy"], np.mean(pseudo_m == true_m))


def test_video_that_is_not_demonstrations_is_refused_in_one_line(tmp_path):
  from flam_jax.data import multigrid  # pylint: disable=g-import-not-at-top
  from flam_jax.stages import policy  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / "random_multigrid")
  multigrid.write_dataset(out, multigrid.MultigridConfig(grid_size=6, resolution=24,
                                                         num_agents=2, episode_length=4),
                          num_episodes=3, seed=0, progress=False)
  with pytest.raises(FlamError) as error:
    policy.demonstration_metadata(out)
  message = str(error.value)
  assert "'flam_jax.data.multigrid' data, not demonstrations" in message and "\n" not in message
  assert "flam_jax.data.goal_task --out" in message and "procgen --demonstrations" in message

"""Controllable generation: rollout shapes, slot control, pictures, the CLI and its errors."""

import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from flam_jax.generate import actions as gen_actions
from flam_jax.generate import inputs, pictures
from flam_jax.data import multigrid
from flam_jax.errors import ConfigError, DataError
from flam_jax.lib import checkpointing, loading, rollout
from flam_jax.lib.train_state import TrainState
from flam_jax.modules.world_model import LatentActionWorldModel
from flam_jax.stages.lam import LatentActionStage
from flam_jax.lib.models import make_tokenizer
from tests import stage_fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 2


def _save(directory, config, params):
  """A checkpoint in the trainer's layout (state + config), optimizer state left empty."""
  ckpt = checkpointing.Checkpointer(directory, async_save=False)
  ckpt.save(1, TrainState(step=jnp.ones((), jnp.int32), params=params, opt_state={}), None,
            config)
  ckpt.wait()
  ckpt.close()


def _random_params(abstract, seed: int):
  """Random parameters shaped like `abstract`: kernels N(0, 1/fan_in), LayerNorm 1 and 0.

  Filled in numpy from `jax.eval_shape` of the initialiser: compiling the real
  initialisers (tokenizer convolutions, the whole world model) costs ~25 s on XLA:CPU.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "scale":
      return np.ones(leaf.shape, np.float32)
    if name == "bias":
      return np.zeros(leaf.shape, np.float32)
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
    return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A workdir with a dataset and randomly initialised tokenizer and FLAM checkpoints.

  Written in the trainer's checkpoint layout without training: 2 training steps of both
  stages cost ~50 s of XLA:CPU compiles (train steps, pictures) for no extra coverage here.
  """
  root = tmp_path_factory.mktemp("generate")
  data_dir = str(root / "data")
  multigrid.write_dataset(data_dir, multigrid.MultigridConfig(
      grid_size=4, resolution=16, num_agents=2, episode_length=6), num_episodes=10,
                          progress=False)
  config = stage_fixtures.tiny_config("lam")
  config.data.dir = data_dir
  tok_config = stage_fixtures.tiny_config("tokenizer")
  tok_config.data.dir = data_dir
  tokenizer = make_tokenizer(tok_config)
  tok_params = _random_params(jax.eval_shape(
      tokenizer.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"], seed=0)
  _save(str(root / "tokenizer" / "checkpoints"), tok_config, tok_params)
  stage = LatentActionStage(config, tokenizer, tok_params, grid=stage_fixtures.GRID,
                            num_agents=stage_fixtures.NUM_AGENTS)
  batch = stage_fixtures.random_batches(config, 1, 1)[0]
  params = _random_params(jax.eval_shape(
      stage.init, jax.random.PRNGKey(0), {k: batch[k] for k in stage.data_fields}), seed=1)
  _save(str(root / "lam" / "checkpoints"), config, params)
  return str(root)


@pytest.fixture(scope="module")
def model(workdir):
  stage, params, step = loading.load_trained(workdir)
  assert step == 1
  clip, _, _ = inputs.load_clip(stage, "test", 0, 0, STEPS, need_steps=True)
  return stage, params, clip


def test_rollout_frames_shapes_and_range(model):
  stage, params, clip = model
  actions = gen_actions.actions_from_indices(stage, [[0, 1], [2, 3]])  # [H, K, A]
  assert actions.shape == (STEPS, 2, 2)
  frames = rollout.rollout_frames(stage, params, clip[0], actions)
  assert frames.shape == (STEPS + 1, 16, 16, 3) and frames.dtype == np.float32
  assert np.all(np.isfinite(frames)) and frames.min() >= 0.0 and frames.max() <= 1.0
  # uint8 and [0, 1] start frames are the same input.
  again = rollout.rollout_frames(stage, params, clip[0].astype(np.float32) / 255.0, actions)
  np.testing.assert_allclose(again, frames, atol=1e-6)
  with pytest.raises(DataError, match="16x16"):
    rollout.rollout_frames(stage, params, np.zeros((8, 8, 3), np.uint8), actions)


def test_one_slot_action_changes_prediction(model):
  stage, params, clip = model
  # Slot 0 takes code 0 or code 3 (both FSQ channels flipped); slot 1 keeps code 1.
  indices = np.array([[[0, 1]] * STEPS, [[3, 1]] * STEPS])  # [B, H, K]
  actions = np.stack([gen_actions.actions_from_indices(stage, i) for i in indices])
  out = rollout.rollout_from_frame(stage, params, clip[0], actions)
  assert out["frames"].shape == (2, STEPS + 1, 16, 16, 3)
  assert out["tokens"].shape == (2, STEPS, stage.num_patches)
  assert out["masks"].shape == (2, stage.num_patches)
  np.testing.assert_array_equal(out["frames"][0, 0], out["frames"][1, 0])  # Same start.
  assert np.any(out["tokens"][0] != out["tokens"][1])


def test_control_grid_is_slots_by_codes(model):
  stage, params, clip = model
  picture, arrays = pictures.slot_control_grid(stage, params, clip[0], STEPS)
  k, c = 2, 4  # FLAM slots x FSQ [2, 2] codes.
  assert arrays["final"].shape == (k, c, 16, 16, 3)
  assert arrays["reference"].shape == (k, 2)  # The IDM's "no change" code per slot.
  # Header row (start, slot masks) + one row per slot; lead column + one per code; 2 px pad.
  assert picture.shape == ((1 + k) * 18 + 2, (1 + c) * 18 + 2, 3)
  np.testing.assert_array_equal(arrays["columns"], gen_actions.unit_codebook(stage))  # Code order.


def test_figure_rows(model):
  stage, params, clip = model
  picture, arrays = pictures.figure_rollout(stage, params, clip)
  t = STEPS + 1
  assert arrays["prediction"].shape == (t, 16, 16, 3)
  assert arrays["masks"].shape == (t, 2, stage.num_patches)
  # Ground truth, slot masks, reconstruction, prediction.
  assert picture.shape == (4 * 18 + 2, t * 18 + 2, 3)


def _stub(variant="flam", action_kind="fsq"):
  """Just enough of a stage for the action helpers (no parameters, nothing compiled)."""
  config = stage_fixtures.tiny_config("lam", variant)
  config.lam.action_kind = action_kind
  model_ = LatentActionWorldModel(
      variant=variant, num_slots=2, action_levels=(2, 2), scene_action_levels=(4, 4),
      action_kind=action_kind, num_agents=2, d_model=16)
  return types.SimpleNamespace(config=config, model=model_, num_agents=2)


def test_parse_actions():
  np.testing.assert_array_equal(gen_actions.parse_actions(_stub(), "0,1; 2,3;"), [[0, 1], [2, 3]])
  np.testing.assert_array_equal(gen_actions.parse_actions(_stub("lam"), "15;0"), [[15], [0]])
  np.testing.assert_array_equal(gen_actions.parse_actions(_stub("wm"), "3,2"), [[3, 2]])
  wm_actions = gen_actions.actions_from_indices(_stub("wm"), [[3, 2]])
  np.testing.assert_array_equal(wm_actions, [[[0, 0, 0, 1, 0, 0, 1, 0]]])  # One-hot per agent.


@pytest.mark.parametrize("variant, kind, text, message", [
    ("flam", "fsq", "0,1;2", "step 2 ('2') gives 1 code indices but this flam model takes 2"),
    ("flam", "fsq", "0,4", "code 4 for slot 1 is out of range; this model has 4 codes"),
    ("flam", "fsq", "0,-1", "out of range"),
    ("flam", "fsq", "a,b", "not a list of integers"),
    ("flam", "fsq", "", "--actions is empty"),
    ("lam", "fsq", "1,2", "takes 1 per step (one per scene action)"),
    ("flam", "gaussian", "0,1", "continuous"),
])
def test_bad_actions_are_one_line_config_errors(variant, kind, text, message):
  with pytest.raises(ConfigError) as e:
    gen_actions.parse_actions(_stub(variant, kind), text)
  assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_load_image_errors(tmp_path):
  path = str(tmp_path / "start.png")
  Image.fromarray(np.zeros((20, 16, 3), np.uint8)).save(path)
  with pytest.raises(DataError, match=r"is 16x20 pixels .* trained on 16x16"):
    inputs.load_image(path, 16)
  Image.fromarray(np.zeros((16, 16, 4), np.uint8)).save(path)  # RGBA is fine.
  assert inputs.load_image(path, 16).shape == (16, 16, 3)
  (tmp_path / "junk.png").write_text("not an image")
  with pytest.raises(DataError, match="not a readable image"):
    inputs.load_image(str(tmp_path / "junk.png"), 16)


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
             " --xla_llvm_disable_expensive_passes=true")
  return subprocess.run([sys.executable, "-m", "flam_jax.generate", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_cli_writes_gif_png_control_grid_and_figure(workdir, tmp_path):
  out_dir = str(tmp_path / "out")
  out = _cli(f"--workdir={workdir}", "--sample", f"--steps={STEPS}", "--control_grid",
             "--figure", f"--out={out_dir}")
  assert out.returncode == 0, out.stderr[-3000:]
  for name in ("rollout.gif", "rollout.png", "control_grid.png", "figure.png"):
    path = os.path.join(out_dir, name)
    assert path in out.stdout, out.stdout
    with Image.open(path) as image:
      image.load()
      if name == "rollout.gif":
        assert image.n_frames == STEPS + 1
  assert '--actions "' in out.stdout  # The sampled codes, ready to edit and replay.


@pytest.mark.parametrize("args, message", [
    ([], "no latent action model checkpoint"),
    (["--actions=0,1;2"], "--actions step 2"),
])
def test_cli_errors_are_one_line(workdir, tmp_path, args, message):
  target = str(tmp_path / "empty") if not args else workdir
  out = _cli(f"--workdir={target}", *args)
  assert out.returncode == 2, out.stderr[-3000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last, out.stderr[-3000:]

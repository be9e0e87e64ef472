"""Bad inputs give one-line errors (exit 2), checkpoints survive damage, NaN steps never get saved.

The battery: config values (in-process, `config_validation`), config files, flags and paths
(subprocesses of the real entry points, which stop before any model is built), damaged
checkpoints (in-process, on a tiny state), the NaN/Inf guard (a toy stage) and the exit
convention (`flam_jax.cli`).
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from configs import multigrid as multigrid_config
from configs import quickstart
from flam_jax import cli, filesystem
from flam_jax.errors import CheckpointError, ConfigError, DataError, FlamError, TrainingError
from flam_jax.lib import checkpointing, config_validation, trainer
from flam_jax.lib.config_utils import stage_config
from flam_jax.lib.train_state import TrainState

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------- config values (in-process)

BAD_VALUES = [
    ("num_train_steps", 0, "num_train_steps=0"),
    ("num_train_steps", -5, "num_train_steps=-5"),
    ("batch_size", 0, "batch_size=0"),
    ("seed", -1, "seed=-1"),
    ("log_every_steps", 0, "log_every_steps"),
    ("checkpoint_every_steps", 0, "checkpoint_every_steps"),
    ("keep_checkpoints", 0, "keep_checkpoints"),
    ("compute_dtype", "float16", "compute_dtype='float16'"),
    ("progress_bar", 1, "progress_bar=1 is not a bool"),
    ("data.image_size", 0, "data.image_size=0"),
    ("data.image_size", 36, "not divisible by the tokenizer stride 8"),
    ("data.window_length", 0, "data.window_length=0"),
    ("data.window_stride", 0, "data.window_stride=0"),
    ("data.num_workers", -1, "data.num_workers=-1"),
    ("data.generate.num_agents", 0, "num_agents=0"),
    ("data.generate.episodes", 3, "episodes=3"),
    ("data.generate.wall_density", 1.5, "wall_density"),
    ("tokenizer.levels", (), "tokenizer.levels=()"),
    ("tokenizer.levels", (4, 1), "each must be >= 2"),
    ("tokenizer.encoder_channels", ("w", "i", "d", "e"), "tuple of integers"),
    ("tokenizer.encoder_channels", (64, 0), "each must be >= 1"),
    ("tokenizer.z_channels", 0, "tokenizer.z_channels=0"),
    ("tokenizer.codebook_dim", -3, "tokenizer.codebook_dim=-3"),
    ("optim.learning_rate", -1e-3, "optim.learning_rate=-0.001"),
    ("optim.learning_rate", float("nan"), "not finite"),
    ("optim.warmup_steps", -1, "optim.warmup_steps=-1"),
    ("optim.final_lr_fraction", 2.0, "between 0 and 1"),
    ("optim.b2", 1.0, "optim.b2=1.0"),
    ("optim.grad_clip_norm", -1.0, "grad_clip_norm"),
    ("mesh.model_axis_size", 0, "mesh.model_axis_size=0"),
    ("skip_nonfinite_steps", "yes", "skip_nonfinite_steps='yes' is not a bool"),
    ("cpu_compiler_options.tokenizer.xla_cpu_experimental_ynn_fusion_type", "dot",
     "names 'dot', which XLA does not know"),
]

BAD_LAM_VALUES = [
    ("lam.variant", "flamm", "lam.variant='flamm' is not one of"),
    ("lam.aggregator_mode", "softmax", "lam.aggregator_mode='softmax'"),
    ("lam.num_slots", 0, "lam.num_slots=0"),
    ("lam.rollout_starts", "all", "lam.rollout_starts='all' is not one of"),
    ("lam.slot_iterations", 0, "lam.slot_iterations=0"),
    ("lam.num_heads", 3, "not divisible by config.lam.num_heads=3"),
    ("lam.d_model", 0, "lam.d_model=0"),
    ("lam.action_levels", (2, 1), "lam.action_levels"),
    ("lam.action_kind", "vq", "lam.action_kind='vq'"),
    ("lam.slot_matching", "greedy", "lam.slot_matching='greedy'"),
    ("lam.slot_init", "random", "lam.slot_init='random'"),
    ("lam.slot_position_embedding", "sine", "lam.slot_position_embedding='sine'"),
    ("lam.slot_decoder_position_embedding", "sine", "lam.slot_decoder_position_embedding="),
    ("lam.init_slot_iterations", -1, "lam.init_slot_iterations=-1"),
    ("lam.init_slot_iterations", 1, "init_slot_iterations=1 is below config.lam.slot_iterations"),
    ("lam.kl_weight", -1.0, "lam.kl_weight=-1.0"),
    ("lam.prediction_steps", 0, "lam.prediction_steps=0"),
    ("lam.subtoken_sizes", (), "lam.subtoken_sizes=()"),
    ("lam.recursive_init", "no", "lam.recursive_init='no' is not a bool"),
    ("lam.predicted_slot_reconstruction_weight", -1.0,
     "lam.predicted_slot_reconstruction_weight=-1.0"),
    ("lam.slot_reconstruction_changed_weight", 0.5,
     "lam.slot_reconstruction_changed_weight=0.5"),
]


def _set(config: ConfigDict, dotted: str, value) -> ConfigDict:
  config = ConfigDict(config.to_dict(), type_safe=False)  # As a bad config file could write it.
  *parents, leaf = dotted.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value
  return config


@pytest.mark.parametrize("key, value, message", BAD_VALUES)
def test_bad_training_value_is_one_line_config_error(key, value, message):
  config = _set(multigrid_config.get_config("tokenizer"), key, value)
  with pytest.raises(ConfigError, match=None) as info:
    config_validation.validate(config, "tokenizer")
  text = str(info.value)
  assert message in text and "\n" not in text, text


@pytest.mark.parametrize("key, value, message", BAD_LAM_VALUES)
def test_bad_lam_value_is_one_line_config_error(key, value, message):
  config = _set(multigrid_config.get_config("flam"), key, value)
  with pytest.raises(ConfigError) as info:
    config_validation.validate(config, "lam")
  assert message in str(info.value), str(info.value)


def test_predicted_slot_reconstruction_without_the_slot_decoder_is_one_line_error():
  config = _set(multigrid_config.get_config("flam"), "lam.slot_reconstruction_weight", 0.0)
  config.lam.predicted_slot_reconstruction_weight = 1.0
  with pytest.raises(ConfigError, match="needs the slot decoder") as info:
    config_validation.validate(config, "lam")
  assert "\n" not in str(info.value)


@pytest.mark.parametrize("variant", multigrid_config.VARIANTS)
def test_shipped_configs_pass_validation(variant):
  config = multigrid_config.get_config(variant)
  config_validation.validate(config, config.stage)
  config = quickstart.get_config("flam")
  for name in ("tokenizer", "lam", "eval"):
    config_validation.validate(stage_config(config, name), name)


def test_a_missing_key_and_an_unknown_stage_are_named():
  config = multigrid_config.get_config("tokenizer").to_dict()
  del config["tokenizer"]["levels"]
  with pytest.raises(ConfigError, match="config.tokenizer.levels is missing"):
    config_validation.validate(ConfigDict(config), "tokenizer")
  with pytest.raises(ConfigError, match="'rollout', which has no validation rules"):
    config_validation.validate(ConfigDict(config), "rollout")


def test_a_stage_registers_its_own_rules():
  config = _set(multigrid_config.get_config("tokenizer"), "seed", 0)
  config.policy = ConfigDict(dict(horizon=0))
  config_validation.register("policy_test", config_validation.Rule("policy.horizon", "int", low=1))
  try:
    with pytest.raises(ConfigError, match="policy.horizon=0"):
      config_validation.validate(config, "policy_test")
  finally:
    del config_validation.STAGE_RULES["policy_test"]


# ------------------------------------------------------ entry points (subprocess, no model built)

TINY = ["--config.data.image_size=32", "--config.tokenizer.encoder_channels=(8,8)",
        "--config.num_train_steps=1", "--config.progress_bar=False"]


def _entry(args, timeout=900):  # Generous: imports take minutes on a loaded 2-core CPU.
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def _assert_one_line_error(out, message):
  assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-2000:]
  assert message in lines[0], lines[0]
  assert "Traceback" not in out.stderr and "Traceback" not in out.stdout


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
  base = tmp_path_factory.mktemp("bad")
  a_file = base / "a_file"
  a_file.write_text("not a directory")
  syntax = base / "broken_config.py"
  syntax.write_text("def get_config(:\n")
  raises = base / "raising_config.py"
  raises.write_text("def get_config():\n  return {}['x']\n")
  return dict(base=str(base), file=str(a_file), syntax=str(syntax), raises=str(raises))


TRAIN_CASES = [
    (["--config=configs/nope.py"], "No such file or directory: 'configs/nope.py'; check the"),
    (["--config=configs/multigrid.py:bogus"], "unknown variant 'bogus'"),
    (["--config=configs/multigrid.py", "--config.tokenizer.z_chanels=4"],
     "unknown config key 'z_chanels' in --config.tokenizer.z_chanels=4 (did you mean 'z_channels'?)"),
    (["--config=configs/multigrid.py", "stray"], "unexpected arguments: stray; usage: python train.py"),
    (["--config=configs/multigrid.py", "--bogus_flag=1"], "Unknown command line flag 'bogus_flag'"),
    (["--config=configs/multigrid.py", "--config.num_train_steps=0"], "num_train_steps=0"),
    # After TINY's (8,8), ml_collections 1.1 appends the override to the tuple: (8, 8, 'wide').
    (["--config=configs/multigrid.py", "--config.tokenizer.encoder_channels=wide"],
     "'wide') is not a non-empty tuple of integers; write it as --config.tokenizer.encoder_channels="),
    (["--config=configs/multigrid.py", "--config.tokenizer.levels=()"], "tokenizer.levels=()"),
    (["--config=configs/multigrid.py:flam", "--config.lam.aggregator_mode=foo"],
     "lam.aggregator_mode='foo'"),
    (["--config=configs/multigrid.py:flam", "--config.lam.num_slots=0"], "lam.num_slots=0"),
    (["--config=configs/multigrid.py", "--config.stage=train"], "names unknown stages ['train']"),
    (["--config=configs/multigrid.py", "--config.batch_size=many"], "batch_size"),
    (["--config=configs/quickstart.py", "--config.per_stage.tokenizer.num_train_steps=-1"],
     "stage tokenizer (config.per_stage.tokenizer merged in): config.num_train_steps=-1"),
]


@pytest.mark.parametrize("args, message", TRAIN_CASES)
def test_train_py_bad_input(tmp_path, args, message):
  # The case's overrides come last: they win over TINY's (absl applies them in order).
  out = _entry(["train.py", args[0], f"--workdir={tmp_path / 'w'}", *TINY, *args[1:]])
  _assert_one_line_error(out, message)


@pytest.mark.parametrize("case, message", [
    ("syntax", "cannot load the config file"),
    ("raises", "loading the config failed (KeyError: x); fix the config file's get_config()"),
    ("workdir_is_file", "is a file, not a directory"),
    ("data_dir_is_file", "is a file, not a dataset directory"),
    ("workdir_under_file", "is a file, not a directory; choose another path"),
])
def test_train_py_bad_file_or_path(paths, case, message):
  config, workdir, extra = "configs/multigrid.py", os.path.join(paths["base"], "w"), []
  if case in ("syntax", "raises"):
    config = paths[case]
  elif case == "workdir_is_file":
    workdir = paths["file"]
  elif case == "data_dir_is_file":
    extra = [f"--config.data.dir={paths['file']}"]
  else:
    workdir = os.path.join(paths["file"], "w")
  args = ["train.py", f"--config={config}", f"--workdir={workdir}", *extra]
  out = _entry(args + (TINY if case not in ("syntax", "raises") else []))
  _assert_one_line_error(out, message)


@pytest.mark.parametrize("args, message", [
    (["-m", "flam_jax.data.multigrid", "--out={file}"], "is a file, not a directory"),
    (["-m", "flam_jax.data.multigrid", "--out={base}/g", "--bogus=1"], "Unknown command line flag"),
    (["-m", "flam_jax.data.multigrid", "--out={base}/g", "stray"], "unexpected arguments: stray"),
    (["-m", "flam_jax.data.multigrid", "--out={base}/g", "--num_agents=0"], "num_agents=0"),
    (["-m", "flam_jax.data.multigrid"], "--out must have a value"),
    (["-m", "flam_jax.generate", "--workdir={base}/none"], "no latent action model checkpoint"),
    (["-m", "flam_jax.generate", "--workdir={base}/none", "stray"], "unexpected arguments"),
    (["-m", "flam_jax.generate", "--workdir={base}/none", "--out={file}"], "--out="),
    (["-m", "flam_jax.evaluate", "--workdir={base}/none"], "no latent action model"),
    (["-m", "flam_jax.evaluate", "--workdir={base}/none", "x"], "unexpected arguments: x"),
])
def test_other_entry_points_bad_input(paths, args, message):
  out = _entry([a.format(**paths) for a in args])
  _assert_one_line_error(out, message)


# ----------------------------------------------------------------- the exit convention (in-process)

def _exit_status(fn, argv=("prog",)):
  try:
    return cli.wrap_main(fn, "prog --flag=V")(list(argv))
  except SystemExit as e:
    return e.code


def test_exit_convention(capsys):
  def raises(exc):
    def main(argv):
      del argv
      raise exc
    return main

  assert _exit_status(raises(DataError("no data; generate it"))) == 2
  assert capsys.readouterr().err == "error: no data; generate it\n"
  assert _exit_status(raises(OSError(28, "No space left on device", "/w/x"))) == 2
  assert "No space left on device: /w/x" in capsys.readouterr().err
  assert _exit_status(lambda argv: cli.EXIT_PREEMPTED) == 143
  assert _exit_status(lambda argv: 0, ("prog", "extra")) == 2
  assert "unexpected arguments: extra; usage: prog --flag=V" in capsys.readouterr().err
  with pytest.raises(ZeroDivisionError):  # A bug keeps its traceback (exit 1).
    _exit_status(raises(ZeroDivisionError("bug")))
  with pytest.raises(OSError):  # So does an OSError that no user path explains.
    _exit_status(raises(OSError(5, "Input/output error")))


def test_filesystem_checks(tmp_path, monkeypatch):
  assert filesystem.check_output_dir(str(tmp_path / "new" / "dir"), "--workdir")
  with pytest.raises(ConfigError, match=r"only \d+ MiB free on its disk \(need 4398046511104 MiB\)"):
    filesystem.check_output_dir(str(tmp_path), "--workdir", min_free_bytes=2**62)
  monkeypatch.setattr(os, "access", lambda path, mode: False)  # As for a non-root user.
  with pytest.raises(ConfigError, match="is not writable"):
    filesystem.check_output_dir(str(tmp_path / "w"), "--workdir")


# --------------------------------------------------------------- checkpoints (in-process, tiny)

def _state(value: float, step: int):
  params = {"dense": {"kernel": jnp.full((4, 3), value), "bias": jnp.arange(3.0) + value}}
  return TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                    opt_state=optax.adam(1e-3).init(params))


def _save_steps(directory, steps, keep=5, value_of=float):
  ckpt = checkpointing.Checkpointer(directory, max_to_keep=keep, async_save=False)
  config = ConfigDict(dict(stage="test"))
  for step in steps:
    ckpt.save(step, _state(value_of(step), step), None, config)
  ckpt.wait()
  return ckpt


def _flip_bytes(step_dir):
  """Flips bytes in the middle of every array data file of a step (a bad disk)."""
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    for name in files:
      path = os.path.join(root, name)
      if os.sep + "d" + os.sep in path:
        data = bytearray(open(path, "rb").read())
        for i in range(len(data) // 2, min(len(data), len(data) // 2 + 16)):
          data[i] ^= 0xFF
        open(path, "wb").write(bytes(data))


def test_damaged_latest_falls_back_with_a_warning_and_is_moved_aside(tmp_path, capsys):
  directory = str(tmp_path / "checkpoints")
  _save_steps(directory, [1, 2, 3]).close()
  _flip_bytes(os.path.join(directory, "3"))
  ckpt = checkpointing.Checkpointer(directory, async_save=False)
  restored = ckpt.restore(jax.eval_shape(lambda: _state(0.0, 0)))
  assert int(restored.step) == 2
  np.testing.assert_array_equal(restored.params["dense"]["kernel"], np.full((4, 3), 2.0))
  err = capsys.readouterr().err.strip().splitlines()
  assert err[0].startswith("warning: checkpoint 3 in ") and "is damaged" in err[0], err
  assert sorted(ckpt.all_steps()) == [1, 2]
  assert os.listdir(tmp_path / "damaged_checkpoints")[0].startswith("3.")
  # A resumed run can save step 3 again.
  ckpt.save(3, _state(3.0, 3), None, ConfigDict(dict(stage="test")))
  ckpt.wait()
  assert 3 in ckpt.all_steps()


def test_restore_params_falls_back_and_an_explicit_damaged_step_raises(tmp_path):
  directory = str(tmp_path / "checkpoints")
  _save_steps(directory, [1, 2]).close()
  _flip_bytes(os.path.join(directory, "2"))
  ckpt = checkpointing.Checkpointer(directory, async_save=False)
  params, step = ckpt.restore_params_and_step()
  assert step == 1 and float(params["dense"]["bias"][0]) == 1.0
  assert ckpt.latest_good_step() == 1
  with pytest.raises(CheckpointError, match=r"step\(s\) \[2\] are damaged"):
    ckpt.restore_params(2)
  assert sorted(ckpt.all_steps()) == [1, 2]  # Read-only use moves nothing.


def test_non_finite_parameters_count_as_damage(tmp_path):
  directory = str(tmp_path / "checkpoints")
  ckpt = _save_steps(directory, [1, 2], value_of=lambda s: float("nan") if s == 2 else 1.0)
  assert ckpt.restore_params_and_step()[1] == 1
  state = ckpt.restore(jax.eval_shape(lambda: _state(0.0, 0)))
  assert int(state.step) == 1


def test_deleted_item_and_all_damaged_give_one_line_errors(tmp_path):
  directory = str(tmp_path / "checkpoints")
  _save_steps(directory, [1]).close()
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(os.path.join(directory, "1", "state"))
  ckpt = checkpointing.Checkpointer(directory, async_save=False)
  with pytest.raises(CheckpointError) as info:
    ckpt.restore_params()
  assert "\n" not in str(info.value) and "damaged" in str(info.value)
  with pytest.raises(CheckpointError):
    ckpt.restore(jax.eval_shape(lambda: _state(0.0, 0)))


def test_incompatible_config_stops_instead_of_falling_back(tmp_path):
  directory = str(tmp_path / "checkpoints")
  _save_steps(directory, [1, 2]).close()
  ckpt = checkpointing.Checkpointer(directory, async_save=False)

  def refuse(saved):
    raise CheckpointError(f"written with config.stage={saved['stage']!r}")

  with pytest.raises(CheckpointError, match="written with config.stage='test'"):
    ckpt.restore(jax.eval_shape(lambda: _state(0.0, 0)), check_config=refuse)
  assert sorted(ckpt.all_steps()) == [1, 2]


def test_a_good_step_is_never_deleted_while_newer_ones_are_unverified(tmp_path, capsys):
  directory = str(tmp_path / "checkpoints")
  ckpt = checkpointing.Checkpointer(directory, max_to_keep=2, async_save=False)
  config = ConfigDict(dict(stage="test"))
  for step in (1, 2, 3):
    ckpt.save(step, _state(float(step), step), None, config)
  ckpt._manager.wait_until_finished()  # pylint: disable=protected-access
  _flip_bytes(os.path.join(directory, "3"))  # Damaged before it was read back.
  ckpt.save(4, _state(4.0, 4), None, config)  # Verifies 3 (fails): keeps 1 and 2.
  assert "checkpoint 3 in" in capsys.readouterr().err
  assert sorted(ckpt.all_steps()) == [1, 2, 3, 4]
  ckpt.wait()  # Verifies 4: the two newest verified steps are 4 and 2; 1 goes.
  assert sorted(ckpt.all_steps()) == [2, 3, 4]


# ------------------------------------------------------------------ NaN/Inf guard (toy stage)

class _ToyStage:
  """loss = mean((w * x)^2); a batch with NaN in x gives a non-finite loss."""

  def loss(self, params, batch, rng):
    del rng
    return jnp.mean((params["w"] * batch["x"]) ** 2), {}


def _run_toy(skip: bool, xs):
  tx = optax.sgd(0.1)
  params = {"w": jnp.ones((3,))}
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  step_fn = jax.jit(trainer.make_train_step(_ToyStage(), tx, jax.random.PRNGKey(0), skip))
  guard = trainer.NonFiniteGuard(skip, "/ckpt")
  guard.last_saved = 0
  for i, x in enumerate(xs):
    state, metrics = step_fn(state, {"x": jnp.asarray(x, jnp.float32)})
    guard.add(i + 1, metrics)
  return state, guard


def test_non_finite_step_stops_with_step_and_metric():
  _, guard = _run_toy(False, [[1, 2, 3], [1, np.nan, 3], [1, 2, 3]])
  with pytest.raises(TrainingError) as info:
    guard.check()
  text = str(info.value)
  assert text.startswith("step 2 has a non-finite loss") and "the latest checkpoint is still step 0 in /ckpt" in text
  assert "skip_nonfinite_steps=True" in text


def test_skip_mode_leaves_state_unchanged_on_a_bad_step():
  state, guard = _run_toy(True, [[1, 2, 3], [np.inf, 2, 3]])
  guard.check()
  assert guard.skipped == 1
  reference, _ = _run_toy(True, [[1, 2, 3]])
  np.testing.assert_array_equal(state.params["w"], reference.params["w"])
  assert int(state.step) == 2
  _, guard = _run_toy(True, [[np.nan, 1, 1]] * trainer.MAX_CONSECUTIVE_SKIPPED_STEPS)
  with pytest.raises(TrainingError, match="steps in a row"):
    guard.check()


def test_every_user_error_type_is_a_flam_error():
  for error in (ConfigError, DataError, CheckpointError, TrainingError):
    assert issubclass(error, FlamError)

"""checkpointing.check_compatible: which config changes a checkpoint refuses."""

import numpy as np
import pytest
from ml_collections import ConfigDict

from flam_jax.errors import CheckpointError
from flam_jax.lib import checkpointing


def _config(**lam):
  return ConfigDict(dict(stage="lam", lam=dict(dict(d_model=64, remat=True), **lam)))


def test_a_changed_model_key_is_named():
  saved = _config().to_dict()
  with pytest.raises(CheckpointError, match=r"config\.lam\.d_model=64 .* now has 32"):
    checkpointing.check_compatible(saved, _config(d_model=32), ("stage", "lam"), "/ckpt")


def test_ignored_keys_may_change_or_be_missing_from_older_checkpoints():
  saved = _config().to_dict()
  older = dict(saved, lam={"d_model": 64})  # Written before lam.remat existed.
  for checkpoint_config in (saved, older):
    checkpointing.check_compatible(checkpoint_config, _config(remat=False), ("stage", "lam"),
                                   "/ckpt", ignored=("lam.remat",))
  with pytest.raises(CheckpointError, match="lam.remat"):
    checkpointing.check_compatible(older, _config(), ("stage", "lam"), "/ckpt")


def test_keys_newer_than_a_checkpoint_resume_at_their_default_only():
  older = _config().to_dict()  # Written before lam.slot_init existed (trained as "learned").
  defaults = {"lam.slot_init": "learned", "other.key": 1}  # other.key: not under the keys.
  checkpointing.check_compatible(older, _config(slot_init="learned"), ("stage", "lam"), "/ckpt",
                                 defaults=defaults)
  with pytest.raises(CheckpointError, match=r"lam\.slot_init='learned' .* now has 'sampled'"):
    checkpointing.check_compatible(older, _config(slot_init="sampled"), ("stage", "lam"),
                                   "/ckpt", defaults=defaults)
  with pytest.raises(CheckpointError, match="lam.slot_init"):  # Without the default: refused.
    checkpointing.check_compatible(older, _config(slot_init="learned"), ("stage", "lam"), "/ckpt")


def test_tree_fingerprint_names_the_exact_arrays():
  params = {"dense": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3),
                      "bias": np.zeros(3, np.float32)}}
  same = {"dense": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3),
                    "bias": np.zeros(3, np.float32)}}
  changed = {"dense": {"kernel": params["dense"]["kernel"], "bias": np.full(3, 1e-6, np.float32)}}
  assert checkpointing.tree_fingerprint(params) == checkpointing.tree_fingerprint(same)
  assert checkpointing.tree_fingerprint(params) != checkpointing.tree_fingerprint(changed)


def test_fingerprint_tells_a_model_trained_again_to_the_same_step(tmp_path):
  def saved(name, value):
    ckpt = checkpointing.Checkpointer(str(tmp_path / name), async_save=False)
    ckpt.save(3, {"w": np.full(4, value, np.float32)}, None, ConfigDict({"stage": "lam"}))
    ckpt.wait()
    try:
      return ckpt.fingerprint(3), ckpt.fingerprint()
    finally:
      ckpt.close()

  first, latest = saved("a", 1.0)
  assert first == latest and len(first) == 8
  assert saved("b", 1.0)[0] == first  # The same arrays: the same fingerprint.
  assert saved("c", 2.0)[0] != first

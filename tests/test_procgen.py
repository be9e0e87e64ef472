"""Procgen generation in its own environment (numpy<2, gym<1, procgen2)."""

import os

import numpy as np
import pytest

from flam_jax.data import pipeline, procgen
from flam_jax.errors import ConfigError

# An environment made by `procgen.ensure_environment` (FLAM_PROCGEN_VENV or the default one).
VENV = os.path.expanduser(os.environ.get("FLAM_PROCGEN_VENV", procgen.DEFAULT_VENV))
needs_env = pytest.mark.skipif(
    not os.path.isfile(os.path.join(VENV, ".flam_jax_ready")),
    reason=f"no Procgen environment at {VENV}; `python -m flam_jax.data.procgen` creates it")


def test_unknown_game():
  with pytest.raises(ConfigError, match="unknown --game 'pong'"):
    procgen.generate("pong", 2, "/tmp/unused")


@needs_env
def test_bigfish_episodes_with_actions(tmp_path):
  out = str(tmp_path / "bigfish")
  meta = procgen.generate("bigfish", 3, out, max_frames=12, min_frames=4, venv=VENV,
                          progress=False)
  assert meta["ground_truth"] == ["actions"] and meta["config"]["num_actions"] == 15
  assert meta["config"]["resolution"] == 64
  src = pipeline.WindowSource(out, "train", window_length=4)
  ep = src.read_episode(0)
  assert ep["frames"].dtype == np.uint8 and ep["frames"].shape[1:] == (64, 64, 3)
  assert len(ep["actions"]) == len(ep["frames"]) - 1
  assert ep["actions"].min() >= 0 and ep["actions"].max() < 15
  assert np.abs(np.diff(ep["frames"].astype(int), axis=0)).sum() > 0  # Something moves.
  again = procgen.generate("bigfish", 3, out, max_frames=12, min_frames=4, venv=VENV,
                           progress=False)
  assert again == pipeline.load_metadata(out)  # Reused.

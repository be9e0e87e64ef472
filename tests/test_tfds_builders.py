"""Datasets by name: TFDS builders (ArrayRecord, no TensorFlow) and --config.data.name."""

import os
import subprocess
import sys

import numpy as np
import pytest

from flam_jax.data import multigrid, pipeline, records, tfds_builders
from flam_jax.errors import ConfigError, DataError
from tests import video_fixtures as vf

NAME = "flam_multigrid/agents2_r16_g4_l6_e10"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("tfds"))
  tfds_builders.prepare("flam_multigrid/agents2", out, resolution=16, grid_size=4,
                        episode_length=6, episodes=10)
  return out


def test_data_source_by_name_without_this_module_or_tensorflow(tfds_dir):
  code = (
      "import sys, tensorflow_datasets as tfds, grain\n"
      f"ds = tfds.data_source({NAME!r}, data_dir={tfds_dir!r})\n"
      "assert 'tensorflow' not in sys.modules and 'flam_jax' not in sys.modules\n"
      "b = next(iter(grain.MapDataset.source(ds['train']).batch(2)))\n"
      "print(len(ds['train']), len(ds['validation']), len(ds['test']), b['frames'].shape,"
      " b['actions'].shape)\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        check=False, cwd="/")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split()[:3] == ["8", "1", "1"]
  assert "(2, 6, 16, 16, 3) (2, 5, 2)" in proc.stdout


def test_examples_are_the_generated_episodes(tfds_dir):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  test = tfds.data_source(NAME, data_dir=tfds_dir)["test"][0]
  world = multigrid.MultigridConfig(grid_size=4, resolution=16, num_agents=2, episode_length=6,
                                    wall_density=0.0)
  want = multigrid.generate_episode(world, multigrid.episode_rng(0, 9))  # Test = episode 9.
  for key in multigrid.FIELDS:
    np.testing.assert_array_equal(test[key], want[key])


def test_config_data_name_imports_once_and_trains_input(tfds_dir, tmp_path):
  from flam_jax import train  # pylint: disable=g-import-not-at-top
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  config = quickstart.get_config()
  config.data.name, config.data.tfds_data_dir, config.data.image_size = NAME, tfds_dir, 16
  train.ensure_dataset(config, str(tmp_path))
  assert config.data.dir == os.path.join(str(tmp_path), "data")
  meta = pipeline.load_metadata(config.data.dir)
  assert meta["ground_truth"] == ["actions", "masks", "positions"]
  assert {s: meta["splits"][s]["num_episodes"] for s in records.SPLITS} == dict(
      train=8, validation=1, test=1)
  mtime = os.path.getmtime(os.path.join(config.data.dir, "metadata.json"))
  config.data.dir = ""
  train.ensure_dataset(config, str(tmp_path))  # Reused.
  assert os.path.getmtime(os.path.join(config.data.dir, "metadata.json")) == mtime
  config.data.name = "flam_video/nothing_here"
  with pytest.raises(DataError, match="not found"):
    train.ensure_dataset(config, str(tmp_path / "other"))


def test_imported_dataset_by_name(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  src, data = str(tmp_path / "npz"), str(tmp_path / "data")
  written = vf.write_npz_episodes(src, [5, 7, 6], size=(16, 16))
  from flam_jax.data import import_video  # pylint: disable=g-import-not-at-top
  import_video.import_dataset(src, "npz", data, image_size=0, progress=False)
  tfds_builders.prepare("flam_video/mine", str(tmp_path / "tfds"), src=data)
  ds = tfds.data_source("flam_video/mine", data_dir=str(tmp_path / "tfds"))
  assert {k: len(v) for k, v in ds.items()} == dict(train=1, validation=1, test=1)
  ep = ds["test"][0]
  np.testing.assert_array_equal(ep["frames"], written[2]["frames"])
  np.testing.assert_array_equal(ep["masks"], written[2]["masks"])


def test_bad_names():
  for name in ("flam_multigrid/four", "other/agents2", "flam_video/x"):
    with pytest.raises(ConfigError):
      tfds_builders.prepare(name, "/tmp/unused")

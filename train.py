"""flam_jax's single entry point: `python train.py --config=... --workdir=...` (= flam-train).

The code is flam_jax/train.py; this file keeps the README's command working from a
checkout without installing the package.
"""

from flam_jax.train import ensure_dataset, make_stage, run, run_cli, run_stage, write_dataset  # pylint: disable=unused-import

if __name__ == "__main__":
  run_cli()

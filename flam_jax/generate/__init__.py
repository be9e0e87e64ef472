"""Controllable generation: actions (`actions.py`), pictures (`pictures.py`), start frames
(`inputs.py`) and the flam-generate command line (`cli.py`; `python -m flam_jax.generate`).
The rollouts themselves are `flam_jax.lib.rollout`."""

"""flam_jax: a JAX/Flax reimplementation of FLAM, the Factored Latent Action Model."""

__version__ = "0.1.0"

"""python -m flam_jax.generate: the flam-generate command line."""

from flam_jax.generate import cli

if __name__ == "__main__":
  cli.run()

"""Autoregressive aggregator decoding: frames/s with and without the key/value cache.

    python benchmarks/bench_rollout.py --configs=quickstart,multigrid --batch_size=8

Decodes the N patch tokens of `batch_size` next frames from predicted slots with the
classification aggregator (greedy, lax.scan over patches): with the KV cache each step
runs one token through the transformer; without it each step re-runs the causal
transformer over the whole N-token buffer. Random parameters: speed does not depend
on what the model learned.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
from absl import app, flags

from configs import multigrid as multigrid_config
from configs import quickstart as quickstart_config
from flam_jax.lib.config_utils import stage_config
from flam_jax.modules.aggregator import ClassificationAggregator
from flam_jax.modules import fsq

_CONFIGS = flags.DEFINE_list("configs", ["quickstart", "multigrid"], "Configs to benchmark.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Frames decoded per call.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls.")
CONFIG_MODULES = {"quickstart": quickstart_config, "multigrid": multigrid_config}


def time_decode(model, params, slots, use_cache):
  fn = jax.jit(lambda p, s: model.apply(p, s, use_cache=use_cache, method=model.decode)[0])
  start = time.perf_counter()
  fn(params, slots).block_until_ready()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(_REPEATS.value):
    out = fn(params, slots)
  out.block_until_ready()
  return compile_s, _REPEATS.value * slots.shape[0] / (time.perf_counter() - start)


def main(argv):
  del argv
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
  print("| config | patches N | d_model | frames/s cached | frames/s uncached | speed-up |")
  print("|---|---|---|---|---|---|")
  for name in _CONFIGS.value:
    config = stage_config(CONFIG_MODULES[name].get_config("flam"), "lam")
    lam = config.lam
    n = (config.data.image_size // 2 ** len(config.tokenizer.encoder_channels)) ** 2
    model = ClassificationAggregator(
        num_patches=n, subtoken_sizes=tuple(lam.subtoken_sizes), d_model=lam.d_model,
        num_blocks=lam.aggregator_blocks, num_heads=lam.num_heads,
        codebook_size=fsq.codebook_size(config.tokenizer.levels))
    slots = jax.random.normal(jax.random.PRNGKey(0), (_BATCH.value, lam.num_slots, lam.d_model))
    params = jax.jit(model.init)(jax.random.PRNGKey(1), slots, jnp.zeros((_BATCH.value, n), jnp.int32))
    _, cached = time_decode(model, params, slots, True)
    _, uncached = time_decode(model, params, slots, False)
    print(f"| {name} | {n} | {lam.d_model} | {cached:.1f} | {uncached:.2f} | {cached / uncached:.1f}x |",
          flush=True)


if __name__ == "__main__":
  app.run(main)

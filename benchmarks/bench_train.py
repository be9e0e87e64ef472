"""Training-step and input-pipeline throughput, compile time, memory and FLOP utilisation.

    python benchmarks/bench_train.py --configs=quickstart,multigrid --stages=tokenizer

For each (config, stage): compiles the real jit-compiled, sharded, donated train step,
times `--steps` steps on synthetic batches of the config's shapes, and reports
  - train frames/s (frames = batch windows x window length),
  - compile time, peak memory (device allocator if it reports one, else host RSS),
  - achieved FLOP/s = XLA cost-analysis FLOPs per step / step time, divided by the
    FLOP/s of a large matmul measured in the same run on the same device (utilisation),
  - input-pipeline frames/s from grain over a generated dataset of the config's shapes.
Figures are measured, never asserted. `--batch_size` overrides the config (useful on CPU).

`--memory_only` compiles the step without running it and reports XLA's buffer assignment
(temporaries and arguments, `compiled.memory_analysis()`): how a config at the paper's
size fits a device, checked from a CPU host (XLA:GPU assigns buffers differently; treat the
CPU figure as an estimate).
"""

import json
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from configs import multigrid as multigrid_config
from configs import quickstart as quickstart_config
from flam_jax.data import multigrid, pipeline, tokens
from flam_jax.lib import optim, sharding, trainer
from flam_jax.lib.config_utils import stage_config
from flam_jax.modules.tokenizer import Tokenizer
from flam_jax.stages.lam import LatentActionStage
from flam_jax.lib.models import make_tokenizer
from flam_jax.stages.tokenizer import TokenizerStage

_CONFIGS = flags.DEFINE_list("configs", ["quickstart", "multigrid"], "Configs to benchmark.")
_STAGES = flags.DEFINE_list(
    "stages", ["tokenizer", "flam", "lam"],
    "What to benchmark: `tokenizer`, or a latent action variant (flam, lam, oc_lam, wm, "
    "flam_gaussian, flam_regression) trained as the lam stage.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed train steps (after one warm-up step).")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Override the config's global batch size (0: keep).")
_DTYPE = flags.DEFINE_string("compute_dtype", "", "Override config.compute_dtype.")
_PIPELINE_BATCHES = flags.DEFINE_integer("pipeline_batches", 20, "Batches timed in the pipeline.")
_OUT = flags.DEFINE_string("out", "", "Optional JSON file for the results.")
_REMAT = flags.DEFINE_enum("remat", "config", ["config", "true", "false"],
                           "Override config.lam.remat (latent action stages).")
_MEMORY_ONLY = flags.DEFINE_bool("memory_only", False,
                                 "Compile only; report XLA's temporary and argument bytes.")

CONFIG_MODULES = {"quickstart": quickstart_config, "multigrid": multigrid_config}


def matmul_peak_flops(n: int = 4096, dtype=jnp.float32, repeats: int = 5) -> float:
  """FLOP/s of an n x n matmul on the default device: the utilisation denominator."""
  if jax.default_backend() == "cpu":
    n = 2048
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    out = f(a)
  out.block_until_ready()
  return 2 * n**3 * repeats / (time.perf_counter() - start)


def peak_memory() -> str:
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return f"{stats['peak_bytes_in_use'] / 2**30:.2f} GiB device"
  return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB host RSS"


def make_stage(config):
  """The stage; a latent action stage gets a randomly initialised frozen tokenizer."""
  if config.stage == "tokenizer":
    return TokenizerStage(config)
  tokenizer = make_tokenizer(config)
  s = config.data.image_size
  params = jax.jit(tokenizer.init)(jax.random.PRNGKey(0), jnp.zeros((1, s, s, 3)))["params"]
  grid = (s // tokenizer.stride,) * 2
  LatentActionStage.check_config(config)
  return LatentActionStage(config, tokenizer, params, grid=grid,
                           num_agents=config.data.generate.num_agents)


def synthetic_batch(config, stage):
  rng = np.random.default_rng(0)
  b, t, s = config.batch_size, config.data.window_length, config.data.image_size
  codes = int(np.prod(config.tokenizer.levels))
  full = dict(frames=rng.integers(0, 256, (b, t, s, s, 3), dtype=np.uint8),
              actions=rng.integers(0, 4, (b, t - 1, config.data.generate.num_agents),
                                   dtype=np.int32))
  if config.stage == "lam":
    full["tokens"] = rng.integers(0, codes, (b, t) + stage.grid, dtype=np.int32)
  return {k: full[k] for k in stage.data_fields}


def bench_step(config) -> dict:
  stage = make_stage(config)
  mesh = sharding.make_mesh(config.mesh.model_axis_size)
  tx = optim.make_optimizer(config.optim, config.num_train_steps)
  batch_np = synthetic_batch(config, stage)
  state = trainer.create_train_state(stage, config, batch_np, mesh, tx)
  batch = sharding.to_global_batch(batch_np, mesh)
  step = trainer.jit_train_step(stage, config, mesh, tx)

  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  memory = compiled.memory_analysis()
  xla_memory = dict(temp_gib=memory.temp_size_in_bytes / 2**30,
                    argument_gib=memory.argument_size_in_bytes / 2**30) if memory else {}
  if _MEMORY_ONLY.value:
    return stage, dict(compile_s=compile_s, flops_per_step=flops, **xla_memory)

  state, metrics = compiled(state, batch)  # Warm-up.
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - start) / _STEPS.value
  frames = config.batch_size * config.data.window_length
  return stage, dict(compile_s=compile_s, step_ms=1e3 * step_s, train_frames_per_s=frames / step_s,
              flops_per_step=flops, achieved_flops_per_s=flops / step_s,
              peak_memory=peak_memory(), loss=float(metrics["loss"]), **xla_memory)


def bench_pipeline(config, stage) -> float:
  """Frames/s of the grain pipeline the stage trains from (frames, or cached tokens)."""
  gen = config.data.generate
  with tempfile.TemporaryDirectory() as tmp:
    episodes = max(10, (config.batch_size * 3) // max(gen.episode_length - config.data.window_length + 1, 1) + 10)
    multigrid.write_dataset(
        tmp, multigrid.MultigridConfig(
            grid_size=gen.grid_size, resolution=config.data.image_size, num_agents=gen.num_agents,
            episode_length=gen.episode_length, sticky_prob=gen.sticky_prob,
            wall_density=gen.wall_density),
        num_episodes=episodes, seed=0, progress=False)
    data_dir = tmp
    if config.stage == "lam":
      data_dir = os.path.join(tmp, "tokens")
      encode = jax.jit(lambda f: stage.tokenizer.apply(
          {"params": stage.tokenizer_params}, f / 255.0, method=Tokenizer.encode)[1])
      tokens.cache_tokens(tmp, data_dir, encode, tag={}, progress=False)
    it = pipeline.make_iterator(
        data_dir, "train", window_length=config.data.window_length,
        batch_size=config.batch_size, seed=0, num_workers=config.data.num_workers,
        prefetch_buffer_size=config.data.prefetch_buffer_size, fields=stage.data_fields)
    next(it)  # Start-up (worker processes) is not throughput.
    fps = pipeline.measure_throughput(it, _PIPELINE_BATCHES.value)
    del it
    return fps


def main(argv):
  del argv
  peak = matmul_peak_flops()
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()}), "
        f"jax {jax.__version__}; matmul peak {peak / 1e9:.1f} GFLOP/s", flush=True)
  results = []
  for name in _CONFIGS.value:
    for stage_name in _STAGES.value:
      config = stage_config(CONFIG_MODULES[name].get_config(stage_name),
                            "tokenizer" if stage_name == "tokenizer" else "lam")
      if _BATCH.value:
        config.batch_size = _BATCH.value
      if _DTYPE.value:
        config.compute_dtype = _DTYPE.value
      if _REMAT.value != "config":
        config.lam.remat = _REMAT.value == "true"
      row = dict(config=name, stage=stage_name, batch_size=config.batch_size,
                 image_size=config.data.image_size, window=config.data.window_length,
                 compute_dtype=config.compute_dtype,
                 remat=bool(config.lam.remat) and stage_name != "tokenizer")
      stage, figures = bench_step(config)
      row.update(figures)
      if _MEMORY_ONLY.value:
        results.append(row)
        print(json.dumps(row), flush=True)
        continue
      row["utilisation"] = row["achieved_flops_per_s"] / peak
      row["pipeline_frames_per_s"] = bench_pipeline(config, stage)
      row["pipeline_over_train"] = row["pipeline_frames_per_s"] / row["train_frames_per_s"]
      results.append(row)
      print(json.dumps(row), flush=True)
  if _MEMORY_ONLY.value:
    print("\n| config | stage | batch | dtype | remat | XLA temporaries | arguments | GFLOP/step |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
      print(f"| {r['config']} | {r['stage']} | {r['batch_size']} | {r['compute_dtype']} | "
            f"{r['remat']} | {r.get('temp_gib', float('nan')):.2f} GiB | "
            f"{r.get('argument_gib', float('nan')):.2f} GiB | {r['flops_per_step'] / 1e9:.0f} |")
  else:
    _print_timing_table(results)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(dict(matmul_peak_flops=peak, results=results), f, indent=2)


def _print_timing_table(results):
  print("\n| config | stage | batch | train frames/s | pipeline frames/s | pipeline/train | "
        "compile s | GFLOP/step | utilisation | peak memory |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in results:
    print(f"| {r['config']} | {r['stage']} | {r['batch_size']} | {r['train_frames_per_s']:.1f} | "
          f"{r['pipeline_frames_per_s']:.0f} | {r['pipeline_over_train']:.1f}x | {r['compile_s']:.1f} | "
          f"{r['flops_per_step'] / 1e9:.2f} | {100 * r['utilisation']:.1f}% | {r['peak_memory']} |")


if __name__ == "__main__":
  app.run(main)

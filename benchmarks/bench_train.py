"""Training-step throughput, FLOP utilisation, memory and the PyTorch peer, for one config.

    python benchmarks/bench_train.py --config=configs/multigrid.py:flam --config.batch_size=8
    python benchmarks/bench_train.py --config=configs/multigrid.py:tokenizer \
        --config.batch_size=8 --config.tokenizer.encoder_channels='(32,64,128)' --peer --rounds=3
    python benchmarks/bench_train.py --config=configs/multigrid.py:lam --config.batch_size=64 \
        --memory_only

`--config` and `--config.key=value` work as in train.py (a config with several stages needs
`--config.stage=tokenizer` or `lam`). The benchmark compiles the real jit-compiled, sharded,
donated train step, times `--steps` steps on a fixed synthetic batch of the config's shapes
(each step synced, median reported, like the peer), and reports:
  - seconds per step, train frames/s (windows x window length) and decoded frames/s (frames
    the step reconstructs: the batch for the tokenizer; B x P x (T - P) predicted frames for a
    latent action stage);
  - FLOPs per step counted from the jaxpr (`flam_jax/lib/flops.py`: scan-aware; matmul, conv
    and attention, the PyTorch peer's definition) next to XLA's cost analysis (which counts a
    scan body once), and utilisation = achieved FLOP/s / the FLOP/s of a bare 2048^2 matmul in
    the compute dtype measured in the same process before and after the timed steps;
  - compile time, XLA's temporary and argument bytes (`compiled.memory_analysis()`), per-device
    parameter and optimizer-state bytes (FSDP shards them over the mesh's parameter axis) and
    peak memory (device allocator if it reports one, else host RSS);
  - `--pipeline_batches > 0`: frames/s of the grain pipeline over a generated dataset.
`--peer` runs the PyTorch peer (`../shared/peers/torch_flam/bench.py` by default) at the
matched config as a subprocess with `--peer_python`, alternating with the flam_jax timing for
`--rounds` rounds, and prints flam_jax's speed relative to the peer per decoded frame (> 1:
flam_jax faster). `--memory_only` compiles without running. `--profile_dir=DIR` also traces
3 steps with jax.profiler into DIR (TensorBoard's profile tab reads it) and prints the XLA
op kinds that take the most time (`flam_jax/lib/profiling.py`). Figures are measured, never
asserted.
"""

import contextlib
import fcntl
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from flam_jax.cli import parse_flags
from flam_jax.data import multigrid, pipeline
from flam_jax.errors import ConfigError, FlamError
from flam_jax.lib import flops, loading, optim, profiling, sharding, trainer
from flam_jax.lib.config_utils import stage_config
from flam_jax.lib.models import make_tokenizer
from flam_jax.modules import transformer
from flam_jax.modules.world_model import training_pairs
from flam_jax.stages.lam import LatentActionStage
from flam_jax.stages.tokenizer import TokenizerStage

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to an ml_collections config file, optionally with :variant.",
    lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 5, "Timed train steps per round (after one warm-up step).")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "Timing rounds (alternating with the peer if --peer).")
_PIPELINE_BATCHES = flags.DEFINE_integer(
    "pipeline_batches", 0, "Batches timed in the grain pipeline (0: skip).")
_MEMORY_ONLY = flags.DEFINE_bool("memory_only", False,
                                 "Compile only; report XLA's temporary and argument bytes.")
_OUT = flags.DEFINE_string("out", "", "Optional JSON file for the results.")
_PEER = flags.DEFINE_bool("peer", False, "Also time the PyTorch peer at the matched config.")
_PEER_DIR = flags.DEFINE_string(
    "peer_dir", os.path.join(ROOT, "..", "shared", "peers", "torch_flam"),
    "Folder of the PyTorch peer (bench.py, models.py).")
_PEER_PYTHON = flags.DEFINE_string(
    "peer_python", os.path.join(ROOT, "..", "torch-venv", "bin", "python"),
    "A python with torch and numpy for the peer.")
_PEER_STEPS = flags.DEFINE_integer("peer_steps", 0, "Timed peer steps (0: --steps).")
_GPU_ATTENTION = flags.DEFINE_enum(
    "gpu_attention", transformer.GPU_ATTENTION, ["cudnn", "xla"],
    "Attention implementation on a GPU where cuDNN applies (flam_jax/modules/transformer.py).")
_PROFILE_DIR = flags.DEFINE_string(
    "profile_dir", "", "Also trace 3 steps with jax.profiler into this folder and print the "
    "XLA op kinds that take the most time.")
_TIMING_LOCK = flags.DEFINE_string(
    "timing_lock", "",
    "A lock file shared by benchmarks run side by side on one device: each compiles at once "
    "and holds the lock only while it times (matmul reference, steps, peer), so that "
    "compilations overlap and timings do not.")


def matmul_flops_per_s(dtype, n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of an n x n matmul on the default device (median of `repeats`): the reference."""
  if jax.default_backend() != "cpu":
    n, repeats = 8192, 20
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    f(a).block_until_ready()
    rates.append(2 * n**3 / (time.perf_counter() - start))
  return statistics.median(rates)


def peak_memory() -> str:
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return f"{stats['peak_bytes_in_use'] / 2**30:.2f} GiB device"
  return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB host RSS"


@contextlib.contextmanager
def timing_lock(path: str):
  """Holds an exclusive lock on `path` (no-op for ""): one benchmark times at a time."""
  if not path:
    yield
    return
  with open(path, "a") as f:
    start = time.perf_counter()
    fcntl.flock(f, fcntl.LOCK_EX)
    print(f"timing lock taken after {time.perf_counter() - start:.1f} s", flush=True)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


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


def decoded_frames_per_step(config) -> int:
  """Frames the step reconstructs: the batch (tokenizer), or the rollout targets of B windows
  (B x P x (T - P) with lam.rollout_starts="full"; world_model.training_pairs)."""
  if config.stage == "tokenizer":
    return config.batch_size * config.data.window_length
  starts = config.lam.get("rollout_starts", "full")
  rows, _ = training_pairs(config.data.window_length, config.lam.prediction_steps, starts)
  return config.batch_size * len(rows)


class StepTimer:
  """The compiled train step of `config` on a fixed synthetic batch, timed on demand."""

  def __init__(self, config):
    self.config = config
    self.stage = make_stage(config)
    mesh = sharding.make_mesh(config.mesh.model_axis_size)
    tx = optim.make_optimizer(config.optim, config.num_train_steps)
    batch_np = synthetic_batch(config, self.stage)
    self.state = trainer.create_train_state(self.stage, config, batch_np, mesh, tx)
    self.batch = sharding.to_global_batch(batch_np, mesh)
    step = trainer.jit_train_step(self.stage, config, mesh, tx)
    self.flops = flops.count(step, self.state, self.batch)
    start = time.perf_counter()
    self.compiled = step.lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - start

  def figures(self) -> dict:
    cost = self.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    memory = self.compiled.memory_analysis()
    out = dict(compile_s=self.compile_s, gflops_per_step=self.flops.total / 1e9,
               gflops_matmul=self.flops.matmul / 1e9, gflops_conv=self.flops.conv / 1e9,
               gflops_xla_cost_analysis=float(cost.get("flops", np.nan)) / 1e9 if cost else np.nan,
               params_mib_per_device=sharding.bytes_per_device(self.state.params) / 2**20,
               opt_state_mib_per_device=sharding.bytes_per_device(self.state.opt_state) / 2**20)
    if self.flops.while_loops:
      out["while_loops_counted_once"] = self.flops.while_loops
    if memory:
      out.update(xla_temp_gib=memory.temp_size_in_bytes / 2**30,
                 xla_argument_gib=memory.argument_size_in_bytes / 2**30)
    return out

  def time_steps(self, num_steps: int) -> list:
    """Seconds of each of `num_steps` steps after one warm-up step (each step synced)."""
    self.state, metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(num_steps):
      start = time.perf_counter()
      self.state, metrics = self.compiled(self.state, self.batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
    self.loss = float(metrics["loss"])
    return times


def bench_pipeline(config, stage, num_batches: int) -> float:
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
      loading.cache_frozen_tokens(stage.tokenizer, stage.tokenizer_params, {}, tmp, data_dir,
                                  progress=False)
    it = pipeline.make_iterator(
        data_dir, "train", window_length=config.data.window_length,
        batch_size=config.batch_size, seed=0, num_workers=config.data.num_workers,
        prefetch_buffer_size=config.data.prefetch_buffer_size, fields=stage.data_fields)
    next(it)  # Start-up (worker processes) is not throughput.
    fps = pipeline.measure_throughput(it, num_batches)
    del it
    return fps


def _csv(values) -> str:
  return ",".join(str(int(v)) for v in values)


def peer_args(config, num_steps: int) -> list:
  """bench.py arguments of the PyTorch peer at `config`'s sizes; ConfigError where it differs."""
  s = config.data.image_size
  args = ["--res", str(s), "--batch", str(config.batch_size), "--steps", str(num_steps),
          "--warmup", "1", "--levels", _csv(config.tokenizer.levels),
          "--code-dim", str(config.tokenizer.codebook_dim)]
  if config.compute_dtype == "bfloat16":
    args.append("--bf16")
  if jax.default_backend() == "gpu":
    args += ["--device", "cuda"]
  if config.stage == "tokenizer":
    return ["--stage", "tokenizer", "--channels", _csv(config.tokenizer.encoder_channels)] + args
  lam = config.lam
  if lam.variant not in ("flam", "lam") or lam.aggregator_mode != "classification" or (
      lam.action_kind != "fsq"):
    raise ConfigError(f"the PyTorch peer has flam and lam with FSQ actions and a classification "
                      f"aggregator only, not config.lam.variant={lam.variant!r} "
                      f"({lam.action_kind}, {lam.aggregator_mode}); drop --peer")
  if s // 2 ** len(config.tokenizer.encoder_channels) != s // 8:
    raise ConfigError("the PyTorch peer's tokenizer has stride 8; set "
                      "config.tokenizer.encoder_channels to 3 stages or drop --peer")
  if lam.aggregator_blocks != lam.num_blocks:
    raise ConfigError(f"the PyTorch peer uses num_blocks for the aggregator too; set "
                      f"config.lam.aggregator_blocks={lam.num_blocks} or drop --peer")
  levels = lam.action_levels if lam.variant == "flam" else lam.scene_action_levels
  return ["--stage", lam.variant, "--T", str(config.data.window_length),
          "--K", str(lam.num_slots), "--d-model", str(lam.d_model),
          "--blocks", str(lam.num_blocks), "--heads", str(lam.num_heads),
          "--action-levels", _csv(levels), "--subtokens", _csv(lam.subtoken_sizes),
          "--pred-steps", str(lam.prediction_steps), "--slot-iters", str(lam.slot_iterations)
          ] + args


def run_peer(config, num_steps: int) -> dict:
  """One run of the peer's bench.py; its JSON line plus decoded frames per step."""
  # Absolute: the peer runs with its own folder as the working directory.
  python, bench = _PEER_PYTHON.value, os.path.abspath(os.path.join(_PEER_DIR.value, "bench.py"))
  for path, flag in ((python, "--peer_python"), (bench, "--peer_dir")):
    if not os.path.exists(path):
      raise ConfigError(f"{path} does not exist; set {flag} (the peer needs a python with torch "
                        "and numpy: python3 -m venv V && V/bin/pip install torch numpy)")
  cmd = [python, bench] + peer_args(config, num_steps)
  out = subprocess.run(cmd, cwd=_PEER_DIR.value, capture_output=True, text=True)
  lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
  if out.returncode or not lines:
    raise FlamError(f"the PyTorch peer failed ({' '.join(cmd)}): {out.stderr.strip()[-500:]}")
  result = json.loads(lines[-1])
  per_seq = result["config"].get("decoded_frames_per_seq", 1)
  result["decoded_frames_per_step"] = config.batch_size * per_seq
  return result


def print_op_times(timer: "StepTimer", trace_dir: str, step_s: float, top: int = 15) -> None:
  """The op kinds that take the most time in 3 traced steps, in ms per step."""
  times = profiling.trace_op_times(lambda: timer.time_steps(0), 3, trace_dir)
  total = sum(times.values())
  print(f"\nXLA ops, {1e3 * total:.1f} ms per step in all ({1e3 * step_s:.1f} ms wall; on a CPU "
        f"summed over threads), trace in {trace_dir}:")
  for kind, seconds in sorted(times.items(), key=lambda kv: -kv[1])[:top]:
    print(f"  {1e3 * seconds:8.1f} ms  {100 * seconds / total:5.1f}%  {kind}")


def main(argv):
  del argv
  config = _CONFIG.value
  if "," in config.stage:
    raise ConfigError(f"config.stage={config.stage!r} lists several stages; benchmark one: "
                      "--config.stage=tokenizer or --config.stage=lam")
  config = stage_config(config, config.stage)
  if _PROFILE_DIR.value:  # Read when the backend starts, below: XLA:CPU then records its ops.
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {profiling.CPU_TRACE_FLAG}"
  transformer.GPU_ATTENTION = _GPU_ATTENTION.value
  dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()}), "
        f"jax {jax.__version__}", flush=True)
  timer = StepTimer(config)
  row = dict(stage=config.stage, variant=config.lam.variant if config.stage == "lam" else "",
             gpu_attention=_GPU_ATTENTION.value, batch_size=config.batch_size,
             image_size=config.data.image_size,
             window=config.data.window_length, compute_dtype=config.compute_dtype,
             model_axis_size=config.mesh.model_axis_size, devices=jax.device_count(),
             decoded_frames_per_step=decoded_frames_per_step(config), **timer.figures())
  print(json.dumps(row), flush=True)
  _write(row)  # The compile and memory figures stand even if the timing is cut short.
  if _MEMORY_ONLY.value:
    return

  with timing_lock(_TIMING_LOCK.value):
    ref_before = matmul_flops_per_s(dtype)
    print(f"{jnp.dtype(dtype).name} matmul reference {ref_before / 1e9:.1f} GFLOP/s", flush=True)
    rounds = []
    for r in range(_ROUNDS.value):
      times = timer.time_steps(_STEPS.value)
      jax_s = statistics.median(times)
      entry = dict(round=r, jax_s_per_step=jax_s, jax_s_min=min(times), jax_s_max=max(times))
      if _PEER.value:
        try:
          peer = run_peer(config, _PEER_STEPS.value or _STEPS.value)
        except FlamError as e:  # The flam_jax figures stand without the peer's.
          print(f"warning: {e}", file=sys.stderr, flush=True)
          entry["peer_error"] = str(e)
        else:
          jax_fps = row["decoded_frames_per_step"] / jax_s
          peer_fps = peer["decoded_frames_per_step"] / peer["sec_per_step"]
          entry.update(peer_s_per_step=peer["sec_per_step"], peer_gflops=peer["gflops_per_step"],
                       peer_utilisation=peer["utilisation"],
                       peer_matmul_gflops=peer["matmul_gflops"],
                       peer_decoded_frames_per_step=peer["decoded_frames_per_step"],
                       peer_loss_first=peer["loss_first"], peer_loss_last=peer["loss_last"],
                       peer_peak_mib=peer.get("peak_cuda_mib", np.nan),
                       jax_over_peer_per_decoded_frame=jax_fps / peer_fps)
      print(json.dumps(entry), flush=True)
      rounds.append(entry)
    ref = (ref_before + matmul_flops_per_s(dtype)) / 2
  step_s = statistics.median(e["jax_s_per_step"] for e in rounds)
  frames = config.batch_size * config.data.window_length
  row.update(s_per_step=step_s, train_frames_per_s=frames / step_s,
             decoded_frames_per_s=row["decoded_frames_per_step"] / step_s,
             achieved_gflops=row["gflops_per_step"] / step_s, matmul_gflops=ref / 1e9,
             utilisation=row["gflops_per_step"] * 1e9 / step_s / ref, loss=timer.loss,
             peak_memory=peak_memory(), rounds=rounds)
  ratios = [e["jax_over_peer_per_decoded_frame"] for e in rounds
            if "jax_over_peer_per_decoded_frame" in e]
  if ratios:
    row["jax_over_peer_per_decoded_frame"] = statistics.median(ratios)
  if _PROFILE_DIR.value:
    print_op_times(timer, _PROFILE_DIR.value, step_s)
  if _PIPELINE_BATCHES.value:
    row["pipeline_frames_per_s"] = bench_pipeline(config, timer.stage, _PIPELINE_BATCHES.value)
  print(json.dumps({k: v for k, v in row.items() if k != "rounds"}), flush=True)
  print(f"\n{config.stage}{'/' + row['variant'] if row['variant'] else ''} batch "
        f"{config.batch_size}: {step_s:.3f} s/step, {row['decoded_frames_per_s']:.2f} decoded "
        f"frames/s, {row['gflops_per_step']:.1f} GFLOP/step (XLA cost analysis "
        f"{row['gflops_xla_cost_analysis']:.1f}), utilisation {100 * row['utilisation']:.1f}% "
        f"of a {ref / 1e9:.0f} GFLOP/s matmul")
  if ratios:
    print("flam_jax vs PyTorch per decoded frame, by round: "
          + ", ".join(f"{x:.2f}x" for x in ratios)
          + f" (median {row['jax_over_peer_per_decoded_frame']:.2f}x; > 1: flam_jax faster)")
  _write(row)


def _write(row):
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(row, f, indent=2)


def _main(argv):
  try:
    main(argv)
  except FlamError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(_main, flags_parser=parse_flags)

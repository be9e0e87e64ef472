"""The training loop shared by every stage: one jit-compiled, sharded, donated step.

A stage (see `flam_jax/stages/`) supplies the model-specific parts:
  name, data_fields, checkpoint_keys, validate(metadata),
  init(rng, batch) -> params, loss(params, batch, rng) -> (loss, metrics),
  visualize(params, batch) -> {name: uint8 image},
  and optionally diagnostics(params, batch, rng) -> metrics, run at logging steps only.
This module owns everything else: data iterator, mesh, optimizer, orbax checkpoints
(resume by workdir), metrics, pictures, progress bar and preemption.
"""

import os
import signal
import sys
import time
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from ml_collections import ConfigDict
from tqdm import tqdm

from flam_jax.data import pipeline
from flam_jax.errors import TrainingError
from flam_jax.lib import checkpointing, images, optim, sharding
from flam_jax.lib.train_state import TrainState
from flam_jax.lib.writer import MetricWriter


class _PreemptionFlag:
  """Set by SIGTERM (a preempted TPU/GPU host); the loop checkpoints and exits."""

  def __init__(self):
    self.triggered = False
    self._previous = None

  def __enter__(self):
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.triggered = True

  def __exit__(self, *exc):
    signal.signal(signal.SIGTERM, self._previous)


# In skip mode, this many non-finite steps in a row stop the run all the same.
MAX_CONSECUTIVE_SKIPPED_STEPS = 50


def make_train_step(stage, tx: optax.GradientTransformation, base_rng: jax.Array,
                    skip_nonfinite: bool = False,
                    shard: Callable = lambda tree: tree) -> Callable:
  """(state, batch) -> (state, metrics): loss, gradients, clipped AdamW update.

  `shard` places the gradients and the new state (a sharding constraint under jit).
  metrics["nonfinite"] is 1 when the loss or the gradient norm is NaN/Inf. With
  `skip_nonfinite` such a step leaves parameters and optimizer state unchanged (the step
  counter still advances, so the data order and random streams stay those of the run).
  """

  def train_step(state: TrainState, batch: Dict[str, jax.Array]):
    rng = jax.random.fold_in(base_rng, state.step)
    (loss, metrics), grads = jax.value_and_grad(stage.loss, has_aux=True)(state.params, batch, rng)
    grads = shard(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if skip_nonfinite:
      keep = lambda new, old: jnp.where(finite, new, old)
      params = jax.tree.map(keep, params, state.params)
      opt_state = jax.tree.map(keep, opt_state, state.opt_state)
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm,
                   nonfinite=1.0 - finite.astype(jnp.float32))
    return shard(TrainState(step=state.step + 1, params=params, opt_state=opt_state)), metrics

  return train_step


def dummy_batch(metadata: dict, config: ConfigDict, fields, batch_size: int = 1) -> Dict[str, np.ndarray]:
  """Zeros shaped like one pipeline batch (from the dataset metadata), for initialisation."""
  window = config.data.window_length
  out = {}
  for field in metadata["fields"]:
    if field["name"] in fields:
      # Episode arrays lead with time: L frames, or L-1 transitions for actions.
      time_len = window - 1 if field["name"] == "actions" else window
      out[field["name"]] = np.zeros((batch_size, time_len) + tuple(field["shape"][1:]),
                                    field["dtype"])
  return out


def create_train_state(stage, config: ConfigDict, example_batch, mesh, tx) -> TrainState:
  """Initialises params and optimizer state directly into their shardings (FSDP over the
  mesh's model axis, `sharding.state_sharding`; replicated when it has size 1)."""

  def init(rng):
    params = stage.init(rng, example_batch)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  rng = jax.random.PRNGKey(config.seed)
  shardings = sharding.state_sharding(jax.eval_shape(init, rng), mesh)
  return jax.jit(init, out_shardings=shardings)(rng)


def jit_train_step(stage, config: ConfigDict, mesh, tx) -> Callable:
  """The one compiled step: state in its FSDP sharding (and donated), batch split over the
  devices, metrics replicated. Input shardings come from the arguments (`create_train_state`,
  a restored checkpoint and `sharding.to_global_batch` place them); the new state and the
  gradients are constrained to the state's sharding, so gradients are reduce-scattered."""
  train_step = make_train_step(stage, tx, jax.random.PRNGKey(config.seed + 1),
                               shard=lambda tree: jax.lax.with_sharding_constraint(
                                   tree, sharding.state_sharding(tree, mesh)),
                               skip_nonfinite=bool(config.get("skip_nonfinite_steps", False)))

  def sharded_step(state, batch):
    state, metrics = train_step(state, batch)
    return state, jax.lax.with_sharding_constraint(metrics, sharding.replicated(mesh))

  return jax.jit(sharded_step, donate_argnums=(0,), compiler_options=compiler_options(config))


def compiler_options(config: ConfigDict) -> Optional[Dict[str, str]]:
  """XLA options of the compiled train step on the backend it runs on: on XLA:CPU those of
  `config.cpu_compiler_options.<stage>` (the configs keep the tokenizer's convolutions in
  XLA's own kernels rather than YNNPACK's, benchmarks/RESULTS.md), none elsewhere; an option
  set to "" is left to XLA."""
  options = config.get("cpu_compiler_options", {}).get(config.stage)
  if jax.default_backend() != "cpu" or not options:
    return None
  return {name: value for name, value in options.items() if value != ""} or None


def abstract_like(state: Any) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


class NonFiniteGuard:
  """Watches metrics["nonfinite"] of the steps since the last check (one host sync a check).

  Stop mode raises TrainingError naming the first bad step and metric; skip mode counts
  the skipped steps and stops only after MAX_CONSECUTIVE_SKIPPED_STEPS in a row.
  """

  def __init__(self, skip: bool, checkpoints: str):
    self.skip, self.checkpoints = skip, checkpoints
    self.skipped, self.in_a_row = 0, 0
    self.last_saved: Optional[int] = None
    self._pending = []  # (step, metrics) not checked yet; device arrays.

  def add(self, step: int, metrics) -> None:
    self._pending.append((step, {k: metrics[k] for k in ("nonfinite", "loss", "grad_norm")}))

  def check(self) -> None:
    pending, self._pending = jax.device_get(self._pending), []
    for step, m in pending:
      if not m["nonfinite"]:
        self.in_a_row = 0
        continue
      self.skipped += 1
      self.in_a_row += 1
      if not self.skip or self.in_a_row >= MAX_CONSECUTIVE_SKIPPED_STEPS:
        self._fail(step, m)

  def _fail(self, step: int, m) -> None:
    metric = "loss" if not np.isfinite(m["loss"]) else "grad_norm"
    kept = (f"the latest checkpoint is still step {self.last_saved} in {self.checkpoints}"
            if self.last_saved is not None else "no checkpoint had been saved")
    value = m[metric]
    if self.skip:
      raise TrainingError(
          f"{self.in_a_row} steps in a row up to step {step} had a non-finite {metric} "
          f"({value}); stopped, {kept}; lower --config.optim.learning_rate or check the data")
    raise TrainingError(
        f"step {step} has a non-finite {metric} ({value}); stopped before saving it, {kept}; "
        "lower --config.optim.learning_rate, or set --config.skip_nonfinite_steps=True to skip "
        "such steps")


def check_saved_config(stage, config: ConfigDict, saved_config: dict, where: str,
                       fix: Optional[str] = None) -> None:
  """Raises CheckpointError where a checkpoint's saved config differs from `config` in a key
  the stage (an object or its class) checkpoints: its checkpoint_keys, less the keys it may
  change (checkpoint_ignored_keys), with the value older checkpoints had for newer keys
  (checkpoint_key_defaults)."""
  checkpointing.check_compatible(saved_config, config, stage.checkpoint_keys, where,
                                 ignored=getattr(stage, "checkpoint_ignored_keys", ()),
                                 defaults=getattr(stage, "checkpoint_key_defaults", {}), fix=fix)


def train(stage, config: ConfigDict, stage_dir: str) -> Dict[str, Any]:
  """Trains `stage` for config.num_train_steps, resuming from `stage_dir` if it has checkpoints.

  Returns a summary dict (final step, last metrics, output paths).
  """
  sharding.maybe_initialize_distributed()
  mesh = sharding.make_mesh(config.mesh.model_axis_size)
  is_chief = jax.process_index() == 0
  local_batch_size = sharding.check_batch_size(config.batch_size, mesh)

  data_dir = getattr(stage, "data_dir", config.data.dir)  # The lam stage reads cached tokens.
  metadata = pipeline.load_metadata(data_dir)
  pipeline.validate(metadata, image_size=config.data.image_size,
                    window_length=config.data.window_length)
  stage.validate(metadata)

  tx = optim.make_optimizer(config.optim, config.num_train_steps)
  state = create_train_state(
      stage, config, dummy_batch(metadata, config, stage.data_fields), mesh, tx)
  data_iter = pipeline.make_iterator(
      data_dir, "train", window_length=config.data.window_length,
      batch_size=local_batch_size, seed=config.seed, window_stride=config.data.window_stride,
      num_workers=config.data.num_workers, prefetch_buffer_size=config.data.prefetch_buffer_size,
      fields=stage.data_fields)

  ckpt = checkpointing.Checkpointer(os.path.join(stage_dir, "checkpoints"),
                                    max_to_keep=config.keep_checkpoints)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(abstract_like(state), data_iter, check_config=lambda saved: (
        check_saved_config(stage, config, saved, ckpt.directory)))
    if is_chief:
      print(f"Resumed from {ckpt.directory} at step {int(jax.device_get(state.step))}",
            flush=True)
  start_step = int(jax.device_get(state.step))
  logging.info("mesh %s; per device: %.1f MiB parameters, %.1f MiB optimizer state",
               dict(mesh.shape), sharding.bytes_per_device(state.params) / 2**20,
               sharding.bytes_per_device(state.opt_state) / 2**20)
  try:
    return _train_loop(stage, config, stage_dir, mesh, tx, state, data_iter, ckpt, start_step)
  finally:
    ckpt.wait()  # Finishes (and verifies) the good saves in flight, also when a step failed.
    ckpt.close()


def _train_loop(stage, config, stage_dir, mesh, tx, state, data_iter, ckpt, start_step):
  is_chief = jax.process_index() == 0

  writer = MetricWriter(os.path.join(stage_dir, "tb"), enabled=is_chief)
  train_step = jit_train_step(stage, config, mesh, tx)
  # Replicated output: every process runs it (the batch is global) and can read the result.
  visualize = jax.jit(stage.visualize_arrays, out_shardings=sharding.replicated(mesh))
  diagnostics = (jax.jit(stage.diagnostics, out_shardings=sharding.replicated(mesh))
                 if hasattr(stage, "diagnostics") else None)

  def next_batch():
    local = next(data_iter)
    return sharding.to_global_batch({k: local[k] for k in stage.data_fields}, mesh)

  summary = dict(stage=stage.name, stage_dir=stage_dir, checkpoints=ckpt.directory,
                 tensorboard=writer.logdir if is_chief else None, images=[])
  pending_metrics = []
  frames_per_example = config.data.window_length
  last_log_time, last_log_step = time.time(), start_step
  step = start_step
  last_metrics: Dict[str, float] = {}
  preempted = False
  guard = NonFiniteGuard(bool(config.get("skip_nonfinite_steps", False)), ckpt.directory)
  guard.last_saved = ckpt.latest_step()

  with _PreemptionFlag() as sigterm, tqdm(
      total=config.num_train_steps, initial=start_step, desc=f"train {stage.name}",
      disable=not is_chief or not config.progress_bar, dynamic_ncols=True, file=sys.stdout) as bar:
    while step < config.num_train_steps:
      batch = next_batch()
      state, metrics = train_step(state, batch)
      pending_metrics.append(metrics)  # Device arrays: no host sync until logging.
      step += 1
      guard.add(step, metrics)
      bar.update(1)
      if step == start_step + 1:
        # One sync after the first step, so throughput figures exclude compilation.
        jax.block_until_ready(metrics)
        last_log_time, last_log_step = time.time(), start_step + 1

      if step % config.log_every_steps == 0 or step == config.num_train_steps:
        guard.check()
        stacked = jax.device_get(pending_metrics)
        pending_metrics = []
        last_metrics = {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]}
        last_metrics["skipped_steps"] = float(guard.skipped)
        if diagnostics is not None:  # Extra forward passes on the last batch (stage-defined).
          last_metrics.update({f"diagnostics/{k}": float(v) for k, v in jax.device_get(
              diagnostics(state.params, batch, jax.random.PRNGKey(step))).items()})
        elapsed = time.time() - last_log_time
        steps_per_s = (step - last_log_step) / max(elapsed, 1e-9)
        last_metrics.update(steps_per_s=steps_per_s,
                            frames_per_s=steps_per_s * config.batch_size * frames_per_example,
                            learning_rate=float(optim.make_schedule(
                                config.optim, config.num_train_steps)(step)))
        writer.scalars(step, last_metrics)
        bar.set_postfix({k: f"{last_metrics[k]:.4g}" for k in stage.progress_keys
                         if k in last_metrics})  # Regression mode has no token accuracy.
        last_log_time, last_log_step = time.time(), step

      if step % config.image_every_steps == 0 or step == config.num_train_steps:
        arrays = visualize(state.params, batch)
        pictures = stage.visualize(jax.device_get(arrays)) if is_chief else {}
        for name, picture in pictures.items():
          writer.image(step, name, picture)
          summary["images"].append(images.save_png(
              os.path.join(stage_dir, "images", f"{name}_{step:07d}.png"), picture, upscale=2))
        writer.flush()

      preempted = sigterm.triggered or ckpt.reached_preemption(step)
      if step % config.checkpoint_every_steps == 0 or step == config.num_train_steps or preempted:
        guard.check()  # Never save a state that a non-finite step produced.
        if ckpt.save(step, state, data_iter, config, force=preempted):
          guard.last_saved = step
      if preempted:
        break

  writer.close()
  summary.update(step=step, metrics=last_metrics, preempted=preempted, state=state)
  return summary

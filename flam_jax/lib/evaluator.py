"""Evaluation of trained latent action world models (Sec 4.3, 5.4-5.9): the batching driver.

`Evaluator` runs the jit-compiled metrics step (`eval_step.py`) over batches of test
windows (frames, and the entity masks and ground-truth actions where the dataset has
them), sharded over the mesh's data axis, and reduces the per-example outputs on the host (`summarize`, with the latent
action probe of `probe.py`). Several parameter sets of one config (checkpoints or
seeds) are evaluated together by one jit-compiled vmap over the parameter axis
(`Evaluator.evaluate_sweep`). `dataset_batches` reads one ordered pass over a split.

The command line (and train.py's eval stage) is `flam_jax.evaluate`.
"""

import math
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

import jax
import numpy as np
from ml_collections import ConfigDict

from flam_jax.data import pipeline, records
from flam_jax.errors import ConfigError, DataError
from flam_jax.lib import eval_step, metrics, models, probe, sharding

# Defaults of the optional `config.eval` section (configs need not declare it).
EVAL_DEFAULTS = dict(
    split="test",       # Dataset split to evaluate.
    batch_size=0,       # Global windows per step; 0: config.batch_size.
    max_batches=0,      # 0: the whole split.
    window_stride=0,    # Frames between window starts; 0: config.data.window_stride.
    steps="",           # Comma-separated checkpoint steps to sweep; "": the latest.
    workdirs="",        # Comma-separated extra workdirs of the same config (seeds) to sweep.
    seed=0,             # Random latent actions for Delta PSNR.
    probe_steps=300,    # Full-batch gradient steps of the latent action probe.
    starts="first",     # Rollout start frames: "first" (frame 0) or "all" (training's starts).
    init_slot_iterations=0,  # Slot-attention iterations for frame 0 (lam.init_slot_iterations;
                             # the iterations share parameters); 0: as trained.
)
# frames, then the optional ground truth (headings: the probe given the agent's heading).
DATA_FIELDS = ("frames", "masks", "actions", "headings")
PER_STEP_KEYS = ("psnr_t", "ssim_t", "psnr_random_t", "delta_psnr_t", "token_accuracy_t",
                 "copy_psnr_t", "copy_token_accuracy_t")
# The probe's summary keys (probe_<key>; `probe.probe_latent_actions`).
PROBE_KEYS = ("accuracy", "majority", "train_accuracy", "test_pairs", "accuracy_given_heading",
              "accuracy_given_heading_bound")


def eval_settings(config: ConfigDict) -> Dict[str, Any]:
  """config.eval merged over EVAL_DEFAULTS (the section is optional)."""
  section = config.get("eval") if hasattr(config, "get") else None
  settings = dict(EVAL_DEFAULTS)
  if section:
    section = section.to_dict() if hasattr(section, "to_dict") else dict(section)
    unknown = sorted(set(section) - set(EVAL_DEFAULTS))
    if unknown:
      raise ConfigError(f"config.eval has unknown keys {unknown}; use {sorted(EVAL_DEFAULTS)}")
    settings.update(section)
  return settings


# ---- Host reductions. ----
def summarize(per_example: Dict[str, np.ndarray], spec: eval_step.EvalSpec,
              probe_steps: int = 300, skipped: Optional[Dict[str, str]] = None
              ) -> Dict[str, Any]:
  """Dataset metrics from per-example arrays (padding removed via `valid`).

  Means over windows: psnr_t, ssim_t, psnr_random_t, delta_psnr_t,
  token_accuracy_t (per step t = 1..P), tokenizer_psnr, ari_fg (per window: mean
  over its frames). disentanglement = sum of matched shares / number of
  (transition, moving agent) pairs. bound_fraction = the fraction of (transition, agent)
  pairs whose matched slot covers at least `probe.BOUND_SHARE` of the agent's pixels.
  action_perplexity (overall and the mean per slot, `metrics.action_usage`) of the FSQ
  latent action codes the IDM infers on the split's transitions.
  Keys that do not apply to the variant, or whose ground truth the data lacks, are None; `skipped` ({metric: why},
  `eval_step.skipped_metrics`) is reported as is. Per-step metrics are means over the
  windows of the per-window means over start frames (`eval_step.eval_step`).
  """
  valid = np.asarray(per_example["valid"]).astype(bool)
  ex = {k: np.asarray(v)[valid] for k, v in per_example.items()}
  if not valid.any():
    raise DataError("no evaluation windows; check eval.split and eval.max_batches")
  out: Dict[str, Any] = dict(variant=spec.variant, num_windows=int(valid.sum()),
                             prediction_steps=spec.prediction_steps, starts=spec.starts,
                             skipped=dict(skipped or {}))
  for key in PER_STEP_KEYS:
    out[key] = ex[key].mean(axis=0).tolist() if key in ex else None
  out["psnr_mean"] = float(np.mean(out["psnr_t"]))
  out["delta_psnr_mean"] = float(np.mean(out["delta_psnr_t"]))
  out["tokenizer_psnr"] = float(ex["tokenizer_psnr"].mean())
  out["ari_fg"] = float(ex["ari_fg"].mean()) if "ari_fg" in ex else None
  out["disentanglement"] = None
  if "disentangle_sum" in ex and ex["disentangle_count"].sum() > 0:
    out["disentanglement"] = float(ex["disentangle_sum"].sum() / ex["disentangle_count"].sum())
  out["bound_fraction"] = (float(np.mean(ex["matched_share"] >= probe.BOUND_SHARE))
                           if "matched_share" in ex else None)
  out["action_perplexity"] = out["action_perplexity_per_slot"] = None
  if "action_code_counts" in ex:  # FSQ latent actions: code usage on this split.
    usage = metrics.usage_from_counts(ex["action_code_counts"].sum(axis=0))
    out.update({key: float(value) for key, value in usage.items()})
  probed = probe.probe_latent_actions(ex, spec, probe_steps) or {}
  for key in PROBE_KEYS:
    out[f"probe_{key}"] = probed.get(key)
  return out


# ---- Driving the step over batches. ----
def _pad(batch: Dict[str, np.ndarray], size: int) -> Dict[str, np.ndarray]:
  """Zero-pads every field to `size` rows."""
  def pad(x):
    x = np.asarray(x)
    if x.shape[0] == size:
      return x
    return np.concatenate([x, np.zeros((size - x.shape[0],) + x.shape[1:], x.dtype)])
  return {k: pad(v) for k, v in batch.items()}


def _same_tree(a, b) -> bool:
  """Whether two parameter trees are the same object or hold equal arrays."""
  if a is b:
    return True
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  return tree_a == tree_b and all(
      x is y or (np.shape(x) == np.shape(y) and np.array_equal(np.asarray(x), np.asarray(y)))
      for x, y in zip(leaves_a, leaves_b))


class Evaluator:
  """Evaluates one world model (or a sweep of parameter sets) over batches of windows.

  `stage`: a `models.LoadedWorldModel` or a lam stage (the same attributes).
  """

  def __init__(self, stage, mesh=None, *, seed: int = 0, probe_steps: int = 300,
               starts: str = "first"):
    self.stage = stage
    self.spec = eval_step.EvalSpec.from_stage(stage, starts)
    self.mesh = mesh if mesh is not None else sharding.make_mesh(1)
    self.seed = seed
    self.probe_steps = probe_steps
    self.timings: Dict[str, float] = {}
    self.skipped: Dict[str, str] = {}  # Of the last evaluation's data.

  def _local_rows(self, n: int) -> int:
    """n rounded up to a multiple of this process's share of the data axis."""
    per_process = max(1, self.mesh.shape[sharding.DATA_AXIS] // jax.process_count())
    return -(-n // per_process) * per_process

  def _prepare(self, batches: Iterable[Dict[str, np.ndarray]]) -> Iterator[Dict[str, jax.Array]]:
    """numpy batches (+ optional valid/index/episode) -> padded, globally sharded batches.

    Sets `self.skipped` from the first batch's ground-truth fields (DataError for wm
    without actions); every batch must hold the same fields.
    """
    rows, offset, fields = None, 0, None
    for batch in batches:
      if fields is None:
        fields = tuple(k for k in DATA_FIELDS if k in batch)
        self.skipped = eval_step.skipped_metrics(self.spec, fields)
      local = {k: np.asarray(batch[k]) for k in fields}
      size = local["frames"].shape[0]
      local["valid"] = np.asarray(batch.get("valid", np.ones((size,), bool)), bool)
      index = offset + np.arange(size)
      local["index"] = np.asarray(batch.get("index", index), np.int32)
      local["episode"] = np.asarray(batch.get("episode", index), np.int32)
      offset += size
      rows = rows or self._local_rows(size)
      if size > rows:
        raise ConfigError(f"evaluation batch of {size} windows after batches of {rows}; "
                          "pass equal batches (the last may be smaller)")
      yield sharding.to_global_batch(_pad(local, rows), self.mesh)

  def _gather(self, out):
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.process_allgather(out, tiled=True)
    return jax.device_get(out)

  def _run(self, step_fn, state, batches, batch_axis: int):
    """Runs `step_fn` over the batches and concatenates its per-example outputs on the host.

    A batch's outputs are fetched only after the next batch's step is dispatched, so the
    device is never idle waiting on a host transfer (one step in flight, not a sync per step).
    """
    state = jax.device_put(state, sharding.replicated(self.mesh))
    rng = jax.random.PRNGKey(self.seed)
    outs, start, first_done, windows = [], time.perf_counter(), None, 0

    def collect(out):
      nonlocal first_done, windows
      out = self._gather(out)
      outs.append(out)
      if first_done is None:
        first_done = time.perf_counter()
      else:
        windows += int(np.asarray(out["valid"]).reshape(-1, out["valid"].shape[-1])[0].sum())

    in_flight = None
    for batch in self._prepare(batches):
      dispatched = step_fn(self.spec, state, batch, rng)  # Asynchronous.
      if in_flight is not None:
        collect(in_flight)
      in_flight = dispatched
    if in_flight is None:
      raise DataError("no evaluation batches; check eval.split and eval.max_batches")
    collect(in_flight)
    end = time.perf_counter()
    steady = end - first_done
    self.timings = dict(first_batch_seconds=first_done - start, seconds=end - start,
                        windows_per_second=windows / steady if windows and steady > 0 else None)
    return {k: np.concatenate([o[k] for o in outs], axis=batch_axis) for k in outs[0]}

  def _codebook(self, tokenizer_params) -> np.ndarray:
    """The codebook of these tokenizer parameters (the loaded model's, computed once)."""
    if tokenizer_params is self.stage.tokenizer_params:
      return self.stage.codebook
    return models.tokenizer_codebook(self.spec.tokenizer, tokenizer_params)

  def evaluate(self, params, batches, tokenizer_params=None) -> Dict[str, Any]:
    """Metrics of one parameter set over `batches` (dicts of frames, masks, actions)."""
    tok = self.stage.tokenizer_params if tokenizer_params is None else tokenizer_params
    state = dict(lam=params, tokenizer=tok, codebook=self._codebook(tok))
    per_example = self._run(eval_step.jit_eval_step, state, batches, 0)
    return dict(summarize(per_example, self.spec, self.probe_steps, self.skipped),
                **self.timings)

  def evaluate_sweep(self, params_list: Sequence[Any], batches,
                     tokenizer_params_list: Optional[Sequence[Any]] = None) -> List[Dict[str, Any]]:
    """Metrics of several parameter sets of one config, in one vmap over the parameter axis."""
    if not params_list:
      raise ConfigError("evaluate_sweep needs at least one parameter set")
    toks = tokenizer_params_list or [self.stage.tokenizer_params] * len(params_list)
    if len(toks) != len(params_list):
      raise ConfigError(f"{len(params_list)} parameter sets but {len(toks)} tokenizers")
    shared = all(_same_tree(toks[0], t) for t in toks[1:])
    stack = lambda trees: jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)
    try:
      state = dict(lam=stack(params_list), tokenizer=toks[0] if shared else stack(toks),
                   codebook=(self._codebook(toks[0]) if shared
                             else np.stack([self._codebook(t) for t in toks])))
    except ValueError as e:
      raise ConfigError(f"the swept parameter sets differ in structure ({e}); sweep only "
                        "checkpoints or seeds of one config") from e
    step_fn = lambda spec, st, batch, rng: eval_step.jit_sweep_step(spec, st, batch, rng, shared)
    per_example = self._run(step_fn, state, batches, 1)
    return [dict(summarize({k: v[r] for k, v in per_example.items()}, self.spec,
                           self.probe_steps, self.skipped), swept_runs=len(params_list),
                 **self.timings)
            for r in range(len(params_list))]


def evaluate(stage, params, batches, **kwargs) -> Dict[str, Any]:
  """Module-level shortcut for `Evaluator(stage).evaluate(params, batches)`."""
  return Evaluator(stage, **kwargs).evaluate(params, batches)


def evaluate_sweep(stage, params_list, batches, **kwargs) -> List[Dict[str, Any]]:
  """Evaluates stacked parameter sets of one config in ONE jit-compiled vmap (see Evaluator)."""
  return Evaluator(stage, **kwargs).evaluate_sweep(params_list, batches)


# ---- Dataset windows. ----
def dataset_fields(meta: Dict[str, Any]) -> tuple:
  """The DATA_FIELDS a dataset holds: frames and whichever ground truth it has."""
  return tuple(f for f in DATA_FIELDS if f == "frames" or f in records.ground_truth(meta))


def dataset_batches(data_dir: str, split: str, *, window_length: int, batch_size: int,
                    window_stride: int = 1, max_batches: int = 0,
                    mesh=None) -> Iterator[Dict[str, np.ndarray]]:
  """This process's batches of one ordered pass over `split` (frames, masks, actions).

  Masks and actions only where the dataset holds them (`dataset_fields`).

  Every process yields the same number of batches (missing ones are all padding),
  each of batch_size / process_count windows (the last one zero-padded) with
  `valid`, `index` (the window's position in the split) and `episode` fields.
  """
  if mesh is not None and batch_size % mesh.shape[sharding.DATA_AXIS]:
    raise ConfigError(f"eval.batch_size={batch_size} is not divisible by the "
                      f"{mesh.shape[sharding.DATA_AXIS]} devices of the data axis; use a "
                      "multiple of it")
  local_size = batch_size // jax.process_count()
  fields = dataset_fields(pipeline.load_metadata(data_dir))
  source = pipeline.WindowSource(data_dir, split, window_length=window_length,
                                 window_stride=window_stride, fields=fields)
  lo, _ = records.shard_bounds(len(source), jax.process_index(), jax.process_count())
  num_batches = math.ceil(math.ceil(len(source) / jax.process_count()) / local_size)
  if max_batches:
    num_batches = min(num_batches, max_batches)
  ds = iter(pipeline.make_dataset(
      data_dir, split, window_length=window_length, batch_size=local_size, seed=0,
      shuffle=False, num_epochs=1, window_stride=window_stride, drop_remainder=False,
      fields=fields))
  offset, last = lo, None
  for _ in range(num_batches):
    batch = next(ds, None)
    if batch is None:  # This process ran out: an all-padding batch keeps steps in lockstep.
      batch = {k: np.zeros((local_size,) + v.shape[1:], v.dtype) for k, v in last.items()}
      yield dict(batch, valid=np.zeros((local_size,), bool),
                 episode=np.zeros((local_size,), np.int32), index=np.zeros((local_size,), np.int32))
      continue
    size = batch["frames"].shape[0]
    index = offset + np.arange(size)
    batch = dict(batch, valid=np.ones((size,), bool), index=index.astype(np.int32),
                 episode=source.episode_of(index).astype(np.int32))
    offset += size
    last = {k: batch[k] for k in fields}
    yield _pad(batch, local_size)



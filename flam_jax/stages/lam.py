"""Stage 2 (Sec 4.2): the latent action world model on a frozen tokenizer's tokens.

Trains FLAM or a baseline (config.lam.variant: flam | lam | oc_lam | wm) with
  - classification: Eq. 5, cross-entropy summed over the N patches (hierarchical
    sub-token softmaxes), averaged over predictions; or
  - regression (Sec 5.4 / later version): squared error of the predicted features;
plus beta * sum_i KL[q(a^i) || N(0, I)] for Gaussian latent actions (later version),
OC+LAM's object-centric reconstruction loss, and an optional slot-matching loss (App. E).
"""

import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from flam_jax.data import pipeline, records
from flam_jax.data import tokens as tokens_lib
from flam_jax.errors import CheckpointError, ConfigError
from flam_jax.lib import checkpointing, images
from flam_jax.modules import aggregator as aggregator_lib
from flam_jax.modules import fsq, slot_matching
from flam_jax.modules.tokenizer import Tokenizer
from flam_jax.modules.world_model import FACTORED_ENTITIES, VARIANTS, LatentActionWorldModel
from flam_jax.stages.tokenizer import compute_dtype, make_tokenizer

NUM_PICTURE_WINDOWS = 2
# Distinct colours for slot masks (K up to 32; repeats beyond).
SLOT_COLORS = np.array([
    [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
    [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0],
    [170, 255, 195]], np.float32) / 255.0


def tokenizer_checkpoint_dir(config: ConfigDict, workdir: str) -> str:
  path = config.lam.tokenizer_checkpoint or os.path.join(workdir, "tokenizer", "checkpoints")
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  return os.path.abspath(path)


def load_frozen_tokenizer(config: ConfigDict, workdir: str):
  """(Tokenizer module, params, checkpoint dir, step) of the tokenizer this stage builds on."""
  path = tokenizer_checkpoint_dir(config, workdir)
  fix = (f"train one with `python train.py --config=<config>:tokenizer --workdir={workdir}` "
         "or set --config.lam.tokenizer_checkpoint")
  if not os.path.isdir(path):
    raise CheckpointError(f"no tokenizer checkpoint at {path}; {fix}")
  ckpt = checkpointing.Checkpointer(path, async_save=False)
  step = ckpt.latest_step()
  if step is None:
    raise CheckpointError(f"no complete tokenizer checkpoint in {path}; {fix}")
  saved = ckpt.restore_config(step)
  if saved.get("stage") != "tokenizer":
    raise CheckpointError(f"{path} holds a {saved.get('stage')!r} checkpoint, not a tokenizer; "
                          "point --config.lam.tokenizer_checkpoint at a tokenizer stage")
  checkpointing.check_compatible(saved, config, ("tokenizer", "data.image_size"), path)
  params = ckpt.restore_params(step)
  ckpt.close()
  return make_tokenizer(config), params, path, step


def load_trained(workdir: str, step: Optional[int] = None):
  """(stage, params, step) of the latent action model trained in `workdir` (for eval/generate).

  The stage carries the run's saved config, the frozen tokenizer and its parameters.
  """
  workdir = os.path.abspath(workdir)
  path = os.path.join(workdir, "lam", "checkpoints")
  ckpt = checkpointing.Checkpointer(path, async_save=False) if os.path.isdir(path) else None
  step = ckpt.latest_step() if (ckpt and step is None) else step
  if ckpt is None or step is None:
    raise CheckpointError(f"no latent action model checkpoint in {path}; train one with "
                          f"`python train.py --config=<config> --workdir={workdir}`")
  config = ConfigDict(ckpt.restore_config(step))
  params = ckpt.restore_params(step)
  ckpt.close()
  tokenizer, tokenizer_params, _, _ = load_frozen_tokenizer(config, workdir)
  meta = pipeline.load_metadata(config.data.dir)
  grid = (config.data.image_size // tokenizer.stride,) * 2
  stage = LatentActionStage(config, tokenizer, tokenizer_params, grid=grid,
                            num_agents=meta["config"].get("num_agents", 0),
                            data_dir=os.path.join(workdir, "tokens"),
                            has_actions="actions" in records.ground_truth(meta),
                            num_actions=meta["config"].get("num_actions", 4))
  return stage, params, step


class LatentActionStage:
  """Windows of cached tokens [B, T, h, w] (+ ground-truth actions) -> world model losses."""

  name = "lam"
  data_fields = ("tokens", "actions")
  checkpoint_keys = ("stage", "lam", "tokenizer", "data.image_size", "data.window_length")
  checkpoint_ignored_keys = ("lam.remat",)  # Memory/compute trade-off, same function.
  progress_keys = ("loss", "accuracy")

  def __init__(self, config: ConfigDict, tokenizer: Tokenizer, tokenizer_params, *,
               grid, num_agents: int, data_dir: str = "", has_actions: bool = True,
               num_actions: int = 4):
    """Builds the world model on a given frozen tokenizer; `build` loads one from disk.

    has_actions: the dataset holds ground-truth actions (action-free video does not:
    then only tokens are read, and the WM baseline, which needs them, is refused).
    num_actions: discrete actions per agent, for WM's one-hot (Multigrid 4, Procgen 15).
    """
    self.config = config
    lam = config.lam
    if not has_actions:
      if lam.variant == "wm":
        raise ConfigError("config.lam.variant='wm' needs ground-truth actions, and this dataset "
                          "has none (action-free video); train flam, lam or oc_lam on it")
      self.data_fields = ("tokens",)
    self.tokenizer, self.tokenizer_params = tokenizer, tokenizer_params
    self.data_dir = data_dir
    self.grid = tuple(grid)
    self.num_patches = int(np.prod(self.grid))
    self.num_agents = int(num_agents)
    codebook_size = fsq.codebook_size(config.tokenizer.levels)
    # The frozen codebook: index -> z_q ("ExtractCode", Sec 4.2), [C, codebook_dim].
    self.codebook = np.asarray(jax.jit(lambda p: self.tokenizer.apply(
        {"params": p}, jnp.arange(codebook_size), method=Tokenizer.indices_to_features))(
            self.tokenizer_params))
    self.model = LatentActionWorldModel(
        variant=lam.variant, num_patches=self.num_patches, codebook_size=codebook_size,
        d_model=lam.d_model, num_heads=lam.num_heads, num_blocks=lam.num_blocks,
        num_slots=lam.num_slots, slot_iterations=lam.slot_iterations,
        recursive_init=lam.recursive_init, temporal_attention=lam.temporal_attention,
        action_kind=lam.action_kind, action_levels=tuple(lam.action_levels),
        action_latent_dim=lam.action_latent_dim,
        scene_action_levels=tuple(lam.scene_action_levels), num_agents=self.num_agents,
        num_agent_actions=int(num_actions),
        aggregator_mode=lam.aggregator_mode, subtoken_sizes=tuple(lam.subtoken_sizes),
        aggregator_blocks=lam.aggregator_blocks, feature_dim=self.codebook.shape[-1],
        dtype=compute_dtype(config),
        remat=bool(lam.get("remat", False)))  # Older runs' saved configs lack the key.

  @staticmethod
  def check_config(config: ConfigDict) -> None:
    """One-line errors for inconsistent lam settings, before anything is loaded."""
    lam = config.lam
    if lam.variant not in VARIANTS:
      raise ConfigError(f"config.lam.variant={lam.variant!r} is not one of {VARIANTS}")
    if config.data.window_length <= lam.prediction_steps:
      raise ConfigError(
          f"config.data.window_length={config.data.window_length} must exceed "
          f"config.lam.prediction_steps={lam.prediction_steps} (sub-trajectories of T frames "
          "give T-P rollout starts); raise the window or lower the prediction steps")
    if lam.slot_matching not in slot_matching.MATCHING_LOSSES:
      raise ConfigError(f"config.lam.slot_matching={lam.slot_matching!r} is not one of "
                        f"{slot_matching.MATCHING_LOSSES}")
    codebook_size = fsq.codebook_size(config.tokenizer.levels)
    if (lam.aggregator_mode == "classification"
        and int(np.prod(lam.subtoken_sizes)) != codebook_size):
      raise ConfigError(
          f"config.lam.subtoken_sizes={tuple(lam.subtoken_sizes)} multiply to "
          f"{int(np.prod(lam.subtoken_sizes))}, not the tokenizer's {codebook_size} codes; "
          "choose sizes whose product is the codebook size (e.g. (32, 32) for 1024)")

  @classmethod
  def build(cls, config: ConfigDict, workdir: str) -> "LatentActionStage":
    """Loads the frozen tokenizer checkpoint and caches its tokens in <workdir>/tokens."""
    cls.check_config(config)
    tokenizer, params, ckpt_dir, step = load_frozen_tokenizer(config, workdir)
    encode = jax.jit(lambda p, f: tokenizer.apply(
        {"params": p}, f.astype(jnp.float32) / 255.0, method=Tokenizer.encode)[1])
    data_dir = os.path.join(workdir, "tokens")
    meta = tokens_lib.cache_tokens(config.data.dir, data_dir, lambda f: encode(params, f),
                                   tag=dict(checkpoint=ckpt_dir, step=int(step)))
    return cls(config, tokenizer, params, grid=meta["tokens"]["grid"],
               num_agents=meta["config"].get("num_agents", 0), data_dir=data_dir,
               has_actions="actions" in records.ground_truth(meta),
               num_actions=meta["config"].get("num_actions", 4))

  def validate(self, metadata: dict) -> None:
    del metadata  # Token shapes come from the cache this stage built.

  # ---- Batch preparation. ----
  def features(self, batch):
    """tokens [B, T, h, w] -> (z_q [B, T, N, Dz], tokens [B, T, N])."""
    tokens = batch["tokens"]
    b, t = tokens.shape[:2]
    tokens_btn = tokens.reshape(b, t, -1).astype(jnp.int32)
    return jnp.asarray(self.codebook)[tokens_btn], tokens_btn

  def init(self, rng, batch):
    features, tokens = self.features(batch)
    return self.model.init({"params": rng, "action": rng}, features, tokens, batch.get("actions"),
                           prediction_steps=self.config.lam.prediction_steps)["params"]

  # ---- Loss (Eq. 5 / regression, + beta KL, + OC reconstruction, + slot matching). ----
  def loss(self, params, batch, rng):
    lam = self.config.lam
    features, tokens = self.features(batch)
    out = self.model.apply({"params": params}, features, tokens, batch.get("actions"),
                           prediction_steps=lam.prediction_steps, deterministic=False,
                           rngs={"action": rng})
    b, p = tokens.shape[0], lam.prediction_steps
    metrics = {}
    if lam.aggregator_mode == "classification":
      sizes = tuple(lam.subtoken_sizes)
      prediction_loss = aggregator_lib.classification_loss(out["prediction"], out["targets"], sizes)
      accuracy_bsp = aggregator_lib.classification_accuracy(
          out["prediction"], out["targets"], sizes).reshape(b, out["num_starts"], p)
      metrics["accuracy"] = jnp.mean(accuracy_bsp)
      metrics["accuracy_step1"] = jnp.mean(accuracy_bsp[..., 0])
      metrics[f"accuracy_step{p}"] = jnp.mean(accuracy_bsp[..., -1])
    else:
      prediction_loss = aggregator_lib.regression_loss(out["prediction"], out["target_features"])
    prediction_loss = jnp.mean(prediction_loss)
    metrics["prediction_loss"] = prediction_loss
    metrics["prediction_loss_per_patch"] = prediction_loss / self.num_patches
    loss = prediction_loss
    if lam.action_kind == "gaussian" and lam.variant != "wm":
      kl = jnp.mean(out["kl"])
      metrics["kl"] = kl
      loss = loss + lam.kl_weight * kl
    if "reconstruction" in out:
      recon = jnp.mean(aggregator_lib.classification_loss(
          out["reconstruction"], out["reconstruction_targets"], tuple(lam.subtoken_sizes)))
      metrics["reconstruction_loss"] = recon
      loss = loss + lam.reconstruction_weight * recon
    if lam.variant in FACTORED_ENTITIES and lam.slot_matching != "none":
      matching = slot_matching.matching_loss(lam.slot_matching, out["entities"])
      metrics["slot_matching_loss"] = matching
      loss = loss + lam.slot_matching_weight * matching
    if out["action_indices"] is not None:
      num_codes = fsq.codebook_size(self.model.action_bottleneck_levels)
      counts = jnp.bincount(out["action_indices"].reshape(-1), length=num_codes)
      probs = counts / jnp.sum(counts)
      metrics["action_perplexity"] = jnp.exp(-jnp.sum(probs * jnp.log(probs + 1e-10)))
    return loss, metrics

  # ---- Pictures (Figs. 7-9): ground truth, slot masks, reconstruction, prediction. ----
  def visualize_arrays(self, params, batch):
    lam = self.config.lam
    batch = {k: v[:NUM_PICTURE_WINDOWS] for k, v in batch.items()}
    features, tokens = self.features(batch)
    b, t, n = tokens.shape
    p = lam.prediction_steps
    variables = {"params": params}
    entities, masks = self.model.apply(variables, features, method=LatentActionWorldModel.entities)
    acts = self.model.apply(variables, entities, batch.get("actions"),
                            method=LatentActionWorldModel.infer_actions)
    predicted = self.model.apply(variables, entities[:, 0], acts["actions"][:, :p],
                                 method=LatentActionWorldModel.rollout)  # [B, P, K, D]
    k, d = predicted.shape[2:]
    if lam.aggregator_mode == "classification":
      pred_tokens = self.model.apply(variables, predicted.reshape(b * p, k, d),
                                     method=LatentActionWorldModel.decode_tokens)
      pred_features = jnp.asarray(self.codebook)[pred_tokens]
    else:
      pred_features = self.model.apply(variables, predicted.reshape(b * p, k, d),
                                       method=LatentActionWorldModel.aggregate)
    decode = lambda f: self.tokenizer.apply(  # [M, N, Dz] -> [M, H, W, 3]
        {"params": self.tokenizer_params}, f.reshape((f.shape[0],) + self.grid + (-1,)),
        method=Tokenizer.decode)
    recon = decode(features.reshape(b * t, n, -1))  # [B*T, H, W, 3]
    out = dict(reconstruction=recon.reshape((b, t) + recon.shape[1:]),
               prediction=decode(pred_features).reshape((b, p) + recon.shape[1:]))
    if masks is not None:
      out["masks"] = masks  # [B, T, K, N]
    return out

  def visualize(self, arrays) -> dict:
    """One picture per window: rows = reconstruction, slot masks, prediction (from frame 0)."""
    recon = np.clip(np.asarray(arrays["reconstruction"]), 0, 1)  # [B, T, H, W, 3]
    b, t, height, width, _ = recon.shape
    pred = np.asarray(arrays["prediction"])
    pictures = {}
    for i in range(b):
      rows = [recon[i]]
      if "masks" in arrays:
        masks = np.asarray(arrays["masks"][i])  # [T, K, N]
        k = masks.shape[1]
        masks_tkhw = masks.reshape(t, k, *self.grid)
        scale = height // self.grid[0]
        masks_tkHW = masks_tkhw.repeat(scale, axis=2).repeat(scale, axis=3)
        colors = SLOT_COLORS[np.arange(k) % len(SLOT_COLORS)]
        rows.append(np.einsum("tkhw,kc->thwc", masks_tkHW, colors) * 0.7 + recon[i] * 0.3)
      blank = np.ones((1, height, width, 3), np.float32)
      rows.append(np.concatenate([blank, pred[i], np.repeat(blank, t - 1 - pred.shape[1], 0)]))
      pictures[f"rollout_{i}"] = images.grid(rows)
    return pictures

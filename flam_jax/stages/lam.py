"""Stage 2 (Sec 4.2): the latent action world model on a frozen tokenizer's tokens.

Trains FLAM or a baseline (config.lam.variant: flam | lam | oc_lam | wm) with
  - classification: Eq. 5, cross-entropy summed over the N patches (hierarchical
    sub-token softmaxes), averaged over predictions; or
  - regression (Sec 5.4 / later version): squared error of the predicted features;
plus beta * sum_i KL[q(a^i) || N(0, I)] for Gaussian latent actions (later version),
OC+LAM's object-centric reconstruction loss, an optional slot-matching loss (App. E),
and for slot variants the spatial-broadcast reconstruction of frame t from its slots and
(optionally) of frame t+1 from the FDM's predicted slots (our additions; configs/multigrid.py).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from flam_jax.data import records
from flam_jax.errors import ConfigError
from flam_jax.lib import images, loading, models, rollout
from flam_jax.lib import metrics as metrics_lib
from flam_jax.modules import aggregator as aggregator_lib
from flam_jax.modules import fsq, latent_action, slot_matching
from flam_jax.modules.tokenizer import Tokenizer
from flam_jax.modules.world_model import FACTORED_ENTITIES, VARIANTS
from flam_jax.modules.world_model import LatentActionWorldModel as WorldModel

NUM_PICTURE_WINDOWS = 2


def _changed_patch_weights(changed, weight: float):
  """Per-patch weights of a weighted mean: `weight` where `changed`, else 1."""
  return 1.0 + (weight - 1.0) * changed.astype(jnp.float32)


class LatentActionStage:
  """Windows of cached tokens [B, T, h, w] (+ ground-truth actions) -> world model losses."""

  name = "lam"
  data_fields = ("tokens", "actions")
  checkpoint_keys = ("stage", "lam", "tokenizer", "data.image_size", "data.window_length")
  # Same function: a memory/compute trade-off, and where the token cache lives.
  checkpoint_ignored_keys = ("lam.remat", "lam.remat_chunks", "lam.token_cache_dir")
  # Keys added after runs were saved, and the value those runs were trained with.
  checkpoint_key_defaults = models.LAM_KEY_DEFAULTS
  progress_keys = ("loss", "accuracy")

  def __init__(self, config: ConfigDict, tokenizer: Tokenizer, tokenizer_params, *,
               grid, num_agents: int, data_dir: str = "", has_actions: bool = True,
               num_actions: int = 4):
    """Builds the world model on a given frozen tokenizer; `build` loads one from disk.

    The attributes of `models.LoadedWorldModel` (config, model, tokenizer,
    tokenizer_params, grid, num_patches, num_agents, codebook) are the stage's too, so
    evaluation and the rollout API take either.
    has_actions: the dataset holds ground-truth actions (action-free video does not:
    then only tokens are read, and the WM baseline, which needs them, is refused).
    num_actions: discrete actions per agent, for WM's one-hot (Multigrid 4, Procgen 15).
    """
    if not has_actions:
      if config.lam.variant == "wm":
        raise ConfigError("config.lam.variant='wm' needs ground-truth actions, and this dataset "
                          "has none (action-free video); train flam, lam or oc_lam on it")
      self.data_fields = ("tokens",)
    loaded = models.assemble(config, tokenizer, tokenizer_params, grid=grid,
                             num_agents=num_agents, num_actions=num_actions)
    self.config, self.model, self.codebook = config, loaded.model, loaded.codebook
    self.tokenizer, self.tokenizer_params = tokenizer, tokenizer_params
    self.grid, self.num_patches, self.num_agents = loaded.grid, loaded.num_patches, loaded.num_agents
    self.data_dir = data_dir

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
    """Loads the frozen tokenizer checkpoint and caches its tokens of the data.

    The cache is `config.lam.token_cache_dir` (runs on one dataset and tokenizer may share
    it), or <workdir>/tokens when that is empty.
    """
    cls.check_config(config)
    tokenizer, params, ckpt_dir, step = loading.load_frozen_tokenizer(config, workdir)
    data_dir = config.lam.get("token_cache_dir", "") or os.path.join(workdir, "tokens")
    meta = loading.cache_frozen_tokens(tokenizer, params,
                                       loading.tokenizer_cache_tag(ckpt_dir, step, params),
                                       config.data.dir, data_dir)
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
  # Convention: every term is a mean (over patches, transitions, frames, examples), so a
  # weight in the config is the weight it looks like at any N, T or K: the prediction
  # loss in nats per patch (classification) or squared error per feature element
  # (regression); the KL is sum_i KL of one transition, averaged over transitions.
  def _prediction_loss(self, out, weighted: bool = False):
    """(per-example prediction loss [M], accuracy [M] or None) of the predictions `out`.

    weighted: patches whose target token differs from the start frame's count
    `lam.changed_patch_weight` times (a weighted mean over patches; 1, the configs'
    value, is the plain mean). An option for data where little moves; on the quickstart
    10x was worse than 1 (experiments/README.md). Diagnostics use the unweighted loss.
    """
    lam = self.config.lam
    weights = None
    changed_weight = float(lam.get("changed_patch_weight", 1.0))
    if weighted and changed_weight != 1.0:
      weights = _changed_patch_weights(out["targets"] != out["anchor_tokens"], changed_weight)
    if lam.aggregator_mode == "classification":
      sizes = tuple(lam.subtoken_sizes)
      return (aggregator_lib.classification_loss(out["prediction"], out["targets"], sizes,
                                                 weights),
              aggregator_lib.classification_accuracy(out["prediction"], out["targets"], sizes))
    return aggregator_lib.regression_loss(out["prediction"], out["target_features"],
                                          weights), None

  def _slot_reconstruction_loss(self, recon_btnf, features_btnf, tokens_btn):
    """(trained, plain) squared error of each frame's reconstruction from its own slots.

    Both per feature element. The trained loss weighs by `lam.slot_reconstruction_changed_weight`
    w: patches whose token differs from the previous or the next frame's in the window
    (what moves; no labels) count w times in a weighted mean over patches. With few moving
    entities (2 of 64 patches in the quickstart) the plain mean (w = 1) is nearly all
    background. The plain loss is what is logged, comparable across w.
    """
    plain = jnp.mean(jnp.square(recon_btnf - features_btnf))
    weight = float(self.config.lam.get("slot_reconstruction_changed_weight", 1.0))
    if weight == 1.0:
      return plain, plain
    step_changed = tokens_btn[:, 1:] != tokens_btn[:, :-1]  # [B, T-1, N]
    changed_btn = (jnp.pad(step_changed, ((0, 0), (1, 0), (0, 0)))  # since the previous
                   | jnp.pad(step_changed, ((0, 0), (0, 1), (0, 0))))  # until the next
    b, t, n, f = features_btnf.shape
    trained = jnp.mean(aggregator_lib.regression_loss(
        recon_btnf.reshape(b * t, n, f), features_btnf.reshape(b * t, n, f),
        _changed_patch_weights(changed_btn, weight).reshape(b * t, n)))
    return trained, plain

  def loss(self, params, batch, rng):
    lam = self.config.lam
    features, tokens = self.features(batch)
    out = self.model.apply({"params": params}, features, tokens, batch.get("actions"),
                           prediction_steps=lam.prediction_steps, deterministic=False,
                           rngs={"action": rng, "dropout": jax.random.fold_in(rng, 1),
                                 "slots": jax.random.fold_in(rng, 2)})
    b, p = tokens.shape[0], lam.prediction_steps
    metrics = {}
    prediction_loss, accuracy = self._prediction_loss(out, weighted=True)
    first_v, last_v = out["row_steps"] == 0, out["row_steps"] == p - 1  # Rows of step 1, P.
    if accuracy is not None:
      accuracy_bv = accuracy.reshape(b, -1)
      metrics["accuracy"] = jnp.mean(accuracy_bv)
      metrics["accuracy_step1"] = jnp.mean(accuracy_bv[:, first_v])
      metrics[f"accuracy_step{p}"] = jnp.mean(accuracy_bv[:, last_v])
    # The copy baseline on this batch: predicting the start frame's tokens for every step.
    copy_bv = jnp.mean((out["targets"] == out["anchor_tokens"]).astype(jnp.float32),
                       axis=-1).reshape(b, -1)
    metrics["copy_accuracy_step1"] = jnp.mean(copy_bv[:, first_v])
    if "anchor_features" in out:  # Regression: the copy baseline's squared error.
      metrics["copy_prediction_loss"] = jnp.mean(aggregator_lib.regression_loss(
          out["anchor_features"], out["target_features"]))
    prediction_loss = jnp.mean(prediction_loss)
    metrics["prediction_loss"] = prediction_loss
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
    if "slot_reconstruction" in out:
      slot_recon, plain_slot_recon = self._slot_reconstruction_loss(
          out["slot_reconstruction"], features, tokens)
      metrics["slot_reconstruction_loss"] = plain_slot_recon
      if slot_recon is not plain_slot_recon:
        metrics["slot_reconstruction_trained_loss"] = slot_recon
      loss = loss + lam.slot_reconstruction_weight * slot_recon
    if "predicted_slot_reconstruction" in out:
      predicted_recon = jnp.mean(jnp.square(out["predicted_slot_reconstruction"]
                                            - out["target_features"]))
      metrics["predicted_slot_reconstruction_loss"] = predicted_recon
      loss = loss + lam.predicted_slot_reconstruction_weight * predicted_recon
    if lam.variant in FACTORED_ENTITIES and lam.slot_matching != "none":
      matching = slot_matching.matching_loss(lam.slot_matching, out["entities"])
      metrics["slot_matching_loss"] = matching
      loss = loss + lam.slot_matching_weight * matching
    if out["action_code_log_probs"] is not None and lam.get("action_entropy_weight", 0.0):
      entropy = latent_action.code_entropy_loss(out["action_code_log_probs"])
      metrics["action_entropy_loss"] = entropy
      loss = loss + lam.action_entropy_weight * entropy
    if out["action_indices"] is not None:
      metrics.update(metrics_lib.action_usage(
          out["action_indices"], fsq.codebook_size(self.model.action_bottleneck_levels)))
    return loss, metrics

  def diagnostics(self, params, batch, rng):
    """Logged beside the loss: does the model use its latent actions? (one jit, log steps only)

    action_gain: prediction loss with the actions of another window of the batch minus
    the loss with the inferred actions (nats per patch, or squared error); a model that
    ignores its actions shows 0. free_running_accuracy_step1: greedy decoding of the
    first prediction step against the teacher-forced accuracy of the same predictions.
    """
    lam = self.config.lam
    variables = {"params": params}
    features, tokens = self.features(batch)
    entities, _ = self.model.apply(variables, features, method=WorldModel.entities)
    acts = self.model.apply(variables, entities, batch.get("actions"),
                            method=WorldModel.infer_actions)
    predict = lambda actions: self.model.apply(
        variables, entities, actions, features, tokens,
        prediction_steps=lam.prediction_steps, method=WorldModel.predict)
    out = predict(acts["actions"])
    shuffled = jnp.roll(acts["actions"], 1, axis=0)  # Another window's actions.
    loss_inferred, accuracy = self._prediction_loss(out)
    loss_shuffled, accuracy_shuffled = self._prediction_loss(predict(shuffled))
    metrics = dict(action_gain=jnp.mean(loss_shuffled - loss_inferred))
    if accuracy is not None:
      metrics["action_gain_accuracy"] = jnp.mean(accuracy - accuracy_shuffled)
      # Free running: greedy decode of step-1 predictions of the first start of each window
      # (each window's first row: start 0, step 1).
      rows = jnp.arange(tokens.shape[0]) * len(out["row_steps"])
      greedy = self.model.apply(variables, out["predicted_entities"][rows],
                                out["anchor_tokens"][rows],
                                method=WorldModel.decode_tokens)
      metrics["free_running_accuracy_step1"] = jnp.mean(
          (greedy == out["targets"][rows]).astype(jnp.float32))
      metrics["teacher_forced_accuracy_step1"] = jnp.mean(accuracy[rows])
    return metrics

  # ---- Pictures (Figs. 7-9): ground truth, slot masks, reconstruction, prediction. ----
  def visualize_arrays(self, params, batch):
    p = self.config.lam.prediction_steps
    batch = {k: v[:NUM_PICTURE_WINDOWS] for k, v in batch.items()}
    features, tokens = self.features(batch)
    b, t, n = tokens.shape
    entities, masks = rollout.entities(self.model, params, features)
    acts = rollout.infer_actions(self.model, params, entities, batch.get("actions"))
    _, pred_features = rollout.predict(self.model, params, self.codebook, entities[:, 0],
                                       acts["actions"][:, :p], tokens[:, 0])  # [B, P, N, Dz]
    decode = lambda f: rollout.decode_pixels(self.tokenizer, self.tokenizer_params, f, self.grid)
    recon = decode(features.reshape(b * t, n, -1))  # [B*T, H, W, 3]
    out = dict(reconstruction=recon.reshape((b, t) + recon.shape[1:]),
               prediction=decode(pred_features.reshape(b * p, n, -1)).reshape(
                   (b, p) + recon.shape[1:]))
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
        rows.append(images.mask_overlay(arrays["masks"][i], recon[i], self.grid))
      blank = np.ones((1, height, width, 3), np.float32)
      rows.append(np.concatenate([blank, pred[i], np.repeat(blank, t - 1 - pred.shape[1], 0)]))
      pictures[f"rollout_{i}"] = images.grid(rows)
    return pictures

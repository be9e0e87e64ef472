"""Stage 3 (Sec 4.3, Eq. 6): a policy pi_u by behaviour cloning on demonstrations.

The demonstrations are Multigrid goal-task episodes (`flam_jax.data.goal_task`: the
scripted expert, evaluation in the numpy goal task) or Procgen episodes of the planner
(`flam_jax.data.procgen --demonstrations`: evaluation on held-out levels in the Procgen
environment's process, beside the planner and a random policy).

`config.policy.mode` says where the action labels of the demonstrations come from:

| mode            | labels of the demonstration transitions                         |
|-----------------|-----------------------------------------------------------------|
| `pseudo_labels` | f(a): the latent actions a of the world model trained in        |
|                 | `policy.lam_workdir` (FLAM, LAM or OC+LAM; empty: this workdir),|
|                 | decoded by f, which is fitted on `policy.num_labels` labelled   |
|                 | transitions (stopped early on `decoder_validation_fraction` of  |
|                 | them, then refitted on all for the chosen number of steps).     |
|                 | A slot model's f attends over the K slots (`decoder_slots=      |
|                 | attention`), or, as a reference, reads the slot that the data's |
|                 | entity masks match to the controlled agent (`matched_by_masks`) |
| `labelled`      | the true actions of the `num_labels` labelled transitions only  |
|                 | (what one gets without the videos)                              |
| `true_actions`  | the true actions of every transition (the upper bound)          |

Build (once; every product is cached in the workdir with a tag of what made it):
  demonstrations (config.data.dir) --frozen tokenizer-->
  <workdir>/tokens (or config.lam.token_cache_dir, shared with the world models trained on
  the same demonstrations and tokenizer); [pseudo_labels: the world model's latent
  actions and slot keys of every transition -> <workdir>/policy_latents.npz; f fitted on
  the labelled ones ->
  pseudo-labels]; the training set of (tokens of frame t, label) pairs ->
  <workdir>/policy_data (ArrayRecord, one transition a record, read by the same grain
  pipeline). Demonstration transitions are those with `active` = 1 (before agent 0
  reaches the goal; before a Procgen level's end) in the train split; the labelled subset
  is a random draw of them (config.seed). The true actions are read only for the
  labelled subset, the `true_actions` mode, and the reported diagnostics: the
  pseudo-label accuracy and, for FLAM on data with entity masks, how well a slot holds agent 0
  (`controlled_agent_share`, `controlled_agent_bound_fraction`) and how often f attends
  most to that slot (`decoder_attends_controlled_slot`).

Training: cross-entropy of pi_u(frozen tokenizer features of frame t) against the
labels, by the shared trainer (sharding, orbax checkpoints, exact resume,
TensorBoard). Afterwards `evaluate` runs pi_u greedily in the live task over
`policy.eval_episodes` seeded episodes, beside the expert and a random policy.
"""

import dataclasses
import json
import os
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from flam_jax import filesystem
from flam_jax.data import goal_task, pipeline, procgen, records
from flam_jax.errors import CheckpointError, ConfigError, DataError
from flam_jax.lib import checkpointing, loading, models, probe
from flam_jax.lib import policy as policy_lib
from flam_jax.modules.policy import LatentActionDecoder, TokenPolicy, cross_entropy
from flam_jax.modules.tokenizer import Tokenizer

MODES = ("pseudo_labels", "labelled", "true_actions")
CONTROLLED_AGENT = 0
LATENT_VARIANTS = ("flam", "lam", "oc_lam")


def demonstration_metadata(data_dir: str) -> Dict[str, Any]:
  meta = pipeline.load_metadata(data_dir)
  is_goal_task = meta.get("generator") == goal_task.__name__
  is_procgen = meta.get("generator") == procgen.__name__ and "demonstration_return" in meta
  if not (is_goal_task or is_procgen):
    raise DataError(
        f"{data_dir} holds {meta.get('generator')!r} data, not demonstrations; generate them "
        f"with `python -m flam_jax.data.goal_task --out {data_dir}` (Multigrid) or `python -m "
        f"flam_jax.data.procgen --demonstrations --out {data_dir}` (Procgen)")
  return meta


def task_of(meta: Dict[str, Any], data_dir: str, policy: Optional[ConfigDict] = None):
  """The live task of the demonstrations: goal_task.GoalTaskConfig or procgen.ProcgenTask
  (whose planner and random references are cached beside the demonstrations), evaluated
  where config.policy's eval_levels and eval_max_steps say (Procgen only)."""
  levels = policy.get("eval_levels", "held_out") if policy else "held_out"
  max_steps = policy.get("eval_max_steps", 0) if policy else 0
  if meta["generator"] == procgen.__name__:
    task = procgen.ProcgenTask.from_metadata(meta["config"], cache_dir=data_dir)
    if levels == "demonstrated":
      train = meta["splits"]["train"]
      task = dataclasses.replace(task, train_levels=(
          meta["procgen"]["start_level"] + train["first_episode"], train["num_episodes"]))
    return dataclasses.replace(task, max_steps=max_steps) if max_steps else task
  if levels != "held_out" or max_steps:
    raise ConfigError(f"config.policy.eval_levels={levels!r}, eval_max_steps={max_steps}: the "
                      "goal task's evaluation episodes are seeded (policy.eval_seed) and end at "
                      "its step limit; these keys are Procgen's, leave them at held_out and 0")
  return goal_task.GoalTaskConfig.from_metadata(meta["config"])


def evaluation_filename(policy: ConfigDict) -> str:
  """evaluation.json, or evaluation_demonstrated_levels[_64_steps].json, ... where
  policy.eval_levels / eval_max_steps are not their defaults (each kept beside the other)."""
  name = "evaluation"
  for option, default in (("eval_levels", "held_out"), ("eval_max_steps", 0)):
    if policy.get(option, default) != default:
      name += f"_{policy[option]}" + ("_steps" if option == "eval_max_steps" else "_levels")
  return f"{name}.json"


def lam_workdir_of(config: ConfigDict, workdir: str) -> str:
  """policy.lam_workdir, or this workdir when empty (a tokenizer,lam,policy config)."""
  return os.path.abspath(config.policy.lam_workdir or workdir)


def load_latent_action_model(config: ConfigDict, lam_workdir: str):
  """(models.LoadedWorldModel, params, step) trained in `lam_workdir`, checked against `config`."""
  path = os.path.join(os.path.abspath(lam_workdir), "lam", "checkpoints")
  if not os.path.isdir(path):
    raise CheckpointError(f"{lam_workdir} has no latent action model "
                          f"({path} does not exist); train one with `python train.py "
                          f"--config=<config>:flam --workdir={lam_workdir}` or set --config.policy.lam_workdir")
  loaded, params, step = loading.load_trained(lam_workdir)
  if loaded.config.lam.variant not in LATENT_VARIANTS:
    raise ConfigError(f"the model in {lam_workdir} is a {loaded.config.lam.variant!r} world model "
                      f"without latent actions; use one of {LATENT_VARIANTS}")
  try:
    checkpointing.check_compatible(loaded.config.to_dict(), config, ("tokenizer", "data.image_size"),
                                   path)
  except CheckpointError as e:
    raise CheckpointError(f"tokenizer/lam mismatch: {e}") from e
  return loaded, params, step


class PolicyStage:
  """Batches of (tokens of one frame [B, 1, h, w], label [B, 1]) -> behaviour cloning loss."""

  name = "policy"
  data_fields = ("tokens", "labels")
  checkpoint_keys = ("stage", "policy", "tokenizer", "data.image_size")
  checkpoint_ignored_keys = ("policy.eval_episodes", "policy.eval_seed", "policy.eval_levels",
                             "policy.eval_max_steps")
  # Keys added after policies were saved, with the value those were trained with.
  checkpoint_key_defaults = {"policy.decoder_validation_fraction": 0.0,
                             "policy.decoder_slots": "attention",
                             "policy.eval_levels": "held_out", "policy.eval_max_steps": 0}
  progress_keys = ("loss", "accuracy")

  def __init__(self, config: ConfigDict, tokenizer: Tokenizer, tokenizer_params, *,
               task, data_dir: str = "", labelling: Dict = None):
    self.config = config
    self.tokenizer, self.tokenizer_params = tokenizer, tokenizer_params
    self.task = task
    self.data_dir = data_dir
    self.labelling = labelling or {}
    p = config.policy
    self.model = TokenPolicy(num_actions=task.num_actions, channels=tuple(p.channels),
                             hidden=p.hidden, dtype=models.compute_dtype(config))

  @staticmethod
  def check_config(config: ConfigDict) -> None:
    p = config.policy
    if p.mode not in MODES:
      raise ConfigError(f"config.policy.mode={p.mode!r} is not one of {MODES}")
    if p.num_labels < 1 and p.mode != "true_actions":
      raise ConfigError(f"config.policy.num_labels={p.num_labels}; label at least 1 transition")
    if config.data.window_length != 1:
      raise ConfigError(
          f"config.data.window_length={config.data.window_length}: the policy stage reads single "
          "transitions; set --config.per_stage.policy.data.window_length=1 (or "
          "--config.data.window_length=1 with --config.stage=policy)")

  # ---- Building the training set. ----
  @classmethod
  def build(cls, config: ConfigDict, workdir: str) -> "PolicyStage":
    cls.check_config(config)
    p = config.policy
    meta = demonstration_metadata(config.data.dir)
    task = task_of(meta, config.data.dir, p)
    lam, lam_workdir = None, lam_workdir_of(config, workdir)
    if p.mode == "pseudo_labels":
      lam, lam_params, lam_step = load_latent_action_model(config, lam_workdir)
      matched = p.get("decoder_slots", "attention") == "matched_by_masks"
      with_masks = any(field["name"] == "masks" for field in meta["fields"])
      if matched and (lam.model.variant != "flam" or not with_masks):
        lacking = (f"{lam_workdir} holds a {lam.config.lam.variant!r} model, not slots"
                   if lam.model.variant != "flam" else f"{config.data.dir} has no entity masks")
        raise ConfigError(f"config.policy.decoder_slots=matched_by_masks needs slots and entity "
                          f"masks: {lacking}; set --config.policy.decoder_slots=attention")
      tokenizer, tok_params = lam.tokenizer, lam.tokenizer_params
      tok_dir = loading.tokenizer_checkpoint_dir(lam.config, lam_workdir)
      tok_ckpt = checkpointing.Checkpointer(tok_dir, async_save=False)
      tok_step = tok_ckpt.latest_step()
      tok_ckpt.close()
    else:
      tokenizer, tok_params, tok_dir, tok_step = loading.load_frozen_tokenizer(config, workdir)
    token_tag = loading.tokenizer_cache_tag(tok_dir, tok_step, tok_params)
    tokens_dir = config.lam.get("token_cache_dir", "") or os.path.join(workdir, "tokens")
    loading.cache_frozen_tokens(tokenizer, tok_params, token_tag, config.data.dir, tokens_dir)

    # Every active train transition of the demonstrations, and the labelled draw.
    length = meta["config"]["episode_length"]
    demonstrations = policy_lib.demonstration_transitions(tokens_dir, config.data.dir, length)
    tokens_elhw, actions_elk = demonstrations["tokens_elhw"], demonstrations["actions_elk"]
    episode_m, time_m = demonstrations["episode_m"], demonstrations["time_m"]
    num_transitions = len(episode_m)
    if p.mode != "true_actions" and p.num_labels > num_transitions:
      raise ConfigError(
          f"config.policy.num_labels={p.num_labels} is larger than the {num_transitions} "
          f"demonstration transitions in the train split of {config.data.dir}; lower it or "
          "generate more episodes")
    labelled_m = policy_lib.labelled_draw(num_transitions, p.num_labels, config.seed)

    def true_actions(rows):  # The controlled agent's true actions of these transitions only.
      rows = np.asarray(rows, np.int64)
      return actions_elk[episode_m[rows], time_m[rows], CONTROLLED_AGENT].astype(np.int32)

    labelling: Dict[str, Any] = dict(mode=p.mode, transitions=int(num_transitions),
                                     labelled=int(len(labelled_m)))
    if p.mode == "true_actions":
      rows, labels = np.arange(num_transitions), true_actions(range(num_transitions))
    elif p.mode == "labelled":
      rows, labels = labelled_m, true_actions(labelled_m)
    else:
      entity_ids_elHW = None
      if with_masks and lam.model.variant == "flam":
        masks_source = pipeline.WindowSource(config.data.dir, "train", window_length=length,
                                             fields=("masks",))
        entity_ids_elHW = np.stack([masks_source.read_episode(e)["masks"]
                                    for e in range(masks_source.num_episodes)])
      latent_tag = dict(lam=lam_workdir, step=int(lam_step), tokens=token_tag,
                        params=checkpointing.tree_fingerprint(lam_params),
                        binding=entity_ids_elHW is not None, keys="token_shares")
      inferred = cls._latent_actions(
          os.path.join(workdir, "policy_latents.npz"), latent_tag, lam, lam_params, tokens_elhw,
          entity_ids_elHW, task.num_agents)
      actions_mka = inferred["actions"][episode_m, time_m]
      keys_mkd = inferred["keys"][episode_m, time_m] if "keys" in inferred else None
      if matched:  # A reference: the true masks say which slot holds the controlled agent.
        matched_slot_m = inferred["agent_slot"][episode_m, time_m]
        actions_mka = actions_mka[np.arange(num_transitions), matched_slot_m][:, None]
        keys_mkd = keys_mkd[np.arange(num_transitions), matched_slot_m][:, None]
      decoder = LatentActionDecoder(num_actions=task.num_actions, hidden=p.decoder_hidden)
      decoder_params, fit_metrics = policy_lib.fit_decoder(
          decoder, actions_mka[labelled_m], None if keys_mkd is None else keys_mkd[labelled_m],
          true_actions(labelled_m), steps=p.decoder_steps,
          learning_rate=p.decoder_learning_rate, seed=config.seed,
          validation_fraction=p.get("decoder_validation_fraction", 0.0))
      rows = np.arange(num_transitions)
      labels, chosen_slot_m = policy_lib.decode_labels(decoder, decoder_params, actions_mka,
                                                       keys_mkd)
      if matched:
        chosen_slot_m = matched_slot_m
      unlabelled = np.setdiff1d(rows, labelled_m)
      # Diagnostics only: how often f's pseudo-labels match the true actions, and (slot
      # models on data with entity masks) how well one slot holds the controlled agent and
      # how often f attends most to that slot: f can only read what the binding put there.
      labelling.update(fit_metrics, lam_variant=lam.config.lam.variant, lam_step=int(lam_step),
                       pseudo_label_accuracy=float(np.mean(labels == true_actions(rows))),
                       unlabelled_pseudo_label_accuracy=float(
                           np.mean(labels[unlabelled] == true_actions(unlabelled)))
                       if len(unlabelled) else None)
      if "agent_share" in inferred:
        share_m = inferred["agent_share"][episode_m, time_m]
        labelling.update(
            controlled_agent_share=float(np.mean(share_m)),
            controlled_agent_bound_fraction=float(np.mean(share_m >= probe.BOUND_SHARE)),
            decoder_attends_controlled_slot=float(np.mean(
                chosen_slot_m == inferred["agent_slot"][episode_m, time_m])))
    labelling["label_counts"] = np.bincount(labels, minlength=task.num_actions).tolist()
    data_dir = os.path.join(workdir, "policy_data")
    data_tag = dict(labelling, tokens=token_tag, seed=int(config.seed), num_labels=int(p.num_labels),
                    lam_workdir=lam_workdir if lam else "")
    cls._write_training_set(data_dir, data_tag, meta, tokens_elhw[episode_m[rows], time_m[rows]],
                            labels)
    return cls(config, tokenizer, tok_params, task=task, data_dir=data_dir, labelling=labelling)

  @staticmethod
  def _latent_actions(path: str, tag: Dict[str, Any], lam, lam_params, tokens_elhw,
                      entity_ids_elHW, num_agents: int) -> Dict[str, np.ndarray]:
    """`policy_lib.infer_latent_actions` of every transition, cached in `path`."""
    try:
      with np.load(path) as cached:
        if json.loads(str(cached["tag"])) == tag:
          return {name: cached[name] for name in cached.files if name != "tag"}
    except (OSError, ValueError, KeyError):
      pass
    inferred = policy_lib.infer_latent_actions(lam, lam_params, tokens_elhw, entity_ids_elHW,
                                               num_agents=num_agents, agent=CONTROLLED_AGENT)
    tmp = path + ".tmp.npz"
    os.makedirs(os.path.dirname(path), exist_ok=True)  # Tokens may live outside the workdir.
    np.savez(tmp, tag=json.dumps(tag), **inferred)
    os.replace(tmp, path)
    return inferred

  @staticmethod
  def _write_training_set(out_dir: str, tag: Dict[str, Any], source_meta: Dict[str, Any],
                          tokens_mhw: np.ndarray, labels_m: np.ndarray) -> None:
    """(tokens, label) pairs as one-frame records, in the pipeline's format, unless cached."""
    tag = json.loads(json.dumps(tag))
    try:
      if pipeline.load_metadata(out_dir).get("policy_tag") == tag:
        return
    except DataError:
      pass
    os.makedirs(out_dir, exist_ok=True)
    pairs = (dict(tokens=tokens_mhw[i:i + 1].astype(np.int32),
                    labels=labels_m[i:i + 1].astype(np.int32)) for i in range(len(labels_m)))
    split = records.write_split(out_dir, "train", pairs, len(labels_m),
                                episodes_per_shard=max(1, len(labels_m)),
                                fields=PolicyStage.data_fields)
    grid = list(tokens_mhw.shape[1:])
    fields = [dict(name="tokens", dtype="int32", shape=[1] + grid),
              dict(name="labels", dtype="int32", shape=[1])]
    records.write_metadata(out_dir, dict(
        source_meta, generator="flam_jax.stages.policy", num_episodes=len(labels_m),
        config=dict(source_meta["config"], episode_length=1), splits=dict(train=split),
        fields=fields, record_bytes=4 * (int(np.prod(grid)) + 1), policy_tag=tag))

  def validate(self, metadata: dict) -> None:
    del metadata  # The training set was written by `build`.

  # ---- Model and loss. ----
  def features(self, tokens_bhw):
    return self.tokenizer.apply({"params": self.tokenizer_params}, tokens_bhw.astype(jnp.int32),
                                method=Tokenizer.indices_to_features)

  def init(self, rng, batch):
    return self.model.init(rng, self.features(batch["tokens"][:, 0]))["params"]

  def loss(self, params, batch, rng):
    del rng
    logits = self.model.apply({"params": params}, self.features(batch["tokens"][:, 0]))
    loss, accuracy = cross_entropy(logits, batch["labels"][:, 0])
    return loss, dict(accuracy=accuracy)

  def visualize_arrays(self, params, batch):
    del params, batch
    return {}

  def visualize(self, arrays) -> dict:
    del arrays  # No pictures: the live evaluation is the policy's report.
    return {}

  # ---- Live evaluation. ----
  def evaluate(self, params, stage_dir: str, step: int) -> Dict[str, Any]:
    """Greedy pi_u in the live task over policy.eval_episodes seeded episodes, cached per step
    in `evaluation_filename(config.policy)`."""
    p = self.config.policy
    key = dict(step=int(step), episodes=int(p.eval_episodes), seed=int(p.eval_seed))
    for option, default in (("eval_levels", "held_out"), ("eval_max_steps", 0)):
      if p.get(option, default) != default:  # Only then: earlier evaluations stay valid.
        key[option] = p[option]
    path = os.path.join(stage_dir, evaluation_filename(p))
    cached = filesystem.read_json(path)
    if cached and cached.get("key") == key:
      return cached
    out = policy_lib.evaluate_policy(
        self.task, self.tokenizer, self.tokenizer_params, self.model, jax.device_get(params),
        num_episodes=p.eval_episodes, seed=p.eval_seed)
    out = dict(key=key, labelling=self.labelling, task=self.task.metadata_config(), **out)
    if jax.process_index() == 0:
      filesystem.write_json(path, out)
    return out

"""One validation pass over a config before anything is built.

Every key a stage reads has a `Rule` (type, range, allowed values); keys that must agree
with each other have a `Check`. `validate(config, stage)` runs the common rules and the
stage's, and raises a `ConfigError` naming the key, its value and what to use. The rules
of a stage live in `STAGE_RULES`; a new stage adds its own with `register(stage, ...)`.
"""

import dataclasses
import math
from typing import Any, Callable, Dict, List, Optional, Tuple

from ml_collections import ConfigDict

from flam_jax.errors import ConfigError
from flam_jax.lib.eval_step import START_MODES
from flam_jax.modules.latent_action import BOTTLENECK_KINDS
from flam_jax.modules.slot_attention import POSITION_EMBEDDINGS, SLOT_INITS
from flam_jax.modules.slot_matching import MATCHING_LOSSES
from flam_jax.modules.world_model import ROLLOUT_STARTS, VARIANTS

COMPUTE_DTYPES = ("float32", "bfloat16")
AGGREGATOR_MODES = ("classification", "regression")
_MISSING = object()


@dataclasses.dataclass(frozen=True)
class Rule:
  """One key: its kind ("int", "float", "bool", "str" or "ints", a non-empty int tuple),
  an inclusive range (`low`/`high`, for "ints" each element), allowed `choices`, and
  whether the key may be absent (sections older configs or saved runs lack)."""
  key: str
  kind: str
  low: Optional[float] = None
  high: Optional[float] = None
  choices: Tuple[Any, ...] = ()
  optional: bool = False


@dataclasses.dataclass(frozen=True)
class Check:
  """A relation between keys: `fn(config)` returns None or the one-line problem and fix."""
  name: str
  fn: Callable[[ConfigDict], Optional[str]]


def lookup(config: ConfigDict, dotted: str):
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node:
      return _MISSING
    node = node[part]
  return node


def _range_text(rule: Rule) -> str:
  if rule.low is not None and rule.high is not None:
    return f"between {rule.low:g} and {rule.high:g}"
  if rule.low is not None:
    return f">= {rule.low:g}"
  return f"<= {rule.high:g}"


def _in_range(rule: Rule, value) -> bool:
  return ((rule.low is None or value >= rule.low) and
          (rule.high is None or value <= rule.high))


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def check_rule(config: ConfigDict, rule: Rule) -> Optional[str]:
  """None, or the one-line problem with `rule.key` in `config`."""
  value = lookup(config, rule.key)
  flag = f"--config.{rule.key}"
  if value is _MISSING:
    return None if rule.optional else (
        f"config.{rule.key} is missing; add it to the config file (see configs/multigrid.py)")
  shown = f"config.{rule.key}={value!r}"
  if rule.kind == "ints":
    if (not isinstance(value, (tuple, list)) or not value
        or not all(_is_int(v) for v in value)):
      return (f"{shown} is not a non-empty tuple of integers; write it as "
              f"{flag}='(4,4)' (quoted, in parentheses)")
    if not all(_in_range(rule, v) for v in value):
      return f"{shown} has an element out of range; each must be {_range_text(rule)}"
    return None
  expected = {"int": _is_int, "bool": lambda v: isinstance(v, bool),
              "str": lambda v: isinstance(v, str),
              "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}
  if not expected[rule.kind](value):
    return f"{shown} is not a {rule.kind}; set {flag} to a {rule.kind}"
  if rule.kind == "float" and not math.isfinite(value):
    return f"{shown} is not finite; set {flag} to a finite number"
  if rule.choices and value not in rule.choices:
    return f"{shown} is not one of {rule.choices}; set {flag} to one of them"
  if (rule.low is not None or rule.high is not None) and not _in_range(rule, value):
    return f"{shown} is out of range; set {flag} to a value {_range_text(rule)}"
  return None


def _ints(key, low, **kw):
  return Rule(key, "ints", low=low, **kw)


def _pos(key, **kw):
  return Rule(key, "int", low=1, **kw)


COMMON_RULES: Tuple[Rule, ...] = (
    Rule("seed", "int", low=0),
    _pos("batch_size"),
    Rule("compute_dtype", "str", choices=COMPUTE_DTYPES),
    Rule("progress_bar", "bool"),
    Rule("data.dir", "str"),
    _pos("data.image_size"),
    _pos("data.window_length"),
    _pos("data.window_stride"),
    Rule("data.num_workers", "int", low=0),
    Rule("data.prefetch_buffer_size", "int", low=0),
    _pos("mesh.model_axis_size"),
)

TRAINING_RULES: Tuple[Rule, ...] = (
    _pos("num_train_steps"),
    _pos("log_every_steps"),
    _pos("image_every_steps"),
    _pos("checkpoint_every_steps"),
    _pos("keep_checkpoints"),
    Rule("skip_nonfinite_steps", "bool", optional=True),
    Rule("optim.learning_rate", "float", low=0),
    Rule("optim.warmup_steps", "int", low=0),
    Rule("optim.final_lr_fraction", "float", low=0, high=1),
    Rule("optim.weight_decay", "float", low=0),
    Rule("optim.grad_clip_norm", "float", low=0),
    Rule("optim.b1", "float", low=0, high=0.999999),
    Rule("optim.b2", "float", low=0, high=0.999999),
)

# XLA's LibraryFusionType values (xla.proto), as jit's compiler_options takes them.
YNN_FUSION_TYPES = tuple(f"LIBRARY_FUSION_TYPE_{name}" for name in (
    "DOT", "ELTWISE", "REDUCE", "INDIVIDUAL_DOT", "INDIVIDUAL_CONVOLUTION"))


def _ynn_fusion_types_are_known(config) -> Optional[str]:
  key = f"cpu_compiler_options.{config.stage}.xla_cpu_experimental_ynn_fusion_type"
  value = lookup(config, key)
  if value is _MISSING or value == "":
    return None
  unknown = [item for item in str(value).split(",") if item not in YNN_FUSION_TYPES]
  if unknown:
    return (f"config.{key}={value!r} names {unknown[0]!r}, which XLA does not know; use a "
            f"comma list of {YNN_FUSION_TYPES}, or \"\" for XLA's default")
  return None


_TRAINING_CHECKS = (Check("cpu_compiler_options", _ynn_fusion_types_are_known),)

TOKENIZER_RULES: Tuple[Rule, ...] = (
    _ints("tokenizer.encoder_channels", 1),
    _pos("tokenizer.z_channels"),
    _pos("tokenizer.codebook_dim"),
    _ints("tokenizer.levels", 2),
)


def _stride_divides_image(config) -> Optional[str]:
  stride = 2 ** len(config.tokenizer.encoder_channels)
  if config.data.image_size % stride:
    return (f"config.data.image_size={config.data.image_size} is not divisible by the tokenizer "
            f"stride {stride} (2^len(tokenizer.encoder_channels)); use a multiple of {stride}")
  return None


def _generated_data_is_valid(config) -> Optional[str]:
  """data.generate is used only when data.dir is empty: check it like the generator does."""
  gen = lookup(config, "data.generate")
  if config.data.dir or gen is _MISSING or not gen.enabled:
    return None
  from flam_jax.data import multigrid  # pylint: disable=g-import-not-at-top
  try:
    multigrid.MultigridConfig(
        grid_size=gen.grid_size, resolution=config.data.image_size, num_agents=gen.num_agents,
        episode_length=gen.episode_length, sticky_prob=gen.sticky_prob,
        wall_density=gen.wall_density)
  except ConfigError as e:
    return f"config.data.generate: {e}"
  if not _is_int(gen.episodes) or gen.episodes < 10:
    return (f"config.data.generate.episodes={gen.episodes!r} is too few for an 80/10/10 split; "
            "set it to 10 or more")
  return None


def _heads_divide_width(config) -> Optional[str]:
  lam = config.lam
  if lam.d_model % lam.num_heads:
    return (f"config.lam.d_model={lam.d_model} is not divisible by config.lam.num_heads="
            f"{lam.num_heads}; choose heads that divide the width")
  return None


def _init_iterations_at_least_the_others(config) -> Optional[str]:
  lam = config.lam
  init = int(lam.get("init_slot_iterations", 0))
  if init and init < lam.slot_iterations:
    return (f"config.lam.init_slot_iterations={init} is below config.lam.slot_iterations="
            f"{lam.slot_iterations}; use at least that many, or 0 for the same")
  return None


def _predicted_slot_reconstruction_needs_the_decoder(config) -> Optional[str]:
  lam = config.lam
  if (float(lam.get("predicted_slot_reconstruction_weight", 0.0))
      and not float(lam.get("slot_reconstruction_weight", 0.0))):
    return ("config.lam.predicted_slot_reconstruction_weight needs the slot decoder that "
            "config.lam.slot_reconstruction_weight trains; set that above 0 or this to 0")
  return None


LAM_RULES: Tuple[Any, ...] = (
    Rule("lam.variant", "str", choices=VARIANTS),
    Rule("lam.tokenizer_checkpoint", "str"),
    Rule("lam.token_cache_dir", "str", optional=True),
    _pos("lam.d_model"),
    _pos("lam.num_heads"),
    _pos("lam.num_blocks"),
    _pos("lam.num_slots"),
    _pos("lam.slot_iterations"),
    Rule("lam.recursive_init", "bool"),
    Rule("lam.slot_init", "str", choices=SLOT_INITS, optional=True),
    Rule("lam.rollout_starts", "str", choices=ROLLOUT_STARTS, optional=True),
    Rule("lam.init_slot_iterations", "int", low=0, optional=True),
    Rule("lam.slot_position_embedding", "str", choices=POSITION_EMBEDDINGS, optional=True),
    Rule("lam.slot_decoder_position_embedding", "str", choices=POSITION_EMBEDDINGS,
         optional=True),
    Rule("lam.temporal_attention", "bool"),
    Rule("lam.slot_matching", "str", choices=MATCHING_LOSSES),
    Rule("lam.slot_matching_weight", "float", low=0),
    Rule("lam.action_kind", "str", choices=BOTTLENECK_KINDS),
    _ints("lam.action_levels", 2),
    Rule("lam.action_latent_dim", "int", low=0),
    Rule("lam.kl_weight", "float", low=0),
    _ints("lam.scene_action_levels", 2),
    Rule("lam.aggregator_mode", "str", choices=AGGREGATOR_MODES),
    _ints("lam.subtoken_sizes", 1),
    _pos("lam.aggregator_blocks"),
    _pos("lam.prediction_steps"),
    Rule("lam.remat", "bool", optional=True),
    Rule("lam.remat_chunks", "int", low=1, optional=True),
    Rule("lam.aggregator_parallel", "bool", optional=True),
    Rule("lam.changed_patch_weight", "float", low=1, optional=True),
    Rule("lam.reconstruction_weight", "float", low=0, optional=True),
    Rule("lam.slot_reconstruction_weight", "float", low=0, optional=True),
    Rule("lam.slot_reconstruction_changed_weight", "float", low=1, optional=True),
    Rule("lam.predicted_slot_reconstruction_weight", "float", low=0, optional=True),
    Rule("lam.fdm_zero_init_actions", "bool", optional=True),
    Check("lam.num_heads", _heads_divide_width),
    Check("lam.init_slot_iterations", _init_iterations_at_least_the_others),
    Check("lam.predicted_slot_reconstruction_weight",
          _predicted_slot_reconstruction_needs_the_decoder),
)

EVAL_RULES: Tuple[Rule, ...] = (
    Rule("eval.split", "str", choices=("train", "validation", "test"), optional=True),
    Rule("eval.batch_size", "int", low=0, optional=True),
    Rule("eval.max_batches", "int", low=0, optional=True),
    Rule("eval.window_stride", "int", low=0, optional=True),
    Rule("eval.seed", "int", low=0, optional=True),
    Rule("eval.probe_steps", "int", low=0, optional=True),
    Rule("eval.starts", "str", choices=START_MODES, optional=True),
    Rule("eval.init_slot_iterations", "int", low=0, optional=True),
)

_DATA_CHECKS = (Check("data.generate", _generated_data_is_valid),)
_TOKENIZER_CHECKS = (Check("data.image_size", _stride_divides_image),)

POLICY_RULES: Tuple[Rule, ...] = (  # flam_jax/stages/policy.py (Sec 4.3).
    Rule("policy.mode", "str", choices=("pseudo_labels", "labelled", "true_actions")),
    Rule("policy.lam_workdir", "str"),
    Rule("policy.num_labels", "int", low=0),  # 0 with mode=true_actions: every transition.
    _pos("policy.decoder_hidden"),
    _pos("policy.decoder_steps"),
    Rule("policy.decoder_learning_rate", "float", low=0),
    Rule("policy.decoder_validation_fraction", "float", low=0, high=0.9, optional=True),
    Rule("policy.decoder_slots", "str", choices=("attention", "matched_by_masks"), optional=True),
    _ints("policy.channels", 1),
    _pos("policy.hidden"),
    _pos("policy.eval_episodes"),
    Rule("policy.eval_seed", "int", low=0),
    Rule("policy.eval_levels", "str", choices=("held_out", "demonstrated"), optional=True),
    Rule("policy.eval_max_steps", "int", low=0, optional=True),
)

STAGE_RULES: Dict[str, List[Any]] = {
    "tokenizer": [*TRAINING_RULES, *_TRAINING_CHECKS, *TOKENIZER_RULES, *_TOKENIZER_CHECKS,
                  *_DATA_CHECKS],
    "lam": [*TRAINING_RULES, *_TRAINING_CHECKS, *TOKENIZER_RULES, *_TOKENIZER_CHECKS, *LAM_RULES,
            *_DATA_CHECKS],
    "eval": [*EVAL_RULES],
    "policy": [*TRAINING_RULES, *_TRAINING_CHECKS, *TOKENIZER_RULES, *_TOKENIZER_CHECKS,
               *POLICY_RULES, *_DATA_CHECKS],
}


def register(stage: str, *rules) -> None:
  """Adds `Rule`s / `Check`s for `stage` (a new stage calls this when its module loads)."""
  STAGE_RULES.setdefault(stage, []).extend(rules)


def problems(config: ConfigDict, stage: str) -> List[str]:
  """Every problem of `config` for `stage`, in rule order (relations only once keys are valid)."""
  if stage not in STAGE_RULES:
    return [f"config.stage names {stage!r}, which has no validation rules; use one of "
            f"{sorted(STAGE_RULES)}"]
  rules = [*COMMON_RULES, *STAGE_RULES[stage]]
  found = [p for p in (check_rule(config, r) for r in rules if isinstance(r, Rule)) if p]
  if not found:
    found = [p for p in (c.fn(config) for c in rules if isinstance(c, Check)) if p]
  return found


def validate(config: ConfigDict, stage: str) -> None:
  """Raises ConfigError with the first problem of `config` for `stage`."""
  found = problems(config, stage)
  if found:
    more = f" (and {len(found) - 1} more problem(s))" if len(found) > 1 else ""
    raise ConfigError(found[0] + more)


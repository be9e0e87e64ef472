"""Config helpers shared by train.py, the benchmarks and the experiments."""

from typing import Any, Dict

from ml_collections import ConfigDict

from flam_jax.errors import ConfigError


def flatten_dict(tree: Any, prefix: str = "") -> Dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}; a non-dict leaf at the top gives {prefix: leaf}."""
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for key, value in tree.items():
    out.update(flatten_dict(value, f"{prefix}.{key}" if prefix else key))
  return out


def stage_config(config: ConfigDict, name: str) -> ConfigDict:
  """The config one stage runs with: a copy of `config` with config.per_stage.<name> merged in.

  `per_stage.<name>` holds overrides of top-level keys (e.g. per_stage.tokenizer.batch_size)
  for configs whose `stage` lists several stages, like the quickstart's "tokenizer,lam".
  """
  config = config.copy_and_resolve_references()
  overrides = config.per_stage.get(name) if "per_stage" in config else None
  if overrides is not None:
    flat = flatten_dict(overrides.to_dict())
    known = flatten_dict(config.to_dict())
    unknown = sorted(k for k in flat if k not in known)
    if unknown:  # update_from_flattened_dict would silently add them.
      raise ConfigError(f"config.per_stage.{name} names unknown keys {unknown}; it may only "
                        "override keys that exist at the top level of the config")
    config.update_from_flattened_dict(flat)
  config.stage = name
  return config

"""Aggregation over seeds and the markdown of results.md: tables, headers and claims."""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from experiments.runner import Experiment, hardware
from experiments.settings import settings_summary

def metric_value(metrics: Dict[str, Any], key: str) -> Optional[float]:
  """A scalar metric; `name@t` picks step t (1-based, or `P` for the last) of a per-step key."""
  if "@" in key:
    name, t = key.split("@")
    values = metrics.get(name)
    if values is None:
      return None
    return float(values[-1] if t == "P" else values[int(t) - 1])
  value = metrics.get(key)
  return None if value is None else float(value)


def mean_std(values: Sequence[Optional[float]]) -> Tuple[Optional[float], Optional[float], int]:
  """(mean, sample std (0 for one seed), n) over the non-missing values."""
  values = [v for v in values if v is not None and np.isfinite(v)]
  if not values:
    return None, None, 0
  std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return float(np.mean(values)), std, len(values)


def aggregate(per_seed: Sequence[Dict[str, Any]], keys: Sequence[str]) -> Dict[str, Dict[str, Any]]:
  """{key: dict(mean, std, n, values)} over the seeds' metric dicts."""
  out = {}
  for key in keys:
    values = [metric_value(m, key) for m in per_seed]
    mean, std, n = mean_std(values)
    out[key] = dict(mean=mean, std=std, n=n, values=values)
  return out


def fmt(stat: Optional[Dict[str, Any]], digits: int = 2) -> str:
  """'31.04 ± 0.52' (or '31.04' for one seed, 'n/a' when missing)."""
  if not stat or stat.get("mean") is None:
    return "n/a"
  if stat["n"] > 1:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
  return f"{stat['mean']:.{digits}f}"


def fmt_paper(value: Optional[float]) -> str:
  return "–" if value is None else f"{value:.2f}"


def psnr_rows(stats: Dict[str, Dict[str, Any]], columns: Sequence[str],
              paper_psnr: Dict[str, Optional[float]], paper_delta: Dict[str, Optional[float]],
              prediction_steps: int) -> List[List[str]]:
  """Table 1's rows: PSNR t=1, Delta PSNR t=1 and t=P (ours, mean ± std) beside the paper's."""
  ours = lambda key: [fmt(stats[c][key]) for c in columns]
  paper = lambda values: [fmt_paper(values[c]) for c in columns]
  return [["PSNR t=1 (ours)"] + ours("psnr_t@1"), ["PSNR (paper)"] + paper(paper_psnr),
          ["Δ PSNR t=1 (ours)"] + ours("delta_psnr_t@1"),
          [f"Δ PSNR t={prediction_steps} (ours)"] + ours("delta_psnr_t@P"),
          ["Δ PSNR (paper)"] + paper(paper_delta)]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def config_table(stats: Dict[str, Dict[str, Any]], titles: Dict[str, str],
                 columns: Sequence[Tuple[str, str]], digits: int = 2) -> str:
  """A markdown table with one row per config (`titles`) and one column per metric."""
  rows = [[titles[label]] + [fmt(stats[label][key], digits) for key, _ in columns]
          for label in titles]
  return markdown_table(["config"] + [name for _, name in columns], rows)


def header_lines(title: str, experiment: Experiment, seeds: Sequence[int],
                 slots: str = "number of agents + 1", data: Optional[str] = None,
                 action_levels: Optional[Sequence[int]] = None) -> List[str]:
  """The preamble of results.md: what, where, how many seeds, the setting (`slots`: FLAM's K;
  `data` and `action_levels`: what a script trains on instead of the setting's generated
  Multigrid and its action codebook)."""
  s = settings_summary(experiment.setting, experiment.steps_scale)
  if data is None:
    data = (f"Multigrid {s['grid_cells']}x{s['grid_cells']} cells at {s['image_size']} px, "
            f"{s['episodes']} episodes of {s['episode_length']} frames (80/10/10 split)")
  levels = s["action_levels"] if action_levels is None else list(action_levels)
  return [
      f"# {title}", "",
      f"- setting: `{experiment.setting.name}` (steps x{experiment.steps_scale:g}); seeds "
      f"{', '.join(map(str, seeds))}; mean ± sample std over seeds",
      f"- hardware: {hardware()}",
      f"- data: {data}, metrics on the test split",
      f"- tokenizer: {s['token_grid']} tokens, {s['tokenizer_codes']} FSQ codes, "
      f"{s['tokenizer_steps']} steps (batch {s['tokenizer_batch']}), one per dataset",
      f"- world models: d_model {s['d_model']}, {s['blocks']} block(s), "
      f"{s['window_length']}-frame windows, {s['prediction_steps']} prediction steps, "
      f"{s['lam_steps']} steps (batch {s['lam_batch']}); FLAM: K = {slots}, "
      f"action FSQ levels {levels}",
      f"- runs: {experiment.runs_dir}",
      f"- wall time of this invocation: {experiment.timings.get('total', 0.0):.0f} s "
      "(finished runs are skipped)", "",
  ]


def compare(claim: str, better: Optional[Dict[str, Any]], worse: Optional[Dict[str, Any]],
            digits: int = 2) -> List[str]:
  """A row [claim, ours, verdict]: does `better`'s mean exceed `worse`'s, beyond noise?

  'within noise' when the gap is smaller than the two seed stds combined
  (sqrt(s1^2 + s2^2)); with one seed there is no noise estimate ('one seed').
  """
  if not better or not worse or better.get("mean") is None or worse.get("mean") is None:
    return [claim, "n/a", "not measured"]
  gap = better["mean"] - worse["mean"]
  noise = float(np.hypot(better["std"] or 0.0, worse["std"] or 0.0))
  ours = f"{better['mean']:.{digits}f} vs {worse['mean']:.{digits}f} (gap {gap:+.{digits}f})"
  one_seed = min(better["n"], worse["n"]) < 2
  if gap <= 0:
    verdict = "does not hold"
  elif one_seed:
    verdict = "holds (one seed: no noise estimate)"
  elif gap < noise:
    verdict = "holds, within noise"
  else:
    verdict = "holds"
  return [claim, ours, verdict]


"""The experiments' plots (matplotlib, Agg backend): grouped bars and lines with +-std bars.

A series is (name, means, stds) with None where a value is missing; a plot with no
value at all is not written (returns None).
"""

import os
from typing import Optional, Sequence, Tuple

Series = Tuple[str, Sequence[Optional[float]], Sequence[Optional[float]]]  # name, means, stds
DPI = 100


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  return pyplot


def _has_values(series: Sequence[Series]) -> bool:
  return any(m is not None for _, means, _ in series for m in means)


def _figure(title: str, ylabel: str, width: int, height: int):
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(width / DPI, height / DPI), dpi=DPI)
  ax.set_title(title)
  ax.set_ylabel(ylabel)
  ax.grid(axis="y", alpha=0.3)
  return plt, fig, ax


def _save(plt, fig, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=DPI, format="png")  # Not bbox_inches="tight": the size stays fixed.
  plt.close(fig)
  os.replace(tmp, path)
  return path


def _points(means, stds):
  """(indices, means, stds or 0) of the present values."""
  kept = [(i, m, s or 0.0) for i, (m, s) in enumerate(zip(means, stds)) if m is not None]
  return [k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept]


def bar_plot(path: str, title: str, ylabel: str, categories: Sequence[str],
             series: Sequence[Series], width: int = 720, height: int = 420) -> Optional[str]:
  """Grouped bars (one group per category, one bar per series) with +-std error bars."""
  if not _has_values(series):
    return None
  plt, fig, ax = _figure(title, ylabel, width, height)
  bar = 0.8 / len(series)
  for s, (name, means, stds) in enumerate(series):
    xs, ms, sds = _points(means, stds)
    ax.bar([x - 0.4 + (s + 0.5) * bar for x in xs], ms, bar * 0.95, yerr=sds,
           capsize=3, label=name)
  ax.set_xticks(range(len(categories)), categories)
  ax.axhline(0.0, color="black", linewidth=0.8)
  ax.legend(loc="best", fontsize="small")
  return _save(plt, fig, path)


def line_plot(path: str, title: str, xlabel: str, ylabel: str, xs: Sequence[float],
              series: Sequence[Series],
              references: Optional[Sequence[Optional[Sequence[Optional[float]]]]] = None,
              reference_name: str = "paper", width: int = 720,
              height: int = 420) -> Optional[str]:
  """One line per series (+-std bars) over categorical x positions (e.g. 1, 2, 4, 8, 16).

  `references[s]` (e.g. the paper's numbers for series s) is drawn dashed and lighter
  in the colour of series s.
  """
  references = references or [None] * len(series)
  refs = [(name, ref, [None] * len(ref)) for (name, _, _), ref in zip(series, references) if ref]
  if not _has_values(list(series) + refs):
    return None
  plt, fig, ax = _figure(title, ylabel, width, height)
  for (name, means, stds), ref in zip(series, references):
    idx, ms, sds = _points(means, stds)
    line = ax.errorbar(idx, ms, yerr=sds, marker="o", capsize=3, label=name)
    if ref:
      ridx, rms, _ = _points(ref, [None] * len(ref))
      ax.plot(ridx, rms, linestyle="--", marker=".", alpha=0.5, color=line[0].get_color(),
              label=f"{name} ({reference_name})")
  ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
  ax.set_xlabel(xlabel)
  ax.legend(loc="best", fontsize="small")
  return _save(plt, fig, path)

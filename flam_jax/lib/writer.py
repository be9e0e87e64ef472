"""Metrics to stdout (absl logging) and to TensorBoard event files, without TensorFlow."""

import os
import sys
from typing import Mapping

import numpy as np
from absl import logging
from tqdm import tqdm


class MetricWriter:
  """Writes scalars and images for process 0; a no-op on other processes."""

  def __init__(self, logdir: str, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      os.makedirs(logdir, exist_ok=True)
      self._tb = SummaryWriter(logdir=logdir)
      self.logdir = logdir

  def scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    for name, value in scalars.items():
      self._tb.add_scalar(name, float(value), step)
    line = f"step {step}: " + ", ".join(f"{k}={float(v):.5g}" for k, v in sorted(scalars.items()))
    logging.info(line)
    tqdm.write(line, file=sys.stdout)

  def image(self, step: int, name: str, image_HWc: np.ndarray) -> None:
    if self.enabled:
      self._tb.add_image(name, np.asarray(image_HWc), step, dataformats="HWC")

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()

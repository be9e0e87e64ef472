"""MetricWriter: TensorBoard event files holding the logged scalars; disabled is a no-op."""

import os
import struct

import numpy as np
from tensorboardX.proto import event_pb2

from flam_jax.lib.writer import MetricWriter


def _events(logdir):
  """Every Event in the TFRecord event files of `logdir`."""
  out = []
  for name in sorted(os.listdir(logdir)):
    with open(os.path.join(logdir, name), "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[offset + 12:offset + 12 + length])
      out.append(event)
      offset += 12 + length + 4
  return out


def test_scalars_and_images_reach_the_event_file(tmp_path, capsys):
  logdir = str(tmp_path / "tb")
  writer = MetricWriter(logdir)
  writer.scalars(7, {"loss": np.float32(0.25), "psnr": 20.0})
  writer.image(7, "picture", np.zeros((4, 4, 3), np.uint8))
  writer.close()
  assert "step 7: loss=0.25, psnr=20" in capsys.readouterr().out
  values = {(e.step, v.tag): v for e in _events(logdir) for v in e.summary.value}
  assert values[(7, "loss")].simple_value == 0.25
  assert values[(7, "psnr")].simple_value == 20.0
  assert values[(7, "picture")].image.height == 4


def test_disabled_writer_writes_nothing(tmp_path, capsys):
  writer = MetricWriter(str(tmp_path / "tb"), enabled=False)
  writer.scalars(1, {"loss": 1.0})
  writer.image(1, "picture", np.zeros((2, 2, 3), np.uint8))
  writer.flush()
  writer.close()
  assert not os.path.exists(tmp_path / "tb") and capsys.readouterr().out == ""

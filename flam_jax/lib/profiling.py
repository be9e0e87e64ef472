"""Where a compiled step spends its time: XLA op times from a `jax.profiler` trace.

`trace_op_times(fn, num_calls, trace_dir)` runs `fn` under `jax.profiler.trace` and sums the
duration of every XLA op event by op kind (the HLO name without its ".N" suffix, e.g.
"ynn_fusion", "copy_bitcast_fusion", "dot"): on a GPU or TPU the events of the device's
"XLA Ops" line, on XLA:CPU those of its threads (the client's and the compute pool's), which
record ops only when the backend was started with `--xla_cpu_enable_xprof_traceme=true`
(`CPU_TRACE_FLAG`). CPU times add over threads, so on 2 cores they may sum to twice the
step. An op that a library splits over the pool (YNNPACK's dots) is one event on the thread
that called it, and its other threads' share is not recorded: on a CPU the sum is a lower
bound on the cores' busy time, not a measure of it (the process's CPU time is). Read with
`benchmarks/bench_train.py --profile_dir=DIR`.
"""

import collections
import glob
import os
import re
from typing import Callable, Dict

import jax

CPU_TRACE_FLAG = "--xla_cpu_enable_xprof_traceme=true"
_CPU_OP_THREADS = "tf_XLA"  # "tf_XLAEigen/<id>" (the pool), "tf_XLAPjRtCpuClient/<id>".
_DEVICE_OP_LINE = "XLA Ops"
# An HLO instruction's name ("ynn_fusion.611", "dot"); runtime events ("ThunkExecutor::
# Execute", "end: ynn_fusion") are not.
_HLO_NAME = re.compile(r"^[A-Za-z_][\w\-]*(\.\d+)?$")


def op_kind(event_name: str) -> str:
  """"copy_bitcast_fusion.233" -> "copy_bitcast_fusion"."""
  return re.sub(r"\.\d+$", "", event_name)


def op_times(xplane_path: str) -> Dict[str, float]:
  """{op kind: seconds} summed over the op events of one `.xplane.pb` file."""
  profile = jax.profiler.ProfileData.from_file(xplane_path)
  total = collections.Counter()
  for plane in profile.planes:
    for line in plane.lines:
      if line.name != _DEVICE_OP_LINE and not line.name.startswith(_CPU_OP_THREADS):
        continue
      for event in line.events:
        if _HLO_NAME.match(event.name):
          total[op_kind(event.name)] += event.duration_ns / 1e9
  return dict(total)


def trace_op_times(fn: Callable[[], object], num_calls: int, trace_dir: str) -> Dict[str, float]:
  """{op kind: seconds per call} of `num_calls` calls of `fn` (which blocks on its result)."""
  with jax.profiler.trace(trace_dir):
    for _ in range(num_calls):
      fn()
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True),
                 key=os.path.getmtime)
  if not paths:
    return {}
  return {kind: seconds / num_calls for kind, seconds in op_times(paths[-1]).items()}

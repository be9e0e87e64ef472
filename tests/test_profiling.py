"""Op times from a jax.profiler trace (`flam_jax/lib/profiling.py`)."""

import os
import subprocess
import sys

from flam_jax.lib import profiling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = """
import sys, jax, jax.numpy as jnp
from flam_jax.lib import profiling
step = jax.jit(lambda a: jnp.tanh(a @ a).sum())
a = jnp.ones((256, 256))
step(a).block_until_ready()
times = profiling.trace_op_times(lambda: step(a).block_until_ready(), 2, sys.argv[1])
print(sorted(times.items(), key=lambda kv: -kv[1]))
assert times and all(t >= 0 for t in times.values()), times
assert any("dot" in kind or "ynn" in kind or "xnn" in kind for kind in times), times
"""


def test_op_kind_drops_the_instruction_number():
  assert profiling.op_kind("copy_bitcast_fusion.233") == "copy_bitcast_fusion"
  assert profiling.op_kind("dot") == "dot"


def test_a_traced_cpu_step_reports_its_ops(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {profiling.CPU_TRACE_FLAG}")
  out = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]

#!/usr/bin/env bash
# The whole test suite on CPU (installs into .venv first if needed). Extra args go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
export JAX_PLATFORMS=cpu
# Tests are dominated by XLA:CPU compilation of tiny programs: trade run time for compile time.
# The 8-device sharding tests run collectives on simulated CPU devices: on 2 loaded cores a
# device thread can miss XLA's 40 s rendezvous deadline, so it is raised.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true --xla_cpu_collective_call_terminate_timeout_seconds=600"
# --maxschedchunk=1: each worker takes the next test when it is free (tests are seconds to
# minutes long; chunks of them left one worker running alone at the end).
exec "$ROOT/.venv/bin/python" -m pytest -q -n 2 --maxschedchunk=1 --durations=15 tests "$@"

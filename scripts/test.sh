#!/usr/bin/env bash
# The whole test suite on CPU (installs into .venv first if needed). Extra args go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
export JAX_PLATFORMS=cpu
exec "$ROOT/.venv/bin/python" -m pytest -q tests "$@"

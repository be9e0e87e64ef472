#!/usr/bin/env bash
# The main job on the embedded default: generates Multigrid into the workdir and trains.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" train.py --config=configs/quickstart.py \
  --workdir="${WORKDIR:-workdirs/quickstart}" "$@"

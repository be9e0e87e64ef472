#!/usr/bin/env bash
# Creates .venv from requirements.txt when it is missing or stale. Sourced by the other scripts.
# Scripts started at the same time (the README's two commands in two terminals) take turns:
# the first builds .venv, the others wait for it (flock on .venv.lock), then find it ready.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.requirements.sha256"
want="$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1)"
if command -v flock > /dev/null; then
  exec 9> "$ROOT/.venv.lock"
  flock 9
fi
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "Setting up $VENV from requirements.txt (first run only; a few minutes)..." >&2
  PY="${PYTHON:-python3}"
  "$PY" -c 'import sys; assert sys.version_info >= (3, 11), "flam_jax needs Python 3.11+"'
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -r "$ROOT/requirements.txt"
  echo "$want" > "$STAMP"
fi
if command -v flock > /dev/null; then
  flock -u 9
  exec 9>&-
fi

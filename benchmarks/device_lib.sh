# Shared by benchmarks/device_*.sh (sourced first; `left` reads DEADLINE when called).
PY=${PY:-python3}
OUT=${OUT:-benchmarks/device_out}
WHEELS=${WHEELS:-benchmarks/device_wheels}

left() {  # min($1, seconds left before the deadline $2 (default $DEADLINE)), at least 1.
  local l=$(( ${2:-$DEADLINE} - SECONDS )); [ "$l" -gt "$1" ] && l=$1; [ "$l" -lt 1 ] && l=1
  echo "$l"
}

install_carried_wheels() {  # $1: the calling script's name, for its messages.
  # ml_collections, grain, tensorboardX where the image lacks them: only the missing
  # packages, from $WHEELS into a private folder, so the image's own stay untouched.
  $PY -c "import ml_collections, grain, tensorboardX" 2>/dev/null && return
  if [ ! -d "$WHEELS" ]; then
    echo "$1: ml_collections/grain are missing and $WHEELS does not exist; fill it with the" \
         "pip download command at the top of benchmarks/device_check.sh"; exit 3
  fi
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/flam_site "$WHEELS"/*.whl || { echo "$1: installing from $WHEELS failed"; exit 3; }
  export PYTHONPATH=/tmp/flam_site${PYTHONPATH:+:$PYTHONPATH}
}

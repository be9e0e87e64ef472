#!/usr/bin/env bash
# Issue 11's goal-task policies (experiments/policy.py) trained on one GPU, time-boxed, joined
# with the evaluations the repository keeps: the script runs with
# --root=experiments/results/policy, whose evaluations/ travel with the working tree, so every
# policy evaluated before (on any machine) is skipped. It runs one mode at a time, in the order
# of $MODES (each mode trains its world model per seed, then pi_u), so a call stopped at
# $DEADLINE loses only the mode in progress (a device keeps nothing between calls). The new
# evaluations come back in $OUT/evaluations.tar.gz: `tar xzf evaluations.tar.gz` at the
# repository root puts them beside the others; commit them, and a run of policy.py without
# --only (on any machine) writes the report from them.
#
#   SETTING=cpu_long DISTRACTORS=4 LABELS=1000 SEEDS=2 bash benchmarks/device_policy.sh
#   PY=.venv/bin/python SETTING=tiny DISTRACTORS=0 LABELS=5 SEEDS=0 ROOT=/tmp/p \
#     bash benchmarks/device_policy.sh              # a smoke test on the CPU
#
# Needs what benchmarks/device_check.sh needs (it installs the same carried wheels).
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/device_lib.sh  # PY, OUT, WHEELS defaults; left, install_carried_wheels.
WORK=${WORK:-/tmp/flam_device_policy}
ROOT=${ROOT:-experiments/results/policy}
SETTING=${SETTING:-cpu_long}
DISTRACTORS=${DISTRACTORS:-4}
LABELS=${LABELS:-1000}
SEEDS=${SEEDS:-0,1,2}
MODES=${MODES:-true_actions labelled flam_v2 lam flam}
DEADLINE=${DEADLINE:-540}  # Seconds from the start; no mode is given more than what is left.
mkdir -p "$OUT" "$WORK/logs" "$ROOT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false

install_carried_wheels device_policy
$PY -c "import jax; print('device_policy:', jax.devices(), 'jax', jax.__version__)"
touch "$WORK/start"
for mode in $MODES; do
  timeout "$(left 3600)" $PY experiments/policy.py --setting="$SETTING" --root="$ROOT" \
    --runs_root="$WORK/runs" --distractors="$DISTRACTORS" --labels="$LABELS" --seeds="$SEEDS" \
    --only="$mode" > "$WORK/logs/$mode.log" 2>&1
  echo "$mode: rc $? ($SECONDS s)"; grep "^\[policy\].*success" "$WORK/logs/$mode.log"
done

# The evaluations written by this call (and the logs), for the repository.
find "$ROOT" -type f -newer "$WORK/start" > "$WORK/new.txt"
echo "device_policy: $(wc -l < "$WORK/new.txt") evaluations written"
tar czf "$OUT/evaluations.tar.gz" -T "$WORK/new.txt"
tar czf "$OUT/logs.tar.gz" -C "$WORK" logs
echo "device_policy: done in $SECONDS s"

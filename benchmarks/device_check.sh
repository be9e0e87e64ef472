#!/usr/bin/env bash
# The GPU check of issue 12, one script, under 8 minutes on one H200:
#   1. tokenizer, FLAM and LAM train steps at Table 4 size (configs/multigrid.py: 128 px,
#      16x16 tokens, d_model 256, T 10, P 5) in bfloat16 at batch 64, or the largest of
#      64/32/16/8 that fits, with utilisation against a bfloat16 matmul measured in the same
#      process (benchmarks/bench_train.py; attention asks jax.nn.dot_product_attention for
#      cuDNN's flash attention where cuDNN takes the call), the three side by side: their
#      compilations overlap, their timings take turns (`bench_train.py --timing_lock`);
#   2. KV-cached aggregator rollout frames/s at batch 1, 128 px (benchmarks/bench_rollout.py);
#   3. the PyTorch peer at the same configs, when `import torch` works (bench_train --peer).
# Writes $OUT/*.log and *.json (default benchmarks/device_out) and prints a summary.
#
#   bash benchmarks/device_check.sh                 # from the repository root
#   PY=.venv/bin/python BATCHES=2 EXTRA="--config.data.image_size=32 ..." \
#     bash benchmarks/device_check.sh               # a smoke test on the CPU (tiny sizes)
#
# Needs python3 with jax[cuda], flax, optax, orbax, chex (the device image has them). The
# repository also imports ml_collections and grain; where they are missing they are installed
# from wheels in $WHEELS (default benchmarks/device_wheels, git-ignored), never from the
# network. Fill that folder on a machine with the registry, for the device's python (3.12):
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#     --platform manylinux_2_28_x86_64 --platform any -d benchmarks/device_wheels \
#     --no-deps grain==0.2.18 array_record==0.8.6 ml_collections==1.1.0 tensorboardX==2.6.5 \
#     portpicker   (the image has their other dependencies)
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/device_lib.sh  # PY, OUT, WHEELS defaults; left, install_carried_wheels.
PEER_DIR=${PEER_DIR:-../shared/peers/torch_flam}
# Seconds per bench_train run: compile, wait for the timing lock, 5 steps, the peer.
STEP_TIMEOUT=${STEP_TIMEOUT:-400}
DEADLINE=${DEADLINE:-470}  # Seconds from the start; no run is given more than what is left.
mkdir -p "$OUT"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # Peak memory is then the allocator's real peak.

install_carried_wheels device_check
$PY -c "import jax; print('device_check:', jax.devices(), 'jax', jax.__version__)" | tee "$OUT/device.txt"

PEER_FLAGS=()
if $PY -c "import torch" 2>/dev/null && [ -f "$PEER_DIR/bench.py" ]; then
  PEER_FLAGS=(--peer --peer_python="$(command -v $PY)" --peer_dir="$PEER_DIR" --peer_steps=5)
else
  echo "device_check: no torch or no peer at $PEER_DIR: the PyTorch peer is skipped"
fi

BATCHES=${BATCHES:-64 32 16 8}
STAGES=${STAGES:-tokenizer flam lam}  # Which of the three train steps to time.
# More --config.key=value flags for every stage (smoke tests).
read -r -a EXTRA_FLAGS <<< "${EXTRA:-}"
LOCK="$OUT/timing.lock"

# One train step benchmark at the largest batch of $BATCHES that compiles and runs, with
# cuDNN's fused attention or, where that fails, XLA's; each attempt's log is
# $OUT/<name>.b<batch>.<attention>.log, the figures $OUT/<name>.json, a summary
# $OUT/<name>.summary.
bench() {
  local name=$1; shift
  local attention=cudnn
  for batch in $BATCHES; do
    while true; do
      local log="$OUT/$name.b$batch.$attention.log"
      timeout "$(left "$STEP_TIMEOUT")" $PY benchmarks/bench_train.py "$@" \
        --config.batch_size=$batch --config.compute_dtype=bfloat16 --steps=5 \
        --gpu_attention=$attention --out="$OUT/$name.json" --timing_lock="$LOCK" \
        "${EXTRA_FLAGS[@]}" > "$log" 2>&1
      local rc=$?
      if [ $rc -eq 0 ]; then
        { echo "$name: batch $batch, --gpu_attention=$attention"; tail -n 2 "$log"; } \
          >> "$OUT/$name.summary"
        return 0
      fi
      if grep -qi "resource_exhausted\|out of memory" "$log"; then
        echo "$name: batch $batch does not fit, trying half" >> "$OUT/$name.summary"; break
      fi
      # Anything else (a timeout too) with cuDNN's fused attention: once more with XLA's.
      { echo "$name: failed (rc $rc) at batch $batch, --gpu_attention=$attention:"
        tail -n 5 "$log"; } >> "$OUT/$name.summary"
      [ $attention = xla ] && return 1
      attention=xla
    done
  done
}

# The three stages side by side: their compilations overlap (the host has the cores), their
# timings do not (bench_train.py --timing_lock), so the run fits the issue's 8 minutes.
rm -f "$OUT"/*.summary
for stage in $STAGES; do
  bench "$stage" --config=configs/multigrid.py:"$stage" "${PEER_FLAGS[@]}" &
done
wait
for stage in $STAGES; do cat "$OUT/$stage.summary"; done
timeout "$(left 120)" $PY benchmarks/bench_rollout.py --configs=multigrid --batch_size=1 \
  > "$OUT/rollout.log" 2>&1; echo "rollout (batch 1, 128 px): rc $?"; tail -n 3 "$OUT/rollout.log"
echo "device_check: figures in $OUT"

#!/usr/bin/env bash
# The GPU learning check of issue 9, one script, time-boxed ($DEADLINE, default 340 s):
#   1. learning curves on the toy of tests/test_learning.py (benchmarks/learning_curve.py),
#      trained longer than the CPU test can: does a model only need more steps?
#   2. the quickstart (configs/quickstart.py) with more steps than a CPU affords: a tokenizer,
#      then FLAM for each run of $FLAM_RUNS, each evaluated on the test split;
#   3. if PAPER_SLICE > 0: that many seconds of an experiment script at Table 4's setting
#      ($PAPER_SCRIPT, default `table1.py --setting=paper --seeds=0`), its workdirs under
#      $WORK/experiments; each call advances it a slice (SIGTERM checkpoints the run in
#      progress) until the script finishes and writes its results.
# Every stage runs under `timeout`: SIGTERM makes the trainer checkpoint, and a second run
# of this script with the same $WORK resumes where the first stopped (idempotent, like
# experiments/). Writes $OUT/*.log and *.json (default benchmarks/device_out).
#
#   bash benchmarks/device_learning.sh              # from the repository root
#
# Needs what benchmarks/device_check.sh needs (it installs the same carried wheels).
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/device_lib.sh  # PY, OUT, WHEELS defaults; left, install_carried_wheels.
WORK=${WORK:-/tmp/flam_device_learning}
TOY_STEPS=${TOY_STEPS:-6000}
TOY_RUNS=${TOY_RUNS:-flam,flam:aggregator_parallel=True,wm}
TOY_TIMEOUT=${TOY_TIMEOUT:-150}
TOKENIZER_STEPS=${TOKENIZER_STEPS:-5000}
FLAM_STEPS=${FLAM_STEPS:-6000}
STAGE_TIMEOUT=${STAGE_TIMEOUT:-75}  # Seconds per training stage; eval runs after it.
# FLAM runs: aggregator[:lam_key=value...], aggregator autoregressive or parallel.
FLAM_RUNS=${FLAM_RUNS:-autoregressive parallel}
PAPER_SLICE=${PAPER_SLICE:-0}
PAPER_SCRIPT=${PAPER_SCRIPT:-table1.py --setting=paper --seeds=0}
DEADLINE=${DEADLINE:-340}  # Seconds from the start; no run is given more than what is left.
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1

install_carried_wheels device_learning

if [ "$TOY_STEPS" -gt 0 ]; then  # TOY_STEPS=0 skips the toy.
  echo "== toy learning curves ($TOY_RUNS, $TOY_STEPS steps)"
  timeout "$(left "$TOY_TIMEOUT")" $PY benchmarks/learning_curve.py --runs="$TOY_RUNS" \
    --steps="$TOY_STEPS" --eval_every=$((TOY_STEPS / 6)) --out="$OUT/toy_curves.jsonl" \
    > "$OUT/toy.log" 2>&1
  echo "toy: rc $?"; grep -v -i warn "$OUT/toy.log" | tail -n 20
fi

QS=(--config=configs/quickstart.py --config.progress_bar=False)
if [ "$TOKENIZER_STEPS" -gt 0 ]; then  # TOKENIZER_STEPS=0 skips the quickstart.
echo "== quickstart tokenizer ($TOKENIZER_STEPS steps)"
timeout "$(left "$STAGE_TIMEOUT")" $PY train.py "${QS[@]}" --workdir="$WORK/qs" --config.stage=tokenizer \
  --config.per_stage.tokenizer.num_train_steps="$TOKENIZER_STEPS" > "$OUT/tokenizer.log" 2>&1
echo "tokenizer: rc $?"; grep -i "finished\|preempted\|error" "$OUT/tokenizer.log" | tail -n 3
cp "$(ls "$WORK"/qs/tokenizer/images/*.png 2>/dev/null | tail -n 1)" "$OUT/tokenizer.png" 2>/dev/null

for spec in $FLAM_RUNS; do
  IFS=: read -ra parts <<< "$spec"
  name=${spec//[:=.]/_}
  flags=(--config.lam.aggregator_parallel=$([ "${parts[0]}" = parallel ] && echo True || echo False))
  for kv in "${parts[@]:1}"; do flags+=("--config.lam.$kv"); done
  echo "== quickstart FLAM $spec ($FLAM_STEPS steps)"
  common=("${QS[@]}" --workdir="$WORK/flam_$name" --config.data.dir="$WORK/qs/data"
          --config.lam.tokenizer_checkpoint="$WORK/qs/tokenizer" "${flags[@]}")
  timeout "$(left "$STAGE_TIMEOUT")" $PY train.py "${common[@]}" --config.stage=lam \
    --config.num_train_steps="$FLAM_STEPS" > "$OUT/flam_$name.log" 2>&1
  echo "train: rc $?"; grep -i "finished\|preempted\|error" "$OUT/flam_$name.log" | tail -n 3
  timeout "$(left 120)" $PY train.py "${common[@]}" --config.stage=eval \
    --config.num_train_steps="$FLAM_STEPS" >> "$OUT/flam_$name.log" 2>&1
  echo "eval: rc $?"
  cp "$WORK/flam_$name/eval/metrics.json" "$OUT/metrics_$name.json" 2>/dev/null
  grep "PSNR.*t=1 \|token accuracy.*t=1\|Delta PSNR\|perplexity\|disentangle\|^step " \
    "$OUT/flam_$name.log" | tail -n 14
done
fi
if [ "$PAPER_SLICE" -gt 0 ]; then
  echo "== a $PAPER_SLICE s slice of experiments/$PAPER_SCRIPT"
  timeout "$(left "$PAPER_SLICE")" $PY experiments/$PAPER_SCRIPT --root="$WORK/experiments" \
    > "$OUT/paper_slice.log" 2>&1
  echo "slice: rc $? (124: stopped at the slice's end; the same call resumes it)"
  grep "^\[" "$OUT/paper_slice.log" | tail -n 5
  cp "$WORK"/experiments/*/results.md "$OUT/" 2>/dev/null
fi
echo "device_learning: figures in $OUT"

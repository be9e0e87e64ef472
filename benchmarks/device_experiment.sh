#!/usr/bin/env bash
# One experiment script's runs trained on one GPU, evaluated and reported, time-boxed and
# resumable (issue 9: "where a GPU is available, use it"):
#   1. the datasets and tokenizers (`--only=tokenizer`);
#   2. every run of $LABELS x $SEEDS (`--only=<label> --seeds=<s> --train_only`), $JOBS
#      processes at a time, until $TRAIN_DEADLINE; a run stopped there checkpoints (SIGTERM);
#   3. the evaluation of each label whose runs all finished (`--only=<label>`), then the
#      report (the script without --only; every evaluation is cached by then);
#   4. $OUT/results.tar.gz (results, evaluations, logs, run info, TensorBoard, the last
#      pictures, nvidia-smi samples) and $OUT/checkpoints.tar.gz.part-* (the latest step of
#      the $KEEP_CKPT runs and the tokenizer, in 15 MB parts: `cat` them and untar at / to
#      resume on another machine or re-evaluate).
# Measured on an H200 (2026-11-29, the cpu setting x3, batch 8): one FLAM run alone trains
# at ~150 steps/s with the GPU mostly idle (nvidia-smi every 5 s: mean 14%; the step is
# bound by the host); 15 runs at once (JOBS=15) kept it busier (mean 46%) at 16-25
# steps/s each in steady state, ~2x the throughput in all, but their 15 token caches and
# compilations at once took most of a 6-minute window (FLAM reached step 1100 of 9000).
# So JOBS=1 is the default for short calls; more pays for runs of many minutes each.
# Idempotent like experiments/: a second call with the same $WORK skips what is finished.
#
#   SCRIPT=table1.py SETTING=cpu STEPS_SCALE=3 bash benchmarks/device_experiment.sh
#
# Needs what benchmarks/device_check.sh needs (it installs the same carried wheels).
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/device_lib.sh  # PY, OUT, WHEELS defaults; left, install_carried_wheels.
WORK=${WORK:-/tmp/flam_device_experiment}
SCRIPT=${SCRIPT:-table1.py}
SETTING=${SETTING:-cpu}
STEPS_SCALE=${STEPS_SCALE:-1}
SEEDS=${SEEDS:-0,1,2}
LABELS=${LABELS:-wm,flam,lam,lam_joint,oc_lam}
JOBS=${JOBS:-1}  # Training processes at a time.
KEEP_CKPT=${KEEP_CKPT:-flam,lam}  # Labels whose checkpoints come back (size: $OUT's limits).
TRAIN_DEADLINE=${TRAIN_DEADLINE:-380}  # Seconds from the start when training stops.
DEADLINE=${DEADLINE:-530}  # Seconds from the start when evaluation stops.
# NO_REPORT=1: evaluate the labels but write no report (e.g. when $LABELS are some columns).
mkdir -p "$OUT" "$WORK/logs"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false

install_carried_wheels device_experiment
$PY -c "import jax; print('device_experiment:', jax.devices(), 'jax', jax.__version__)"

if command -v nvidia-smi > /dev/null; then  # GPU utilisation and memory every 5 s.
  (nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 \
    > "$WORK/logs/nvidia_smi.csv" 2>&1 &)  # Not a job of this shell: $JOBS counts runs.
fi
EXP=($PY experiments/$SCRIPT --setting="$SETTING" --steps_scale="$STEPS_SCALE"
     --root="$WORK/results" --runs_root="$WORK/runs")
IFS=, read -ra labels <<< "$LABELS"
IFS=, read -ra seeds <<< "$SEEDS"

echo "== datasets and tokenizers ($SECONDS s)"
timeout "$(left 600 "$TRAIN_DEADLINE")" "${EXP[@]}" --seeds="${seeds[0]}" --only=tokenizer \
  > "$WORK/logs/tokenizer.log" 2>&1
echo "tokenizer: rc $?"; grep "^\[" "$WORK/logs/tokenizer.log" | tail -n 3

echo "== ${#labels[@]} labels x ${#seeds[@]} seeds, $JOBS at a time ($SECONDS s)"
pids=()
for label in "${labels[@]}"; do
  for seed in "${seeds[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
    timeout "$(left 3600 "$TRAIN_DEADLINE")" "${EXP[@]}" --seeds="$seed" --only="$label" \
      --train_only > "$WORK/logs/train_${label}_$seed.log" 2>&1 &
    pids+=($!)
  done
done
for pid in "${pids[@]}"; do wait "$pid"; done
for f in "$WORK"/logs/train_*.log; do
  echo "$(basename "$f" .log): $(grep -o '^Stage lam [a-z]* at step [0-9]*\|finished at step [0-9]*\|preempted' "$f" | tail -n 1)"
done

echo "== evaluation of every finished label, in parallel ($SECONDS s)"
finished() {  # Did every seed of label $1 finish training?
  local seed
  for seed in "${seeds[@]}"; do
    grep -q "Stage lam finished\|seed $seed: finished at step" "$WORK/logs/train_${1}_$seed.log" || return 1
  done
}
pids=(); unfinished=()
for label in "${labels[@]}"; do
  if ! finished "$label"; then unfinished+=("$label"); continue; fi
  timeout "$(left 3600 "$DEADLINE")" "${EXP[@]}" --seeds="$SEEDS" --only="$label" \
    > "$WORK/logs/eval_$label.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
if [ "${#unfinished[@]}" -gt 0 ]; then
  echo "not finished by TRAIN_DEADLINE (no report; call again with the same WORK): ${unfinished[*]}"
elif [ -n "${NO_REPORT:-}" ]; then
  echo "NO_REPORT: evaluations cached in $WORK/runs/*/evals"
else
  echo "== report ($SECONDS s)"
  timeout "$(left 3600 "$DEADLINE")" "${EXP[@]}" --seeds="$SEEDS" > "$WORK/logs/report.log" 2>&1
  echo "report: rc $?"; sed -n '/^# /,$p' "$WORK/logs/report.log" | head -n 40
fi

echo "== packing ($SECONDS s)"
$PY - "$WORK" "$OUT" "$KEEP_CKPT" <<'EOF'
import os, sys, tarfile
work, out, keep = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
runs = os.path.join(work, "runs")
def latest(ckpt_dir):
  steps = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()]
  return str(max(steps)) if steps else None
small, ckpts = [], []
for dirpath, dirnames, filenames in os.walk(work):
  parts = os.path.relpath(dirpath, runs).split(os.sep)  # <setting>/<group>/...
  dirnames[:] = [d for d in dirnames if d not in ("tokens", "jax_cache")
                 and not (len(parts) == 1 and parts[0] != ".." and d.startswith("data_"))]
  if os.path.basename(dirpath) == "checkpoints":
    group = parts[1] if len(parts) > 1 else ""
    step = latest(dirpath)
    if step and (group.startswith("tokenizer_") or group.rsplit("_", 1)[0] in keep):
      ckpts.append(os.path.join(dirpath, step))
    dirnames[:] = []
  elif os.path.basename(dirpath) == "images":  # The last picture of each kind.
    last = {f.rsplit("_", 1)[0]: f for f in sorted(filenames) if f.endswith(".png")}
    small += [os.path.join(dirpath, f) for f in last.values()]
  else:
    small += [os.path.join(dirpath, f) for f in filenames
              if not f.endswith(".array_record") and f != "checkpoints.tar.gz"]
with tarfile.open(os.path.join(out, "results.tar.gz"), "w:gz") as tar:
  for path in small:
    tar.add(path)
with tarfile.open(os.path.join(work, "checkpoints.tar.gz"), "w:gz") as tar:
  for path in ckpts:
    tar.add(path)
print(f"packed {len(small)} files and {len(ckpts)} checkpoints")
EOF
split -b 15M "$WORK/checkpoints.tar.gz" "$OUT/checkpoints.tar.gz.part-"
ls -la "$OUT"
echo "device_experiment: done in $SECONDS s"

#!/usr/bin/env bash
# One-shot check of a CUDA machine, about 8 minutes on one H100/H200. Run from anywhere:
#     bash bench/gpu_check.sh        # results in bench/gpu_results.csv and bench/gpu_check.log (+ $OUT if set)
# Steps: the preflight (utils.tools.doctor); the golden conformance tests on CUDA; the Triton kernel tests on the GPU; the paper's Table 8 setting
# (maxformer_10_768, T=1, batch 32, 224x224; A30: train 0.179 s/iter 15,431 MB, inference 0.044 s 4,354 MB);
# the paper's T=4 ImageNet setting in bf16 at the largest batch the memory planner says fits (else 32),
# eager and compiled; fp16 autocast; a single-GPU torchrun train.py on synthetic ImageNet-shaped data,
# stopped with SIGTERM and resumed; train.py in fp16 with GradScaler. Every step that fails is printed and
# counted, the summary lists planned vs measured peak memory per setting, and the exit status is the number
# of failed steps (capped at 100); without a usable CUDA device it prints one line and exits 1.
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
CSV=${CSV:-bench/gpu_results.csv}
LOG=${LOG:-bench/gpu_check.log}
STEPS=${STEPS:-5}
CFG=imagenet/10_768_t4.yaml

if ! problem=$($PY -c "from utils.training.cuda_env import cuda_problem; p = cuda_problem(); print((p or '').split(';')[0]); raise SystemExit(bool(p))" 2>&1); then
  echo "gpu_check: no usable CUDA device, nothing checked: ${problem:-python or torch failed to start}"
  exit 1
fi

: > "$LOG"
FAILED=()
MEMORY=()
say() { echo "== $*" | tee -a "$LOG"; }
fail() { echo "FAILED: $*" | tee -a "$LOG"; FAILED+=("$*"); }

step() {  # step <label> <timeout s> <command...>: run, log, count a failure
  local label=$1 t=$2; shift 2
  say "$label"
  timeout "$t" "$@" 2>&1 | tee -a "$LOG"
  local rc=$?
  if [ "$rc" -ne 0 ]; then fail "$label (exit $rc$([ "$rc" -eq 124 ] && echo ", timed out after ${t}s"))"; fi
  return "$rc"
}

planned_mb() {  # planned_mb <train.py config args...>: the memory planner's peak in MB, or n/a
  timeout 120 $PY - "$@" 2>>"$LOG" <<'EOF' || echo n/a
import sys
from utils.config import parse_config
from utils.training.memory_plan import plan_memory
print(round(plan_memory(parse_config(sys.argv[1:])) / 2**20))
EOF
}

measure() {  # measure <label> <timeout s> "<plan config args>" <benchmark args...>
  local label=$1 t=$2 plan_args=$3; shift 3
  say "$label"
  local line
  line=$(timeout "$t" $PY benchmark.py --device cuda --warmup 2 --steps "$STEPS" --csv "$CSV" "$@" 2>>"$LOG" \
         | grep '^{' | tail -1)
  local rc=$?
  echo "${line:-no result}" | tee -a "$LOG"
  local planned=n/a
  if [ -n "$plan_args" ]; then planned=$(planned_mb $plan_args | tail -1); fi
  if [ "$rc" -ne 0 ] || [ -z "$line" ]; then
    fail "$label (exit $rc$([ "$rc" -eq 124 ] && echo ", timed out after ${t}s"))"
    MEMORY+=("$(printf '%-44s planned %8s MB  measured   failed' "$label" "$planned")")
    return 1
  fi
  local measured ms
  measured=$(echo "$line" | $PY -c "import json, sys; print(json.loads(sys.stdin.read())['peak_mem_mb'])")
  ms=$(echo "$line" | $PY -c "import json, sys; print(json.loads(sys.stdin.read())['ms_per_step'])")
  MEMORY+=("$(printf '%-44s planned %8s MB  measured %8s MB  %s ms/step' "$label" "$planned" "$measured" "$ms")")
}

say "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"

step "preflight: python -m utils.tools.doctor -c $CFG --dataset synthetic" 180 \
  $PY -m utils.tools.doctor -c "$CFG" --dataset synthetic

step "golden conformance on CUDA (spikingjelly's GPU kernels and the fast path)" 300 \
  $PY -m pytest -q -x tests/test_fastpath.py -k cuda

if [ -f tests/test_triton_kernels.py ]; then
  step "Triton kernel tests on the GPU" 240 $PY -m pytest -q -x tests/test_triton_kernels.py
else
  say "Triton kernel tests: tests/test_triton_kernels.py is not in this version, skipped"
fi

say "Table 8: maxformer_10_768, T=1, batch 32, 224x224"
T8="--model maxformer_10_768 --T 1 -b 32 --img-size 224"
P8="-c $CFG --T 1 --batch-size 32 --fastpath false"
measure "T=1 b32 train fp32 eager" 150 "$P8 --amp none" $T8 --mode train --no-fastpath
measure "T=1 b32 train bf16 eager" 150 "$P8 --amp bf16" $T8 --mode train --no-fastpath --amp bf16
measure "T=1 b32 infer fp32 eager" 150 "" $T8 --mode infer --no-fastpath

BATCH=32
if $PY benchmark.py --help 2>/dev/null | grep -q -- '--max-batch'; then
  say "memory planner: largest batch for T=4 bf16 training on this GPU"
  planner=$(timeout 120 $PY benchmark.py --plan-memory --max-batch --device cuda \
            --model maxformer_10_768 --T 4 --img-size 224 --amp bf16 --mode train --no-fastpath 2>>"$LOG" | tee -a "$LOG")
  found=$(echo "$planner" | sed -nE 's/.*largest batch that fits [^:]*: ([0-9]+).*/\1/p' | tail -1)
  if [ -n "$found" ] && [ "$found" -gt 0 ]; then BATCH=$found; else fail "memory planner: no largest batch found"; fi
else
  say "memory planner: benchmark.py has no --max-batch in this version; batch 32"
fi
say "paper's T=4 ImageNet setting: maxformer_10_768, T=4, bf16, batch $BATCH, 224x224"
T4="--model maxformer_10_768 --T 4 -b $BATCH --img-size 224"
P4="-c $CFG --T 4 --batch-size $BATCH --amp bf16"
measure "T=4 b$BATCH train bf16 eager" 180 "$P4 --fastpath false" $T4 --mode train --no-fastpath --amp bf16
measure "T=4 b$BATCH train bf16 fast path (compiled)" 300 "$P4" $T4 --mode train --amp bf16
measure "T=4 b32 train fp16 eager" 150 "-c $CFG --T 4 --batch-size 32 --amp fp16 --fastpath false" \
  --model maxformer_10_768 --T 4 -b 32 --img-size 224 --mode train --no-fastpath --amp fp16

RUN=$(mktemp -d)
TRAIN=(train.py -c "$CFG" --dataset synthetic --synthetic-size 1024 64 --batch-size 32 --epochs 2
       --warmup-epochs 0 --max-train-batches 12 --max-eval-batches 1 --log-interval 2 --progress false
       --plot false --tensorboard false --fastpath false --output "$RUN")
say "torchrun --nproc_per_node 1 train.py (T=4, bf16, synthetic 224x224): SIGTERM in epoch 1, then --resume auto"
$PY -m torch.distributed.run --standalone --nproc_per_node 1 "${TRAIN[@]}" --experiment resume > "$RUN/first.log" 2>&1 &
pid=$!
for _ in $(seq 240); do  # wait for epoch 0 to finish, then stop inside epoch 1
  grep -q "epoch   0/1" "$RUN/first.log" 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 1
done
sleep 2
kill -TERM "$pid" 2>/dev/null
wait "$pid"
cat "$RUN/first.log" >> "$LOG"
tail -3 "$RUN/first.log"
if ! grep -q "epoch   0/1" "$RUN/first.log" || [ ! -f "$RUN/resume/last.pth.tar" ]; then
  fail "torchrun train.py: epoch 0 did not finish with a checkpoint (log in $LOG)"
else
  step "torchrun train.py --resume auto" 300 $PY -m torch.distributed.run --standalone --nproc_per_node 1 "${TRAIN[@]}" \
    --experiment resume --resume auto \
    && { grep -q "resumed from" "$LOG" && [ "$(wc -l < "$RUN/resume/summary.csv")" -eq 3 ] \
         || fail "torchrun train.py --resume auto: no resume or not 2 epochs in summary.csv"; }
fi

step "train.py fp16 with GradScaler (T=4, synthetic 224x224, 8 steps)" 300 \
  $PY "${TRAIN[@]}" --amp fp16 --epochs 1 --max-train-batches 8 --experiment fp16 \
  && { $PY -c "import sys; from utils.training.checkpoint import read_training_state as r; s = r(sys.argv[1]); \
sys.exit(0 if s.get('scaler') else 1)" "$RUN/fp16/last.pth.tar" 2>>"$LOG" \
       || fail "train.py fp16: no GradScaler state in the checkpoint"; }
rm -rf "$RUN"

say "planned vs measured peak memory (torch.cuda.max_memory_allocated; planner: utils.training.memory_plan)"
printf '%s\n' "${MEMORY[@]}" | tee -a "$LOG"
if [ -n "${OUT:-}" ]; then cp "$CSV" "$LOG" "$OUT"/ 2>/dev/null; fi
if [ "${#FAILED[@]}" -gt 0 ]; then
  say "${#FAILED[@]} step(s) FAILED:"
  printf '  %s\n' "${FAILED[@]}" | tee -a "$LOG"
  n=${#FAILED[@]}
  exit $(( n > 100 ? 100 : n ))
fi
say "all steps passed; results in $CSV, log in $LOG"

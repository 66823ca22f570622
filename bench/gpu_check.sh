#!/usr/bin/env bash
# One-shot GPU check. Run from the repository root on a CUDA machine:
#     bash bench/gpu_check.sh            # results in bench/gpu_results.csv (+ $OUT if set)
# (a) golden conformance on CUDA (spikingjelly's GPU kernels and the fast path);
# (b) the paper's Table 8 setting (maxformer_10_768, T=1, batch 32, 224x224; A30: train 0.179 s/iter
#     15,431 MB, inference 0.044 s 4,354 MB) plus maxformer_cifar T=4 b128 and maxformer_dvs T=16 b16,
#     eager vs fast path, fp32 / bf16 / fp16, compile on and off.
# Budget: about 10 minutes on one H100/H200-class GPU. Each benchmark line is independent: a failure is
# logged and the script goes on.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-python}
CSV=${CSV:-bench/gpu_results.csv}
LOG=${LOG:-bench/gpu_check.log}
STEPS=${STEPS:-10}
: > "$LOG"
say() { echo "== $*" | tee -a "$LOG"; }

say "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"
$PY -c "import torch, spikingjelly; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" 2>&1 | tee -a "$LOG"
$PY -c "from models.neurons import neuron_implementation as n; print(n('lif', 'cuda'))" 2>&1 | tee -a "$LOG"

say "(a) golden conformance on CUDA"
timeout 300 $PY -m pytest -q -x tests/test_fastpath.py -k cuda 2>&1 | tail -15 | tee -a "$LOG"

bench() {  # bench <timeout s> <benchmark args...>
  local t=$1; shift
  echo "-- $*" >> "$LOG"
  timeout "$t" $PY benchmark.py --device cuda --warmup 3 --steps "$STEPS" --csv "$CSV" "$@" 2>>"$LOG" \
    | grep '^{' | tail -1 | tee -a "$LOG" || echo "FAILED or timed out: $*" | tee -a "$LOG"
}

say "(b) Table 8: maxformer_10_768, T=1, batch 32, 224x224"
for mode in train infer; do
  bench 120 --model maxformer_10_768 --T 1 -b 32 --img-size 224 --mode $mode --eager
  bench 120 --model maxformer_10_768 --T 1 -b 32 --img-size 224 --mode $mode --eager --amp bf16
  bench 120 --model maxformer_10_768 --T 1 -b 32 --img-size 224 --mode $mode --eager --amp fp16
  bench 240 --model maxformer_10_768 --T 1 -b 32 --img-size 224 --mode $mode --amp bf16
  bench 240 --model maxformer_10_768 --T 1 -b 32 --img-size 224 --mode $mode
done
bench 120 --model maxformer_10_768 --T 1 -b 32 --img-size 224 --mode train --eager --grad-checkpointing
bench 240 --model maxformer_10_768 --T 1 -b 32 --img-size 224 --mode train --grad-checkpointing --compact-spikes

say "maxformer_cifar T=4 batch 128 and maxformer_dvs T=16 batch 16"
for mode in train infer; do
  bench 90 --model maxformer_cifar --T 4 -b 128 --img-size 32 --mode $mode --eager
  bench 90 --model maxformer_cifar --T 4 -b 128 --img-size 32 --mode $mode --eager --amp bf16
  bench 180 --model maxformer_cifar --T 4 -b 128 --img-size 32 --mode $mode --amp bf16
  bench 90 --model maxformer_dvs --T 16 -b 16 --img-size 128 --mode $mode --eager
  bench 90 --model maxformer_dvs --T 16 -b 16 --img-size 128 --mode $mode --eager --amp bf16
  bench 180 --model maxformer_dvs --T 16 -b 16 --img-size 128 --mode $mode --amp bf16
done

say "done: $CSV, $LOG"
if [ -n "${OUT:-}" ]; then cp "$CSV" "$LOG" "$OUT"/ 2>/dev/null || true; fi

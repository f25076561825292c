#!/usr/bin/env bash
# Every GPU measurement in one call (about 8 minutes on one H200 before the degradation study,
# which adds STUDY_MINUTES, default 2), then one table. `bench/gpu.sh --smoke` runs the same steps
# tiny, on the CPU, so it is tested here.
#   DATA=path/to/cifar10-jpeg.tar.gz OUT=dir PYTHON=python3 STUDY_MINUTES=2 bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
PY=${PYTHON:-python3}
OUT=${OUT:-bench/results/gpu}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
rk() { "$PY" -m resnetkit "$@"; }

if [ "$SMOKE" = 1 ]; then
  DATA=synthetic:256; DEV=cpu; STEPS=1; SEEDS=1; BS=8
  EP="--epochs 1 --max-steps 2 --batch-size $BS"; B30="--epochs 1 --max-steps 2"; B120="$B30"
  TUT="--tutorial-batch-size $BS --warmup 1"
  STUDY="--depths 8 --epochs 1 --subset 64 --test-subset 32 --train-eval 32 --batch-size $BS"
else
  DATA=${DATA:-../shared/data/cifar10-jpeg.tar.gz}
  [ -f "$DATA" ] || DATA=shared/data/cifar10-jpeg.tar.gz
  DEV=cuda; STEPS=30; SEEDS=5; EP="--compile"; B30="--budget-seconds 30 --compile"; B120="--budget-seconds 120 --compile"
  TUT=""; BS=512
  # the paper's setting: the full 50k training set, batch 128, the paper's initialisation
  STUDY="--depths 20 56 --budget-minutes ${STUDY_MINUTES:-2}"
fi
echo "== data: $DATA, device: $DEV"
rk bench throughput --model resnet18_cifar --data "$DATA" --device "$DEV" --batch-size "$BS" --steps "$STEPS" \
  --json "$OUT/throughput_resnet18_cifar.json" $TUT
rk bench throughput --model resnet20 --data "$DATA" --device "$DEV" --batch-size "$BS" --steps "$STEPS" \
  --json "$OUT/throughput_resnet20.json" $TUT
rk bench time-to-accuracy --recipe fast --data "$DATA" --device "$DEV" --seeds "$SEEDS" $EP \
  --out "$OUT/runs/fast" --json "$OUT/tta_fast.json"
rk bench time-to-accuracy --recipe cpu-fast --data "$DATA" --device "$DEV" --seeds "$SEEDS" $EP \
  --out "$OUT/runs/cpu_fast" --json "$OUT/tta_cpu_fast.json"
rk bench time-to-accuracy --recipe default --model resnet18_cifar --data "$DATA" --device "$DEV" --seeds 1 $B30 \
  --batch-size "$BS" --out "$OUT/runs/r18_30s" --json "$OUT/tta_resnet18_30s.json"
rk bench time-to-accuracy --recipe default --model resnet18_cifar --data "$DATA" --device "$DEV" --seeds 1 $B120 \
  --batch-size "$BS" --out "$OUT/runs/r18_120s" --json "$OUT/tta_resnet18_120s.json"
rk study degradation --data "$DATA" --device "$DEV" $STUDY --overwrite --out "$OUT/study-degradation"
"$PY" bench/summarize.py "$OUT"

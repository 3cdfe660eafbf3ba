#!/usr/bin/env bash
# Retrain the detector on this 2-core CPU within one working session: two fold models, each
# warm-started from the shipped weights and trained on every labelled head except one half of
# the heads the shipped model never saw; the shipped model is the mean of the two (one ONNX graph).
#
# Usage: scripts/train_detector_cpu.sh OUT_DIR [SECONDS] [PYTHON]
#
# Why two folds: every head that is new to the shipped model is then scored by a network that
# never saw that person (benchmarks/evaluate_detector.py --weights OUT/foldA/detector.onnx
# OUT/foldB/detector.onnx), and the ensemble of both has seen every person.  The heads the
# shipped model already trained on keep their held-out figures from its own 5-fold run.
#
# The real heads are put on the network's box once, into OUT/boxes96.npz (a cut-down copy of
# the scans: it stays in OUT, never in the repository).  Each fold trains on 64^3 patches cut
# from augmented 96^3 boxes (--patch 64), warm-started from the shipped ONNX weights (--resume),
# with the paper's loss, augmentation, per-epoch validation and 5-epoch early stopping; both
# folds run at once with one thread each.  RESUME_FROM=DIR continues each fold from DIR/<fold>/best.pt
# (LR, FOREGROUND, SAMPLES and PATIENCE set the learning rate, --foreground-probability, draws per
# epoch and the early-stopping patience in epochs, default 5).  RESUME_MEMBERS=DIR starts each fold
# from its own member of the shipped graph, DIR/<fold>.onnx as cut by
# `python scripts/split_detector_members.py --out DIR` (a fine-tune that keeps each fold's heads unseen:
# the shipped graph as a whole has seen every person).  CLASS_WEIGHTS=B,E,N,A is written into the
# fold exports' and the ensemble's cards (default: defacer train's).  SEED_BASE sets the folds'
# seeds (SEED_BASE+1, SEED_BASE+2; default 50).
set -euo pipefail
OUT=${1:?usage: scripts/train_detector_cpu.sh OUT_DIR [SECONDS] [PYTHON]}
SECONDS_LIMIT=${2:-3600}
PY=${3:-python3}
REPO=$(cd "$(dirname "$0")/.." && pwd)
DATA=${DATA:-$REPO/../shared/data}
START=${START:-$REPO/src/defacer/models/detector.onnx}
mkdir -p "$OUT"
cp "$START" "$OUT/start.onnx"  # the weights both folds start from (the shipped file is replaced at the end)
cp "${START%.onnx}.json" "$OUT/start.json"
if [ ! -f "$OUT/boxes96.npz" ]; then
  "$PY" -m defacer train --data "$DATA" --labels-dir "$REPO/reference_labels" --cache "$OUT/boxes96.npz" \
      --epochs 0 --phantoms 0 --out "$OUT/cache-only" >"$OUT/cache.log" 2>&1
fi
COMMON=(--cache "$OUT/boxes96.npz" --validate-on-train --phantoms 8 --batch-size 2
        --epochs 400 --lr "${LR:-1e-3}" --patience "${PATIENCE:-5}" --time-limit "$SECONDS_LIMIT" --threads 1 --patch 64
        --foreground-probability "${FOREGROUND:-0.7}" --samples-per-epoch "${SAMPLES:-48}")
declare -A FOLDS=(
  [foldA]="ixi012_T1w_2mm ixi014_T1w_2mm ixi033_T1w_2mm ixi039_T1w_2mm mricrogl_CT contecore2_mean_head_2mm"
  [foldB]="ixi013_T1w_2mm ixi015_T1w_2mm ixi034_T1w_2mm invesalius-ct0051_CT uih_T1w_dicom"
)
seed=${SEED_BASE:-50}
weights=()
[ -z "${CLASS_WEIGHTS:-}" ] || weights=(--class-weights "$CLASS_WEIGHTS")
pids=()
for name in foldA foldB; do
  seed=$((seed + 1))
  if [ -n "${RESUME_FROM:-}" ]; then resume="$RESUME_FROM/$name/best.pt"
  elif [ -n "${RESUME_MEMBERS:-}" ]; then resume="$RESUME_MEMBERS/$name.onnx"
  else resume="$OUT/start.onnx"; fi
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 timeout $((SECONDS_LIMIT + 900)) "$PY" -m defacer train "${COMMON[@]}" \
      --seed $seed --out "$OUT/$name" --exclude ${FOLDS[$name]} \
      --resume "$resume" "${weights[@]}" \
      --export "$OUT/$name/detector.onnx" >"$OUT/$name.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for name in foldA foldB; do
  echo "== $name: $(grep -c '"epoch"' "$OUT/$name.log") epochs; last: $(grep '"epoch"' "$OUT/$name.log" | tail -1)"
done
[ $status -eq 0 ] || exit $status
"$PY" -m defacer train --ensemble "$OUT/foldA/best.pt" "$OUT/foldB/best.pt" --export "$OUT/ensemble/detector.onnx" \
    --out "$OUT/ensemble" "${weights[@]}"
echo "shipped candidate: $OUT/ensemble/detector.onnx (copy it and its .json to src/defacer/models/)"

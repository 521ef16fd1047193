#!/usr/bin/env bash
# Our row of the 2D Harvard table (docs/BENCHMARKS.md (a)): the 21 CDDFuse test pairs, fused by
# the 2D model of benchmarks/train_shipped.sh part (b) (not shipped: AANLIB licence), x̂0
# guidance with the stroke preset's weights but gamma = 0 (no lesion masks in this data, and
# the 2D lesion head is untrained), whole 256² images, automatic masks; then the classical
# baselines on the same pairs and the comparison.
#   bash benchmarks/bench2d_ours.sh CKPT [OUT]      (CKPT e.g. RUNS/harvard2d/harvard2d-fp16.pt)
set -euo pipefail
CKPT=${1:?usage: bench2d_ours.sh CKPT [OUT]}
OUT=${2:-bench2d_ours}
DATA=${HARVARD:-"$(cd "$(dirname "$0")/.." && pwd)/../shared/data/harvard_mri_ct"}
CASES='16_00[7-9],16_01[0-6],21_00[6-9],21_01[0-6]'
mkdir -p "$OUT"
clinfuse evaluate --method clinfuse --data "$DATA" --cases "$CASES" --checkpoint "$CKPT" \
  --preset stroke --option gamma=0 --option window=whole --out "$OUT/ours_x0" --overwrite
clinfuse benchmark --data "$DATA" --cases "$CASES" --out "$OUT/baselines" --overwrite
clinfuse evaluate --compare "$OUT/ours_x0" "$OUT"/baselines/*/ | tee "$OUT/compare.md"

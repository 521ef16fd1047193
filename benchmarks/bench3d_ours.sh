#!/usr/bin/env bash
# 3D phantom table of docs/BENCHMARKS.md "(c)": every baseline and our model (unguided, guided on
# x_t as Algorithm 1 writes it, guided on x̂0) on 10 held-out phantoms at the training geometry
# (64×64×48 at 3 mm; seeds 1000–1009, never trained on), exact brain/bone masks, the lesion mask
# that guides predicted by the lesion head (never the reference).
#   bash benchmarks/bench3d_ours.sh [OUT]        (default ./bench3d_ours)
set -euo pipefail
OUT=${1:-bench3d_ours}
mkdir -p "$OUT"
[ -f "$OUT/phantoms/manifest.csv" ] || clinfuse synth --n 10 --shape 48 64 64 --spacing 3 3 3 \
  --seed 1000 --contrast mixed --lesion ischaemic --out "$OUT/phantoms"
clinfuse benchmark --data "$OUT/phantoms" --out "$OUT/baselines" --overwrite
common=(--method clinfuse --data "$OUT/phantoms" --preset stroke --option window=whole --overwrite)
clinfuse evaluate "${common[@]}" --out "$OUT/ours_x0" --option mode=x0
clinfuse evaluate "${common[@]}" --out "$OUT/ours_xt" --option mode=xt
clinfuse evaluate "${common[@]}" --out "$OUT/ours_unguided" --option eta=0
clinfuse evaluate --compare "$OUT/ours_x0" "$OUT/ours_xt" "$OUT/ours_unguided" \
  "$OUT"/baselines/*/ | tee "$OUT/compare.md"

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

# Robustness: the same 10 phantoms (same seeds, so the same anatomy) with the CT moved rigidly by
# 2 mm and 2 degrees (masks stay on the MRI grid, so the ROI composite is no longer exact), and
# with automatic instead of exact brain/bone masks (mask files removed; the lesion mask is kept
# only as the reference for lesion metrics).
[ -f "$OUT/phantoms_misreg2/manifest.csv" ] || clinfuse synth --n 10 --shape 48 64 64 \
  --spacing 3 3 3 --seed 1000 --contrast mixed --lesion ischaemic --misregister 2 2 \
  --out "$OUT/phantoms_misreg2"
if [ ! -d "$OUT/phantoms_automasks" ]; then
  cp -r "$OUT/phantoms" "$OUT/phantoms_automasks"
  rm "$OUT/phantoms_automasks"/manifest.csv "$OUT/phantoms_automasks"/*/{brain,bone}.nii.gz
fi
for set in misreg2 automasks; do
  clinfuse benchmark --data "$OUT/phantoms_$set" --out "$OUT/baselines_$set" --overwrite
  clinfuse evaluate "${common[@]/$OUT\/phantoms/$OUT/phantoms_$set}" --out "$OUT/ours_x0_$set" \
    --option mode=x0
  clinfuse evaluate --compare "$OUT/ours_x0_$set" "$OUT"/baselines_$set/*/ \
    | tee "$OUT/compare_$set.md"
done

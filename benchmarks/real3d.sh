#!/usr/bin/env bash
# Real-anatomy 3D benchmark (issue 13): both real test cases, every baseline, then ours
# (shipped checkpoint unless CKPT is set), exact / automatic masks, CT moved 2 mm / 2 deg, and the
# robustness curve 0-3 mm/deg with and without rigid registration. Fusions are cached in WORK,
# so the second call only fuses ours and rescoring is free. Heavy: ours takes minutes per fuse
# and each registration minutes on a loaded 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/clinfuse_real3d}
OUT=${OUT:-benchmarks/results/real3d.md}
CKPT_ARGS=()
if [[ -n "${CKPT:-}" ]]; then CKPT_ARGS=(--checkpoint "$CKPT"); fi
python benchmarks/real3d.py --methods average,weighted,max,laplacian,wavelet,composite \
  --curve "" --work "$WORK" --out "$OUT"
python benchmarks/real3d.py --work "$WORK" --out "$OUT" "${CKPT_ARGS[@]}" "$@"

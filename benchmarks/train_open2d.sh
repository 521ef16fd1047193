#!/usr/bin/env bash
# Reproduce the shipped 2D model (src/clinfuse/checkpoints/open2d.pt, the default of `clinfuse
# fuse` on PNG pairs; issue 13 item 5), CPU, resumable:
#   bash benchmarks/train_open2d.sh [RUNS_DIR] [STEPS]      (default /work/runs, 3000)
# (a) data: axial slices of real-anatomy pairs from openly licensed volumes only (C-STAR MIT,
#     RIRE CC BY 3.0 US) plus phantoms (benchmarks/build_2d_data.py; ~8 min, 3.4 GB peak RSS).
# (b) `clinfuse train --config open2d` (split by person: RIRE and 3 phantoms validate); a second
#     call resumes from RUN/last.ckpt after any interruption. Logs in RUNS/logs/open2d.log.
# (c) the EMA weights of RUN/best.ckpt (best validation ROI-SSIM) exported as float16.
# The shipped file is replaced only by hand, after comparing on the validation slices.
set -euo pipefail
RUNS=${1:-/work/runs}
STEPS=${2:-3000}
REPO="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$RUNS/logs"
[ -f "$RUNS/data2d/all/manifest.csv" ] || python "$REPO/benchmarks/build_2d_data.py" "$RUNS/data2d" \
    --realhead-version 1
if [ -f "$RUNS/open2d/last.ckpt" ]; then ARGS=(--resume "$RUNS/open2d/last.ckpt");
else ARGS=(--config open2d); fi
clinfuse train "${ARGS[@]}" --data "$RUNS/data2d/all" --out "$RUNS/open2d" --device cpu \
    --threads 2 --max-steps "$STEPS" --no-progress >> "$RUNS/logs/open2d.log" 2>&1
python - "$RUNS/open2d/best.ckpt" "$RUNS/open2d/open2d-fp16.pt" <<'PY'
import sys

from clinfuse.training.checkpoint import export_checkpoint

print(export_checkpoint(sys.argv[1], sys.argv[2], half=True))
PY
python -m clinfuse.training.plot "$RUNS/open2d"
echo "candidate: $RUNS/open2d/open2d-fp16.pt (copy to src/clinfuse/checkpoints/open2d.pt)"

#!/usr/bin/env bash
# Reproduce the two reference training runs of docs/TRAINING.md (CPU, background-friendly).
#   bash benchmarks/train_shipped.sh [RUNS_DIR]      (default /work/runs)
# Each run writes RUN/{config.yaml,split.json,metrics.csv,jitter.csv,tb/,last.ckpt,best.ckpt,
# curves.png}. On a shared CPU, --threads 1 per process avoids oversubscribed OpenMP threads.
set -euo pipefail
RUNS=${1:-/work/runs}
HARVARD=${HARVARD:-"$(cd "$(dirname "$0")/.." && pwd)/../shared/data/harvard_mri_ct"}
mkdir -p "$RUNS/logs"

# (a) 3D phantoms: 24 training phantoms 64x64x48 at 3 mm, mixed contrasts and lesion types
#     (seeds 0-23; the demo's held-out phantoms use seeds from 9000).
if [ ! -f "$RUNS/data/phantom3d_train/manifest.csv" ]; then
  clinfuse synth --n 24 --shape 48 64 64 --spacing 3 3 3 --seed 0 --contrast mixed \
    --lesion mixed --out "$RUNS/data/phantom3d_train"
fi
# The shipped checkpoint is best.ckpt at step 900 (then its lesion head is retrained, below).
( clinfuse train --config phantom3d-small --data "$RUNS/data/phantom3d_train" \
    --out "$RUNS/phantom3d-small" --device cpu --threads 1 --max-steps 900 --no-progress \
    > "$RUNS/logs/phantom3d-small.log" 2>&1
  # Lesion head on its own (docs/TRAINING.md): frozen denoiser, 60 further phantoms (seeds
  # 3000-3059, 40 with a lesion), then the float16 export that ships.
  [ -f "$RUNS/data/lesion_train/manifest.csv" ] || clinfuse synth --n 60 --shape 48 64 64 \
    --spacing 3 3 3 --seed 3000 --contrast mixed --lesion mixed --out "$RUNS/data/lesion_train"
  clinfuse train-lesion --checkpoint "$RUNS/phantom3d-small/best.ckpt" \
    --data "$RUNS/data/lesion_train" --out "$RUNS/lesion" --x0-per-case 2 --threads 1 \
    --device cpu --export "$RUNS/lesion/phantom3d-fp16.pt" --overwrite \
    > "$RUNS/logs/lesion.log" 2>&1 ) &

# (b) 2D Harvard MRI-CT pairs, split by patient: 16 and 21 are test (never loaded), 37 validates.
nohup clinfuse train --config harvard2d --data "$HARVARD" \
  --out "$RUNS/harvard2d" --device cpu --threads 1 --max-steps 600 --no-progress \
  > "$RUNS/logs/harvard2d.log" 2>&1 &

wait
python -m clinfuse.training.plot "$RUNS/phantom3d-small"
python -m clinfuse.training.plot "$RUNS/harvard2d"

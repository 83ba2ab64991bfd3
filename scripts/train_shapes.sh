#!/usr/bin/env bash
# The exact recipe of the bundled shapes model (docs/MODEL.md). Every stage resumes from its
# run folder, so re-running this script after an interruption continues where it stopped.
# Usage: scripts/train_shapes.sh [RUNS_DIR]   (default /work/runs; outside the work tree)
set -euo pipefail
runs="${1:-/work/runs}"
mkdir -p "$runs"

latentdiff train autoencoder --preset shapes --output-dir "$runs/ae" \
  --steps 2000 --batch-size 16 --lr 1e-3 --warmup 100 --ema-decay 0.999 \
  --checkpoint-every 250 --no-progress

latentdiff train unet --preset shapes --autoencoder "$runs/ae" --output-dir "$runs/unet" \
  --cache-size 100000 --steps "${UNET_STEPS:-3000}" --batch-size 64 --lr 3e-4 --warmup 200 \
  --ema-decay 0.998 --checkpoint-every 250 --no-progress

mkdir -p latentdiff/assets/shapes
cp "$runs/unet/model/"{config.json,model.safetensors,tokenizer.json} latentdiff/assets/shapes/

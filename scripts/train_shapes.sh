#!/usr/bin/env bash
# The exact recipe of the bundled shapes model (docs/MODEL.md). Every stage resumes from its
# run folder, so re-running this script after an interruption continues where it stopped.
# Usage: [UNET_STEPS=N] scripts/train_shapes.sh [RUNS_DIR]   (default /work/runs, outside the
# work tree; UNET_STEPS defaults to 4000, the bundled weights; a larger N continues the run)
set -euo pipefail
runs="${1:-/work/runs}"
mkdir -p "$runs"

# Autoencoder: 750 steps at a constant 1e-3, then cosine decay to step 2000 (the second command
# resumes the first run's step-750 checkpoint with the new schedule).
ae_args=(--preset shapes --output-dir "$runs/ae" --batch-size 16 --lr 1e-3 --warmup 100
  --ema-decay 0.999 --checkpoint-every 250 --no-progress)
latentdiff train autoencoder "${ae_args[@]}" --steps 750
latentdiff train autoencoder "${ae_args[@]}" --steps 2000 --lr-schedule cosine

latentdiff train unet --preset shapes --autoencoder "$runs/ae" --output-dir "$runs/unet" \
  --cache-size 40000 --steps "${UNET_STEPS:-4000}" --batch-size 64 --lr 3e-4 --warmup 200 \
  --ema-decay 0.998 --checkpoint-every 250 --no-progress

mkdir -p latentdiff/assets/shapes
cp "$runs/unet/model/"{config.json,model.safetensors,tokenizer.json} latentdiff/assets/shapes/

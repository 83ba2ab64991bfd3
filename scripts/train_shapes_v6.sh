#!/usr/bin/env bash
# v6, in training (not yet the bundle): the shapes model retrained from scratch with the whole
# recipe the v1 → v5 cycles found, from step 0 — the token layout bias (preset shapes), the
# scene mix of v5's cache, v-prediction at zero terminal SNR — and representation alignment
# to the bundled CLIP's patch states (--repa-weight 0.5). Paired probes from scratch measured
# both ahead of v2's learning curve (docs/MODEL.md, "Representation alignment, from scratch").
# Budget: ~8 h of this machine in all: the autoencoder (scripts/train_shapes.sh's first command,
# 41 min on the old machine, ~0.4 h here), the cache (13 min), and 26,000 U-Net steps × 64 at
# ~65 samples/s (~7.1 h), resumed across sessions: rerunning this script continues from the
# last checkpoint.
# Usage: scripts/train_shapes_v6.sh AUTOENCODER_RUN [RUNS_DIR]   (default /work/runs/v6)
set -euo pipefail
ae="$1"
runs="${2:-/work/runs/v6}"
mkdir -p "$runs"

# 3e-4 after a 200-step warm-up, held to step 20,000, then a cosine to 0 at 26,000; EMA 0.998;
# uniform timesteps, plain v loss, 10 % empty captions; a 60,000-scene cache in v5's mix.
latentdiff train unet --autoencoder "$ae" --output-dir "$runs/unet" --cache-size 60000 \
  --scene-mix single=0.25,counting=0.3,two_object=0.45 --repa-weight 0.5 --batch-size 64 \
  --lr 3e-4 --warmup 200 --ema-decay 0.998 --steps 26000 --lr-schedule cosine \
  --cosine-from 20000 --checkpoint-every 500 --no-progress

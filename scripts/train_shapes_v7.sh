#!/usr/bin/env bash
# The recipe of v7, in training to replace v6 if it scores higher (docs/MODEL.md, "What limits
# v6"): v6's recipe on a latent space robust to a U-Net's small errors. v6 loses squares'
# corners at low noise, where its latents hold them as small features; this autoencoder is
# trained further on latents perturbed by noise of up to 0.3 of each channel's std, with a
# hinge on pixels drawn far from their colour. Every stage resumes from its run folder.
# Budget: the autoencoder and CLIP as for v6, the second autoencoder stage (1,500 steps × 16,
# about 25 min), the latent cache (13 min) and 26,000 U-Net steps × 64 (7.1 h at 65 samples/s).
# Usage: scripts/train_shapes_v7.sh [RUNS_DIR]   (default /work/runs/v7, outside the work tree)
set -euo pipefail
source "$(dirname "$0")/shapes_stages.sh"
runs="${1:-/work/runs/v7}"
mkdir -p "$runs"

# Autoencoder and CLIP (scripts/shapes_stages.sh), as bundled with v6.
train_shapes_autoencoder "$runs"
train_shapes_clip "$runs"

# Autoencoder, second stage: every weight trained on from the first stage's (a new latent
# space), decoding latents + s·std·ε with s ~ U[0, 0.3] per image, plus 100 × the colour hinge;
# 2e-4 after a 50-step warm-up, cosine to 0 at 1,500; EMA 0.995.
latentdiff train autoencoder --init-from "$runs/ae" --output-dir "$runs/ae_robust" \
  --batch-size 16 --lr 2e-4 --warmup 50 --lr-schedule cosine --steps 1500 --ema-decay 0.995 \
  --edge-weight 20 --hinge-weight 100 --latent-noise 0.3 --checkpoint-every 250 --no-progress

# U-Net (scripts/shapes_stages.sh): v6's command, on the second-stage autoencoder.
train_shapes_unet "$runs" "$runs/ae_robust"

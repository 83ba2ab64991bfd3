#!/usr/bin/env bash
# The exact recipe of the bundled shapes model, v7 (preset shapes; docs/MODEL.md), and of the
# bundled CLIP: v6's recipe (scripts/train_shapes_v6.sh) on a latent space robust to a U-Net's
# small errors. Every stage resumes from its run folder, so re-running this script after an
# interruption continues where it stopped. The lineage before v6 (v2 → v5, seven cycles) is
# scripts/train_shapes_v5.sh; the first model's is scripts/train_shapes_v1.sh.
# Budget, measured: the autoencoder (41 min) and CLIP (38 min) on the old 2-core AVX2 machine,
# the second autoencoder stage (1,500 steps × 16, about 25 min), the latent cache (15 min) and
# 26,000 U-Net steps × 64 at 60–65 samples/s (7.3 h) on the 2-core AVX-512 one.
# Usage: scripts/train_shapes.sh [RUNS_DIR]   (default /work/runs/v7, outside the work tree)
set -euo pipefail
source "$(dirname "$0")/shapes_stages.sh"
runs="${1:-/work/runs/v7}"
mkdir -p "$runs"

# Autoencoder and CLIP (scripts/shapes_stages.sh), as bundled with v6. The U-Net was aligned to
# the CLIP run's weights as bundled, i.e. in fp16.
train_shapes_autoencoder "$runs"
train_shapes_clip "$runs"

# Autoencoder, second stage: every weight trained on from the first stage's (a new latent
# space), decoding latents + s·std·ε with s ~ U[0, 0.3] per image, plus 100 × the colour hinge;
# 2e-4 after a 50-step warm-up, cosine to 0 at 1,500; EMA 0.995. v6 loses squares' corners at
# low noise, where its latents hold them as small features (docs/MODEL.md).
latentdiff train autoencoder --init-from "$runs/ae" --output-dir "$runs/ae_robust" \
  --batch-size 16 --lr 2e-4 --warmup 50 --lr-schedule cosine --steps 1500 --ema-decay 0.995 \
  --edge-weight 20 --hinge-weight 100 --latent-noise 0.3 --checkpoint-every 250 --no-progress

# U-Net (scripts/shapes_stages.sh): v6's command, on the second-stage autoencoder.
train_shapes_unet "$runs" "$runs/ae_robust"

# The bundle (scripts/shapes_stages.sh).
bundle_shapes "$runs"

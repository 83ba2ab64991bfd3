#!/usr/bin/env bash
# The exact recipe of the bundled shapes model, v6 (preset shapes; docs/MODEL.md), and of the
# bundled CLIP. Every stage resumes from its run folder, so re-running this script after an
# interruption continues where it stopped. The previous bundle's lineage (v2 → v5, seven
# cycles) is scripts/train_shapes_v5.sh; the first model's is scripts/train_shapes_v1.sh.
# Budget, measured: the autoencoder (41 min) and CLIP (38 min) on the old 2-core AVX2 machine,
# the latent cache (13 min) and 26,000 U-Net steps × 64 at 65 samples/s (7.1 h) on the 2-core
# AVX-512 one.
# Usage: scripts/train_shapes.sh [RUNS_DIR]   (default /work/runs/v6, outside the work tree)
set -euo pipefail
source "$(dirname "$0")/shapes_stages.sh"
runs="${1:-/work/runs/v6}"
mkdir -p "$runs"

# Autoencoder (scripts/shapes_stages.sh). The bundled U-Net was trained on this run's weights
# as bundled since v2, i.e. rounded to fp16 and back.
train_shapes_autoencoder "$runs"

# CLIP (scripts/shapes_stages.sh). The bundled U-Net was aligned to this run's weights as
# bundled, i.e. in fp16.
train_shapes_clip "$runs"

# U-Net from scratch with the whole recipe the v1 → v5 cycles found — the token layout bias
# (preset shapes), a 60,000-scene cache in v5's mix, v-prediction at zero terminal SNR with a
# plain v loss, 10 % empty captions — and representation alignment to CLIP's patch states
# (λ 0.5). 3e-4 after a 200-step warm-up, held to step 20,000, then a cosine to 0 at 26,000;
# EMA 0.998; uniform timesteps.
latentdiff train unet --autoencoder "$runs/ae" --output-dir "$runs/unet" --cache-size 60000 \
  --scene-mix single=0.25,counting=0.3,two_object=0.45 --repa-weight 0.5 \
  --repa-encoder "$runs/clip" --batch-size 64 --lr 3e-4 --warmup 200 --ema-decay 0.998 \
  --steps 26000 --lr-schedule cosine --cosine-from 20000 --checkpoint-every 500 --no-progress

# The bundle: the U-Net run's model folder (EMA weights, fp16, with its autoencoder and
# tokenizer) and the CLIP run's files.
mkdir -p latentdiff/assets/shapes latentdiff/assets/clip
cp "$runs/unet/model/"{config.json,model.safetensors,tokenizer.json} latentdiff/assets/shapes/
cp "$runs/clip/"{clip.safetensors,clip_config.json,tokenizer.json} latentdiff/assets/clip/

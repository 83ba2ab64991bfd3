#!/usr/bin/env bash
# The exact recipe of v5, the shapes model bundled before v6 (docs/MODEL.md): v2 trained from
# scratch in three cycles, then four more cycles from its weights (the token layout bias, then
# new scene mixes). Every stage resumes from its run folder, so re-running this script after
# an interruption continues where it stopped.
# The `shapes` preset its last four cycles use now writes v6's sampling default (guidance 5);
# v5's config.json said guidance 3, its measured best.
# Usage: scripts/train_shapes_v5.sh [RUNS_DIR]   (default /work/runs/v2, outside the work tree)
set -euo pipefail
source "$(dirname "$0")/shapes_stages.sh"
runs="${1:-/work/runs/v2}"
mkdir -p "$runs"

# Autoencoder (scripts/shapes_stages.sh).
train_shapes_autoencoder "$runs"

# U-Net: v-prediction on the zero-terminal-SNR schedule (the preset's objective) with a plain v
# loss, on a cache of 60,000 scenes; 3e-4 held from the warm-up's end to step 8,250, then a
# cosine decay to 0 at step 11,250 (warm-up, stable, decay).
latentdiff train unet --preset shapes-v2 --autoencoder "$runs/ae" --output-dir "$runs/unet" \
  --cache-size 60000 --batch-size 64 --lr 3e-4 --warmup 200 --ema-decay 0.998 --steps 11250 \
  --lr-schedule cosine --cosine-from 8250 --checkpoint-every 250 --no-progress

# A second cycle, resumed from step 11,250: the rate restarts at 1.5e-4 and decays on a cosine
# to 0 at step 14,250 (+192,000 samples; 0.355 → 0.396 on the suite, docs/MODEL.md).
latentdiff train unet --preset shapes-v2 --autoencoder "$runs/ae" --output-dir "$runs/unet" \
  --cache-size 60000 --batch-size 64 --lr 1.5e-4 --warmup 200 --ema-decay 0.998 --steps 14250 \
  --lr-schedule cosine --cosine-from 11250 --checkpoint-every 250 --no-progress

# A third cycle, resumed from step 14,250: the rate restarts at 1e-4 and decays on a cosine to 0
# at step 15,550 (+83,200 samples, 34 min: the rest of the ~8 h budget; 0.488 → 0.516 at the
# default sampling, 0.396 → 0.417 at CFG 5, docs/MODEL.md).
latentdiff train unet --preset shapes-v2 --autoencoder "$runs/ae" --output-dir "$runs/unet" \
  --cache-size 60000 --batch-size 64 --lr 1e-4 --warmup 200 --ema-decay 0.998 --steps 15550 \
  --lr-schedule cosine --cosine-from 14250 --checkpoint-every 250 --no-progress

# A fourth cycle from the third's weights, with the token layout bias the preset now has (a
# learnt spatial prior per token on the cross-attention logits; docs/MODEL.md): its maps start
# at zero, so the run starts as the v2 model. Half the timesteps from t = 850–999, where the
# layout is decided; 1.5e-4 held to step 2,000, cosine to 0 at 4,000, on the same
# 60,000-scene cache (+256,000 samples).
latentdiff train unet --autoencoder "$runs/ae" --output-dir "$runs/unet_layout" \
  --init-from "$runs/unet/model" --cache-size 60000 --batch-size 64 --lr 1.5e-4 --warmup 100 \
  --ema-decay 0.998 --steps 4000 --lr-schedule cosine --cosine-from 2000 \
  --high-noise-share 0.5 --high-noise-from 850 --checkpoint-every 250 --no-progress

# A fifth, short cycle from the fourth's weights with uniform timesteps again: 1e-4 after a
# 50-step warm-up, cosine to 0 at step 1,000 (+64,000 samples; 0.496 → 0.516 on the suite at
# guidance 2, 0.530 at its measured-best default 2.5, docs/MODEL.md).
latentdiff train unet --autoencoder "$runs/ae" --output-dir "$runs/unet_layout2" \
  --init-from "$runs/unet_layout/model" --cache-size 60000 --batch-size 64 --lr 1e-4 \
  --warmup 50 --ema-decay 0.998 --steps 1000 --lr-schedule cosine --checkpoint-every 250 \
  --no-progress

# A sixth cycle from the fifth's weights on a new 60,000-scene cache with more two-object
# scenes (30 % single, 20 % counting, 50 % two objects, against the world's 50/20/30), in the
# model's own latent normalisation: 1e-4 after a 100-step warm-up, held to step 2,000, cosine
# to 0 at 4,000 (+256,000 samples; 0.530 → 0.631 on the suite at the default sampling,
# held-out 0.418 → 0.571, docs/MODEL.md).
latentdiff train unet --autoencoder "$runs/ae" --output-dir "$runs/unet_mix" \
  --init-from "$runs/unet_layout2/model" --cache-size 60000 \
  --scene-mix single=0.3,counting=0.2,two_object=0.5 --batch-size 64 --lr 1e-4 --warmup 100 \
  --ema-decay 0.998 --steps 4000 --lr-schedule cosine --cosine-from 2000 \
  --checkpoint-every 250 --no-progress

# A seventh, short cycle from the sixth's weights on a new cache with more counting scenes
# (25 % single, 30 % counting, 45 % two objects): 1e-4 after a 50-step warm-up, held to step
# 400, cosine to 0 at 1,600 (+102,400 samples; 0.650 → 0.663 on the suite at the default
# sampling, 0.649 → 0.677 with --seed 1000; docs/MODEL.md). The last of the ~8 h budget.
latentdiff train unet --autoencoder "$runs/ae" --output-dir "$runs/unet_count" \
  --init-from "$runs/unet_mix/model" --cache-size 60000 \
  --scene-mix single=0.25,counting=0.3,two_object=0.45 --batch-size 64 --lr 1e-4 --warmup 50 \
  --ema-decay 0.998 --steps 1600 --lr-schedule cosine --cosine-from 400 \
  --checkpoint-every 200 --no-progress

# CLIP (scripts/shapes_stages.sh), unchanged since the first model (whose run,
# /work/runs/clip, it comes from).
train_shapes_clip "$runs"

# v5 was the U-Net run's model folder "$runs/unet_count/model" (EMA weights, fp16, with its
# autoencoder and tokenizer); the bundled CLIP is "$runs/clip"'s files.

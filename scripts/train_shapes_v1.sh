#!/usr/bin/env bash
# The exact recipe of the first bundled shapes model, v1 (preset shapes-v1; docs/MODEL.md,
# "The first model"), which the current one (scripts/train_shapes.sh) replaced. Every stage
# resumes from its run folder, so re-running this script after an interruption continues.
# Usage: [V_STEPS=N] scripts/train_shapes_v1.sh [RUNS_DIR]   (default /work/runs, outside the
# work tree; V_STEPS is where the second U-Net stage's cosine decay ends, see below)
set -euo pipefail
runs="${1:-/work/runs}"
mkdir -p "$runs"

# Autoencoder: 750 steps at a constant 1e-3, then cosine decay to step 2000 (the second command
# resumes the first run's step-750 checkpoint with the new schedule).
ae_args=(--preset shapes-v1 --output-dir "$runs/ae" --batch-size 16 --lr 1e-3 --warmup 100
  --ema-decay 0.999 --checkpoint-every 250 --no-progress)
latentdiff train autoencoder "${ae_args[@]}" --steps 750
latentdiff train autoencoder "${ae_args[@]}" --steps 2000 --lr-schedule cosine

# Decoder fine-tune (encoder frozen, so the latents the U-Net learns are unchanged): pixels at
# colour edges weigh 21× in the loss, which sharpens the corners that tell squares from circles.
latentdiff train autoencoder --finetune-decoder "$runs/ae" --edge-weight 20 \
  --output-dir "$runs/ae_dec" --batch-size 16 --lr 2e-4 --warmup 50 --lr-schedule cosine \
  --steps 1500 --ema-decay 0.995 --checkpoint-every 250 --no-progress

# CLIP (text tower + ViT, contrastive on fresh renders): the CLIP-score model, and the frozen
# text tower of the comparison run in docs/MODEL.md. 800 steps × 256, cosine from 5e-4.
latentdiff train clip --output-dir "$runs/clip" --steps 800 --batch-size 256 --lr 5e-4 \
  --warmup 50 --lr-schedule cosine --checkpoint-every 100 --no-progress

# U-Net stage 1: ε-prediction on SD's schedule with min-SNR-5 weighting, 4,500 steps × 64.
unet_args=(--preset shapes-v1 --autoencoder "$runs/ae" --cache-size 40000 --batch-size 64
  --lr 3e-4 --ema-decay 0.998 --checkpoint-every 250 --no-progress)
latentdiff train unet "${unet_args[@]}" --output-dir "$runs/unet" --steps 4500 --warmup 200

# U-Net stage 2: from stage 1's EMA weights, v-prediction on the zero-terminal-SNR schedule
# (plain v loss: min-SNR would weight t = T, where the background is decided, by 0). Stage 1
# took the background (black/gray/white) from the mean of the starting noise, not from the
# prompt; docs/MODEL.md has the measurements. Same latent cache, so it is copied, not rebuilt.
mkdir -p "$runs/unet_v"
cp -n "$runs/unet/latents.safetensors" "$runs/unet_v/"
# 2,500 steps at a constant 3e-4, then cosine decay to step V_STEPS (the second command resumes
# the first run's step-2,500 checkpoint with the new schedule, as the autoencoder's does).
v_args=(--output-dir "$runs/unet_v" --warmup 100 --prediction-type v_prediction
  --zero-terminal-snr --weighting none --init-from "$runs/unet/model")
latentdiff train unet "${unet_args[@]}" "${v_args[@]}" --steps 2500
latentdiff train unet "${unet_args[@]}" "${v_args[@]}" --steps "${V_STEPS:-5500}" --lr-schedule cosine

# The model: stage 2's model with the fine-tuned decoder baked in (it was bundled until v2).
rm -rf "$runs/bundle"
latentdiff convert "$runs/unet_v/model" "$runs/bundle" --to latentdiff --vae "$runs/ae_dec"

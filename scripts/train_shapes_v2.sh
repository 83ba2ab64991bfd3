#!/usr/bin/env bash
# The recipe of the next shapes model (preset shapes-v2; docs/MODEL.md, "The next model"), in
# training. Every stage resumes from its run folder, so re-running this script after an
# interruption continues where it stopped.
# Usage: [V2_STEPS=N] [V2_COSINE_FROM=M] scripts/train_shapes_v2.sh [RUNS_DIR]
#   (default /work/runs/v2; the U-Net trains at a constant rate up to step V2_COSINE_FROM, then
#   decays from that rate on a cosine to 0 at step V2_STEPS)
set -euo pipefail
runs="${1:-/work/runs/v2}"
mkdir -p "$runs"

# Autoencoder: twice as wide as the bundled model's, with colour edges weighted 21× in the
# loss from the start (the bundled model needed a decoder fine-tune for that).
latentdiff train autoencoder --preset shapes-v2 --output-dir "$runs/ae" --batch-size 16 \
  --lr 1e-3 --warmup 100 --lr-schedule cosine --steps 2000 --ema-decay 0.999 --edge-weight 20 \
  --checkpoint-every 250 --no-progress

# U-Net: v-prediction on the zero-terminal-SNR schedule from step 0 (the preset's objective),
# plain v loss (min-SNR would weight t = T by 0), on a cache of 60,000 scenes.
unet_args=(--preset shapes-v2 --autoencoder "$runs/ae" --cache-size 60000 --batch-size 64
  --lr 3e-4 --warmup 200 --ema-decay 0.998 --weighting none --checkpoint-every 250
  --output-dir "$runs/unet" --no-progress)
cosine_from="${V2_COSINE_FROM:-}"
if [[ -n "$cosine_from" ]]; then
  latentdiff train unet "${unet_args[@]}" --steps "$cosine_from"
  latentdiff train unet "${unet_args[@]}" --steps "${V2_STEPS:?set V2_STEPS}" --lr-schedule cosine \
    --cosine-from "$cosine_from"
else
  latentdiff train unet "${unet_args[@]}" --steps "${V2_STEPS:-20000}"
fi

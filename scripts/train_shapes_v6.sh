#!/usr/bin/env bash
# The exact recipe of v6, the bundle before v7 (preset shapes; docs/MODEL.md), and of the
# bundled CLIP. Every stage resumes from its run folder, so re-running this script after an
# interruption continues where it stopped. The previous bundle's lineage (v2 → v5, seven
# cycles) is scripts/train_shapes_v5.sh; the first model's is scripts/train_shapes_v1.sh.
# Budget, measured: the autoencoder (41 min) and CLIP (38 min) on the old 2-core AVX2 machine,
# the latent cache (13 min) and 26,000 U-Net steps × 64 at 65 samples/s (7.1 h) on the 2-core
# AVX-512 one.
# Usage: scripts/train_shapes_v6.sh [RUNS_DIR]   (default /work/runs/v6, outside the work tree)
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

# U-Net (scripts/shapes_stages.sh): from scratch, on this autoencoder.
train_shapes_unet "$runs" "$runs/ae"

# v6's bundle, replaced by v7's (scripts/train_shapes.sh; the copy in scripts/shapes_stages.sh).
bundle_shapes "$runs"

# Stages shared by the shapes recipes (scripts/train_shapes.sh, v6; scripts/train_shapes_v5.sh):
# both bundles use the same autoencoder and CLIP runs. Sourced, not run.

# Autoencoder: 32/64/128 channels, colour edges weighted 21× in the loss from the start (the
# first model needed a decoder fine-tune for that). 2,000 steps × 16 fresh renders.
train_shapes_autoencoder() {
  latentdiff train autoencoder --output-dir "$1/ae" --batch-size 16 --lr 1e-3 --warmup 100 \
    --lr-schedule cosine --steps 2000 --ema-decay 0.999 --edge-weight 20 --checkpoint-every 250 \
    --no-progress
}

# CLIP (text tower + ViT, contrastive on fresh renders): the CLIP-score model, and the encoder
# whose 8×8 patch states v6's U-Net features are aligned to (REPA). 800 steps × 256, cosine
# from 5e-4.
train_shapes_clip() {
  latentdiff train clip --output-dir "$1/clip" --steps 800 --batch-size 256 --lr 5e-4 \
    --warmup 50 --lr-schedule cosine --checkpoint-every 100 --no-progress
}

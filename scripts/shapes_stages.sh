# Stages shared by the shapes recipes (scripts/train_shapes.sh, v7; scripts/train_shapes_v6.sh;
# scripts/train_shapes_v5.sh): all use the same autoencoder and CLIP runs, and v6 and v7 the
# same U-Net command. Sourced, not run.

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

# U-Net from scratch with the whole recipe the v1 → v5 cycles found — the token layout bias
# (preset shapes), a 60,000-scene cache in v5's mix, v-prediction at zero terminal SNR with a
# plain v loss, 10 % empty captions — and representation alignment to CLIP's patch states
# (λ 0.5). 3e-4 after a 200-step warm-up, held to step 20,000, then a cosine to 0 at 26,000;
# EMA 0.998; uniform timesteps. Arguments: the runs folder and the autoencoder run.
train_shapes_unet() {
  latentdiff train unet --autoencoder "$2" --output-dir "$1/unet" --cache-size 60000 \
    --scene-mix single=0.25,counting=0.3,two_object=0.45 --repa-weight 0.5 \
    --repa-encoder "$1/clip" --batch-size 64 --lr 3e-4 --warmup 200 --ema-decay 0.998 \
    --steps 26000 --lr-schedule cosine --cosine-from 20000 --checkpoint-every 500 --no-progress
}

# The bundle: the U-Net run's model folder (EMA weights, fp16, with its autoencoder and
# tokenizer) and the CLIP run's files, copied into the package. Run from the repository root.
bundle_shapes() {
  mkdir -p latentdiff/assets/shapes latentdiff/assets/clip
  cp "$1/unet/model/"{config.json,model.safetensors,tokenizer.json} latentdiff/assets/shapes/
  cp "$1/clip/"{clip.safetensors,clip_config.json,tokenizer.json} latentdiff/assets/clip/
}

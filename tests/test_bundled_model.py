"""The bundled `shapes` model: present, loaded by default, and generating what the README shows."""

import dataclasses

import numpy as np

import latentdiff
from latentdiff.checkpoints.bundle import (
    BUNDLED_CLIP,
    BUNDLED_MODELS,
    CONFIG_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
)
from latentdiff.config import ModelConfig, load_model_config, shapes_config
from latentdiff.training.clip import evaluate_clip, load_clip


def test_the_bundle_is_complete_small_and_of_the_shapes_architecture() -> None:
    folder = BUNDLED_MODELS["shapes"]
    for name in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE):
        assert (folder / name).is_file(), name
    assert (folder / WEIGHTS_FILE).stat().st_size < 50 * 2**20  # fp16, tens of MB at most
    config = load_model_config(folder / CONFIG_FILE)
    expected = shapes_config()
    assert isinstance(config, ModelConfig)
    assert (config.unet, config.text_encoder, config.diffusion, config.sample_size) == (
        expected.unet,
        expected.text_encoder,
        expected.diffusion,
        expected.sample_size,
    )
    # The sampling defaults measured on these weights, as the recipe's preset writes them.
    assert config.sampling == expected.sampling
    # Normalised per channel at training; otherwise the preset's autoencoder.
    assert config.autoencoder.latents_std is not None
    unnormalised = dataclasses.replace(config.autoencoder, latents_mean=None, latents_std=None)
    assert unnormalised == expected.autoencoder


def test_default_pipeline_generates_reproducible_64px_images() -> None:
    pipe = latentdiff.load_pipeline(device="cpu")
    first = pipe("a red circle", num_inference_steps=4, seed=1)[0]
    again = pipe("a red circle", num_inference_steps=4, seed=1)[0]
    other = pipe("a red circle", num_inference_steps=4, seed=2)[0]
    assert first.size == (64, 64)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))


def test_the_bundled_clip_ranks_the_right_caption_first_far_above_chance() -> None:
    model, tokenizer = load_clip(BUNDLED_CLIP)
    metrics = evaluate_clip(model, tokenizer, n=128, seed=1)  # ~110 candidate captions
    assert metrics["image_to_text_top1"] > 0.15  # chance ≈ 0.01
    assert metrics["clip_score_matched"] > metrics["clip_score_shuffled"] + 40

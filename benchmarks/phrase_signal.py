"""How much of each word's effect on the data a model has learnt, where only the text can act.

On a zero-terminal-SNR schedule the U-Net's input at the last timestep is pure noise, so the
ideal denoiser predicts the mean clean latent of its prompt, E[x0 | prompt], and a word's effect
is how the data's mean moves with the word. For every word of a family (colours, shapes,
position phrases) this script renders scenes the world draws for "a {colour} {shape} …" prompts
carrying the word and encodes them with the model's own autoencoder (the data means); then it
predicts x0 for the same prompts from pure noise, image k from seed k for every word (the model
means). Per word it prints the data's effect (RMS over latent values of the word's mean minus
its family's) and the slope of the model's effect on it: 1 is the ideal denoiser, 0 a word the
model ignores. On a schedule whose last ᾱ is not 0 (SD's: 0.0047) the input keeps a trace of
x0 that is left out here, so the figures are the text's effect alone.

    python benchmarks/phrase_signal.py --model shapes [--repeats 16]

No sampling and no detector: a few hundred U-Net calls, steady enough to follow in training.
"""

from __future__ import annotations

import argparse

import torch
from autoencoder_ceiling import suite_renders
from torch import Tensor

from latentdiff.checkpoints.bundle import Components
from latentdiff.diffusion.denoisers import Denoiser
from latentdiff.diffusion.schedules import get_training_sigmas
from latentdiff.pipelines.common import (
    encode_images,
    encode_prompt,
    images_to_tensor,
    seeded_noise,
)
from latentdiff.pipelines.pipeline import load_pipeline
from latentdiff.world import palette

COLORS = ("red", "blue", "yellow")  # none is held out with any shape, so every word's
SHAPES = ("circle", "square", "triangle")  # prompts vary over the same other attributes
FAMILIES: dict[str, dict[str, list[str]]] = {
    "colour": {c: [f"a {c} {s}" for s in SHAPES] for c in COLORS},
    "shape": {s: [f"a {c} {s}" for c in COLORS] for s in SHAPES},
    "position": {p: [f"a {c} {s} {p}" for c in COLORS for s in SHAPES] for p in palette.POSITIONS},
}


@torch.no_grad()
def data_mean(components: Components, prompts: list[str], seed: int) -> Tensor:
    """Mean diffusion-space latent of one world render per prompt."""
    images = images_to_tensor(suite_renders(prompts, components.config.sample_size, seed))
    parameter = next(components.autoencoder.parameters())
    return encode_images(components, images.to(parameter.device, parameter.dtype)).mean(dim=0)


@torch.no_grad()
def model_mean(components: Components, prompts: list[str]) -> Tensor:
    """Mean x0 estimate of the denoiser from pure noise at the largest training σ (where a
    sampler starts), prompt k from noise seed k."""
    config = components.config
    if config.diffusion.prediction_type == "epsilon":
        raise SystemExit("needs a v-prediction model: an ε model has no x0 estimate at pure noise")
    device = next(components.unet.parameters()).device
    sigma = torch.full((len(prompts),), get_training_sigmas(config.diffusion)[-1].item())
    side = config.sample_size // config.autoencoder.downsample_factor
    noise = seeded_noise((config.unet.in_channels, side, side), list(range(len(prompts))), device)
    denoise = Denoiser(components.unet, config.diffusion)
    x0 = denoise(
        sigma.to(device)[:, None, None, None] * noise,
        sigma.to(device),
        encode_prompt(components, prompts),
    )
    return x0.float().mean(dim=0)


def word_effects(means: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each word's mean minus the family's average of them."""
    average = torch.stack(list(means.values())).mean(dim=0)
    return {word: mean - average for word, mean in means.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--repeats", type=int, default=16, help="prompts per colour–shape pair")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rendered scenes")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    components = load_pipeline(args.model, device=args.device).components
    print(f"{'family':9s} {'word':14s} {'data effect':>11s} {'model slope':>11s}")
    for family, words in FAMILIES.items():
        prompts = {word: base * args.repeats for word, base in words.items()}
        data = word_effects({w: data_mean(components, p, args.seed) for w, p in prompts.items()})
        model = word_effects({w: model_mean(components, p) for w, p in prompts.items()})
        for word in words:
            effect = data[word]
            slope = (model[word] * effect).sum() / effect.pow(2).sum()
            rms = effect.pow(2).mean().sqrt()
            print(f"{family:9s} {word:14s} {rms:11.3f} {slope:11.2f}", flush=True)


if __name__ == "__main__":
    main()

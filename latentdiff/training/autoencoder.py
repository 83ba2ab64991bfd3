"""Training the KL autoencoder on freshly rendered Shapes World images.

Loss per pixel: MSE + L1 reconstruction (optionally weighted up at colour edges, and with a
hinge on pixels drawn far from their colour), plus `kl_weight` × KL summed over the latent and
divided by the pixel count — LDM's "sum of reconstruction NLL + w·KL", scaled by a constant.
Optionally the decoder sees latents perturbed as a U-Net's errors would perturb them.
No GAN or perceptual term: the world is flat colours, for which pixel losses already give
> 32 dB, and LPIPS would need pretrained weights that cannot be downloaded here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from latentdiff.models.autoencoder import Autoencoder
from latentdiff.pipelines.common import images_to_tensor, tensor_to_images
from latentdiff.training.trainer import derive_seed
from latentdiff.world.render import render_batch

_TRAIN_DATA, _EVAL_DATA = 10, 11  # seed-stream tags: evaluation images are never trained on


def autoencoder_loss(
    model: Autoencoder,
    images: torch.Tensor,
    generator: torch.Generator,
    edge_weight: float = 0.0,
    hinge_weight: float = 0.0,
    latent_noise: float = 0.0,
) -> torch.Tensor:
    """MSE + L1 per pixel, pixels at colour edges weighted 1 + `edge_weight`, plus the KL term;
    `hinge_weight` × `colour_hinge`; `latent_noise` decodes perturbed latents
    (`perturb_latents`)."""
    posterior = model.encode(images)
    z = posterior.sample(generator)
    if latent_noise:
        z = perturb_latents(z, latent_noise, generator)
    reconstruction = model.decode(z)
    kl = posterior.kl().sum() / images.numel()
    error = reconstruction - images
    weight = 1 + edge_weight * colour_edges(images) if edge_weight else 1
    rec = (weight * (error.square() + error.abs())).mean()
    if hinge_weight:
        rec = rec + hinge_weight * colour_hinge(error)
    return rec + model.config.kl_weight * kl


def perturb_latents(z: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    """z + s·std·ε, s ~ U[0, `level`] per image, std each channel's standard deviation in the
    batch (held constant for the gradient).

    A U-Net errs in latents normalised per channel, so its small errors are a fraction of each
    channel's spread. Trained on such errors, the encoder has to write the image's details
    (a square's corners) larger than them; scaling the latents up cannot evade the noise,
    which scales with them.
    """
    std = z.detach().std(dim=(0, 2, 3), keepdim=True)
    device = generator.device
    s = level * torch.rand(len(z), 1, 1, 1, generator=generator, device=device).to(z)
    eps = torch.randn(z.shape, generator=generator, device=device).to(z)
    return z + s * std * eps


# A pixel's colour error beyond which the hinge starts, in the [-1, 1] image units: 25 of 255
# levels, well inside the 60 within which the evaluator's detector takes a pixel for its colour.
COLOUR_TOLERANCE = 0.2


def colour_hinge(error: torch.Tensor, tolerance: float = COLOUR_TOLERANCE) -> torch.Tensor:
    """mean over pixels of max(0, ‖error‖ − tolerance)², ‖·‖ the RGB distance: zero for pixels
    drawn close to their colour, growing fast for the few drawn far off (a square's corner
    drawn as background), which a mean pixel loss at > 40 dB all but ignores."""
    distance = error.square().sum(dim=1).add(1e-8).sqrt()
    return torch.relu(distance - tolerance).square().mean()


def colour_edges(images: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """(B, 1, H, W) mask of pixels whose 3×3 neighbourhood holds another colour.

    Shapes World images are flat colours, so these are the outlines: a few percent of the
    pixels, which a plain pixel loss weighs accordingly, yet where a shape is told apart
    (corners decide square against circle for the evaluator).
    """
    highest = F.max_pool2d(images, 3, stride=1, padding=1)
    lowest = -F.max_pool2d(-images, 3, stride=1, padding=1)
    return ((highest - lowest).amax(dim=1, keepdim=True) > threshold).to(images.dtype)


def freeze_encoder(model: Autoencoder) -> Autoencoder:
    """`model` set to train its decoder side only (post_quant_conv + decoder): the encoder and
    quant_conv, which define the latent space, keep their weights."""
    model.requires_grad_(False)
    model.post_quant_conv.requires_grad_(True)
    model.decoder.requires_grad_(True)
    return model


@dataclass(frozen=True)
class RenderedImages:
    """`batches(step, shard, num_shards)` for the trainer: each shard freshly rendered."""

    batch_size: int
    size: int
    seed: int

    def __call__(self, step: int, shard: int, num_shards: int) -> torch.Tensor:
        seed = derive_seed(_TRAIN_DATA, self.seed, step, shard)
        images, _ = render_batch(self.batch_size // num_shards, self.size, seed)
        return images_to_tensor(images)


@torch.no_grad()
def reconstruction_psnr(
    model: Autoencoder, *, n: int = 512, size: int = 64, seed: int = 0, batch_size: int = 64
) -> float:
    """Mean PSNR (dB, pixels in [0, 255]) of posterior-mode reconstructions of unseen renders."""
    device = next(model.parameters()).device
    images, _ = render_batch(n, size, derive_seed(_EVAL_DATA, seed))
    psnrs = []
    for start in range(0, n, batch_size):
        originals = images[start : start + batch_size]
        reconstruction, _ = model(images_to_tensor(originals).to(device))
        # Quantise as a saved PNG would be, then compare in 8-bit units.
        error = tensor_to_images(reconstruction).astype(np.float64) - originals
        mse = np.maximum(np.square(error).mean(axis=(1, 2, 3)), 1e-10)
        psnrs.extend((10 * np.log10(255.0**2 / mse)).tolist())
    return sum(psnrs) / len(psnrs)

"""Training the conditional U-Net on cached autoencoder latents of Shapes World renders.

The latents are computed once (posterior mode × scaling factor) and stored with the token ids
of each image's caption, so a training step costs only the U-Net (and the small text encoder).
The text encoder is either trained jointly with the U-Net (as the LDM paper did) or a frozen
pretrained tower (as Stable Diffusion freezes CLIP): `LatentDiffusionModel.train_text_encoder`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from tqdm import tqdm

from latentdiff.checkpoints.bundle import Components, save_components
from latentdiff.config import AutoencoderConfig, DiffusionConfig, ModelConfig
from latentdiff.errors import UsageError
from latentdiff.fileio import atomic_folder
from latentdiff.models.autoencoder import Autoencoder, to_diffusion_latents
from latentdiff.models.clip import ImageEncoder
from latentdiff.models.text_encoder import TextEncoder
from latentdiff.models.token_layout import join_token_embeddings
from latentdiff.models.tokenizer import Tokenizer
from latentdiff.models.unet import UNet
from latentdiff.pipelines.common import images_to_tensor
from latentdiff.training.alignment import Projector, alignment_loss, patch_targets
from latentdiff.training.checkpoint import load_weights, save_weights
from latentdiff.training.losses import HIGH_NOISE_FROM, diffusion_loss
from latentdiff.training.trainer import Trainer, derive_seed, shard_indices
from latentdiff.world.render import render_batch
from latentdiff.world.scenes import KIND_WEIGHTS

_CACHE_DATA = 20  # seed-stream tag of the cached training scenes


class LatentDiffusionModel(nn.Module):
    """U-Net + text encoder (+ the REPA projector, if aligning) behind one `forward`, so that
    DDP synchronises all of them."""

    def __init__(
        self,
        unet: UNet,
        text_encoder: TextEncoder,
        *,
        train_text_encoder: bool,
        alignment: Projector | None = None,
    ):
        super().__init__()
        self.unet = unet.to(memory_format=torch.channels_last)
        self.text_encoder = text_encoder
        self.train_text_encoder = train_text_encoder
        text_encoder.requires_grad_(train_text_encoder)
        self.alignment = alignment
        self._features: list[Tensor] = []
        if alignment is not None:
            # A hook keeps the U-Net's forward free of a training-only output. A bound
            # method, so that a deepcopy (the EMA's) hooks into its own copy.
            unet.down[alignment.level].blocks[-1].register_forward_hook(self._keep_features)

    def _keep_features(self, _module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        self._features.append(output)

    def forward(self, x_t: Tensor, t: Tensor, input_ids: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """The U-Net's prediction; with a projector also h_φ of its aligned features,
        (prediction, (B, N, D))."""
        with torch.set_grad_enabled(self.train_text_encoder and torch.is_grad_enabled()):
            context = self.text_encoder(input_ids)  # (B, L, D)
            if self.unet.token_layout is not None:
                token_embeds = self.text_encoder.token_embedding(input_ids)
                context = join_token_embeddings(context, token_embeds)  # (B, L, 2D)
        prediction = self.unet(x_t, t, context)
        if self.alignment is None:
            return prediction
        features = self._features.pop()
        self._features.clear()
        return prediction, self.alignment(features)


@dataclass(frozen=True)
class DiffusionObjective:
    """`loss_fn` for the trainer: the diffusion loss with classifier-free condition dropout."""

    config: DiffusionConfig
    empty_ids: Tensor
    """Token ids of the empty prompt: the "unconditional" input that CFG contrasts against."""
    cond_drop_prob: float = 0.1
    weighting: Literal["none", "min_snr"] = "min_snr"
    high_noise_share: float = 0.0
    """Share of timesteps drawn from `high_noise_from` up (`losses.sample_timesteps`)."""
    high_noise_from: int = HIGH_NOISE_FROM
    alignment_weight: float = 0.0
    """λ of representation alignment (`alignment`); batches then carry the encoder's patch
    states as a third element, and the model a projector."""

    def __call__(
        self, model: nn.Module, batch: tuple[Tensor, ...], generator: torch.Generator
    ) -> Tensor:
        latents, ids, *targets = batch
        drop = torch.rand(ids.shape[0], generator=generator, device=ids.device)
        ids = torch.where((drop < self.cond_drop_prob)[:, None], self.empty_ids.to(ids.device), ids)
        projected: list[Tensor] = []

        def denoiser(x_t: Tensor, t: Tensor, input_ids: Tensor) -> Tensor:
            # The model takes token ids where a bare U-Net takes context: it encodes them.
            if not self.alignment_weight:
                return model(x_t, t, input_ids)
            prediction, projection = model(x_t, t, input_ids)
            projected.append(projection)
            return prediction

        loss = diffusion_loss(
            denoiser,
            latents,
            ids,
            self.config,
            generator=generator,
            weighting=self.weighting,
            high_noise_share=self.high_noise_share,
            high_noise_from=self.high_noise_from,
        )
        if not self.alignment_weight:
            return loss
        return loss + self.alignment_weight * alignment_loss(projected[0], targets[0])


@dataclass(frozen=True)
class LatentCache:
    """Diffusion-space latents (N, C, h, w) and caption token ids (N, L) of N training scenes,
    with the per-channel statistics that normalised them (the model config's `latents_mean`,
    `latents_std`; scaling_factor 1), and for representation alignment the encoder's patch
    states of each scene's render (N, P, D)."""

    latents: Tensor
    input_ids: Tensor
    latents_mean: tuple[float, ...]
    latents_std: tuple[float, ...]
    targets: Tensor | None = None

    def autoencoder_config(self, config: AutoencoderConfig) -> AutoencoderConfig:
        """`config` with this cache's latent normalisation, for the exported model."""
        return replace(
            config, scaling_factor=1.0, latents_mean=self.latents_mean, latents_std=self.latents_std
        )

    def batches(self, batch_size: int, seed: int):
        """`batches(step, shard, num_shards)` over the cache, epoch after seeded epoch:
        (latents, ids), and the alignment targets as a third element if the cache has them."""

        def batch(step: int, shard: int, num_shards: int) -> tuple[Tensor, ...]:
            indices = shard_indices(
                step,
                shard,
                num_shards,
                batch_size=batch_size,
                num_samples=len(self.latents),
                seed=seed,
            )
            # channels_last: oneDNN's convolutions run ~20 % faster in it on CPU.
            latents = self.latents[indices].float().contiguous(memory_format=torch.channels_last)
            if self.targets is None:
                return latents, self.input_ids[indices]
            return latents, self.input_ids[indices], self.targets[indices]

        return batch

    def save(self, path: Path, provenance: dict | None = None) -> None:
        """Write the cache; `provenance` (what it was built from) is checked again on load."""
        tensors = {"latents": self.latents, "input_ids": self.input_ids}
        if self.targets is not None:
            tensors["targets"] = self.targets
        save_weights(
            path,
            tensors,
            metadata={
                "latents_mean": json.dumps(self.latents_mean),
                "latents_std": json.dumps(self.latents_std),
                "provenance": json.dumps(provenance or {}, sort_keys=True),
            },
        )

    @classmethod
    def load(cls, path: Path, expected: dict | None = None) -> LatentCache:
        """Read a cache; with `expected`, refuse one built from other inputs (a resumed run
        must see the same data)."""
        tensors, metadata = load_weights(path)
        if expected is not None:
            built_from = json.loads(metadata.get("provenance", "{}"))
            if built_from != expected:
                raise UsageError(
                    f"{path} was built from {built_from}, not {expected}: use the run's original "
                    "flags, or a new --output-dir"
                )
        if {"latents", "input_ids"} - set(tensors) or {"latents_mean", "latents_std"} - set(
            metadata
        ):
            raise UsageError(f"{path} is not a latent cache (latents, input_ids, latents_mean/std)")
        mean, std = (tuple(json.loads(metadata[k])) for k in ("latents_mean", "latents_std"))
        return cls(tensors["latents"], tensors["input_ids"], mean, std, tensors.get("targets"))


@torch.no_grad()
def build_latent_cache(
    autoencoder: Autoencoder,
    tokenizer: Tokenizer,
    *,
    num_samples: int,
    size: int,
    context_length: int,
    seed: int,
    batch_size: int = 256,
    progress: bool = True,
    kind_weights: Mapping[str, float] = KIND_WEIGHTS,
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    target_encoder: ImageEncoder | None = None,
) -> LatentCache:
    """Render `num_samples` training scenes (prompt kinds drawn by `kind_weights`), encode
    them once, and normalise each channel; with a `target_encoder`, keep its patch states of
    each render as the scene's alignment targets (`alignment`).

    Each latent channel gets its own mean and std (diffusers' `latents_mean`/`latents_std`), so
    that diffusion sees zero-mean unit-variance channels: SD's single 0.18215 = 1/std works for
    its balanced channels, but the small autoencoder trained here has channel stds from 0.4
    to 5, and the narrow ones were drowned by the noise and sampled as texture.
    `normalization` (mean, std) fixes them instead: a model fine-tuned on other scenes must
    keep the latent space its weights learned, whatever this cache's own statistics.
    """
    device = next(autoencoder.parameters()).device
    latents, ids, targets = [], [], []
    for start in tqdm(range(0, num_samples, batch_size), disable=not progress, desc="latents"):
        n = min(batch_size, num_samples - start)
        images, scenes = render_batch(
            n, size, derive_seed(_CACHE_DATA, seed, start), kind_weights=kind_weights
        )
        pixels = images_to_tensor(images).to(device)  # once, for the autoencoder and the tower
        latents.append(autoencoder.encode(pixels).mode().cpu())
        ids.append(tokenizer.encode([s.caption for s in scenes], context_length))
        if target_encoder is not None:
            targets.append(patch_targets(target_encoder, pixels))
    z = torch.cat(latents).float()
    mean, std = normalization or (
        tuple(z.mean(dim=(0, 2, 3)).tolist()),
        tuple(z.std(dim=(0, 2, 3)).tolist()),
    )
    cache = LatentCache(z, torch.cat(ids), mean, std, torch.cat(targets) if targets else None)
    config = cache.autoencoder_config(autoencoder.config)
    return replace(cache, latents=to_diffusion_latents(z, config).half())


def export_bundle(
    trainer: Trainer,
    config: ModelConfig,
    autoencoder: Autoencoder,
    tokenizer: Tokenizer,
    folder: Path,
) -> None:
    """Write (or replace) the model folder `load_pipeline` reads, with the trainer's (EMA)
    weights; through a temporary folder, so that a kill mid-export leaves no half model."""
    trained = LatentDiffusionModel(
        UNet(config.unet), TextEncoder(config.text_encoder), train_text_encoder=False
    )
    # The REPA projector only served training: the model is the U-Net and the text encoder.
    state = trainer.final_state_dict()
    trained.load_state_dict({k: v for k, v in state.items() if not k.startswith("alignment.")})
    components = Components(config, autoencoder, trained.unet, trained.text_encoder, tokenizer)
    atomic_folder(folder, lambda tmp: save_components(components, tmp), overwrite=True)

from copy import deepcopy
from pathlib import Path

import pytest
import torch
from torch import nn

from latentdiff.config import AutoencoderConfig, ImageEncoderConfig, tiny_config
from latentdiff.errors import UsageError
from latentdiff.models.autoencoder import Autoencoder, DiagonalGaussian
from latentdiff.models.clip import ImageEncoder
from latentdiff.models.text_encoder import TextEncoder
from latentdiff.models.tokenizer import BOS_ID, EOS_ID, Tokenizer
from latentdiff.models.unet import UNet
from latentdiff.pipelines.common import images_to_tensor
from latentdiff.training.alignment import Projector, alignment_loss, patch_targets
from latentdiff.training.checkpoint import save_weights
from latentdiff.training.trainer import derive_seed
from latentdiff.training.unet import (
    _CACHE_DATA,
    DiffusionObjective,
    LatentCache,
    LatentDiffusionModel,
    build_latent_cache,
)
from latentdiff.world.captions import parse_caption
from latentdiff.world.render import render_batch

CONFIG = tiny_config()
CONTEXT = CONFIG.text_encoder.context_length


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Tokenizer:
    return Tokenizer.load(tiny_model_dir / "tokenizer.json")


def test_latent_cache_save_load_round_trip(tmp_path: Path) -> None:
    mean, std = (0.123456789012345, -1.5, 2.0, 0.0), (1.0, 0.25, 3.0, 0.987654321)
    cache = LatentCache(
        torch.randn(5, 4, 3, 3).half(), torch.randint(0, 60, (5, CONTEXT)), mean, std
    )
    cache.save(tmp_path / "latents.safetensors")
    loaded = LatentCache.load(tmp_path / "latents.safetensors")
    assert torch.equal(loaded.latents, cache.latents) and loaded.latents.dtype == torch.float16
    assert torch.equal(loaded.input_ids, cache.input_ids)
    assert loaded.latents_mean == mean and loaded.latents_std == std


def test_a_file_that_is_not_a_cache_is_a_usage_error(tmp_path: Path) -> None:
    save_weights(tmp_path / "other.safetensors", {"latents": torch.zeros(2)})
    with pytest.raises(UsageError, match="is not a latent cache"):
        LatentCache.load(tmp_path / "other.safetensors")


class AffineStandIn(nn.Module):
    """An "autoencoder" whose posterior mode is 3·(2×2-pooled image) + 1; records its outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.config = AutoencoderConfig(latent_channels=3, block_channels=(32,))
        self.anchor = nn.Parameter(torch.zeros(()))
        self.modes: list[torch.Tensor] = []

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        mode = 3 * nn.functional.avg_pool2d(x, 2) + 1  # (B, 3, h, w)
        self.modes.append(mode)
        return DiagonalGaussian(torch.cat([mode, torch.zeros_like(mode)], dim=1))


def test_cache_normalises_each_latent_channel(tokenizer: Tokenizer) -> None:
    stand_in = AffineStandIn()
    cache = build_latent_cache(
        stand_in, tokenizer, num_samples=7, size=16, context_length=CONTEXT, seed=0,
        batch_size=3, progress=False,
    )  # fmt: skip
    assert [len(m) for m in stand_in.modes] == [3, 3, 1]
    unscaled = torch.cat(stand_in.modes)
    mean, std = unscaled.mean(dim=(0, 2, 3)), unscaled.std(dim=(0, 2, 3))
    torch.testing.assert_close(torch.tensor(cache.latents_mean), mean)
    torch.testing.assert_close(torch.tensor(cache.latents_std), std)
    assert cache.latents.dtype == torch.float16 and cache.latents.shape == (7, 3, 8, 8)
    expected = (unscaled - mean[:, None, None]) / std[:, None, None]
    torch.testing.assert_close(cache.latents.float(), expected, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(
        cache.latents.float().std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0
    )
    config = cache.autoencoder_config(stand_in.config)
    assert config.scaling_factor == 1.0 and config.latents_mean == cache.latents_mean
    assert cache.input_ids.shape == (7, CONTEXT)
    assert (cache.input_ids[:, 0] == BOS_ID).all()
    assert ((cache.input_ids == EOS_ID).sum(dim=1) == 1).all()


def test_cache_with_a_fixed_normalisation_keeps_it(tokenizer: Tokenizer) -> None:
    stand_in = AffineStandIn()
    fixed = ((1.0, 2.0, 3.0), (2.0, 4.0, 0.5))
    cache = build_latent_cache(
        stand_in, tokenizer, num_samples=5, size=16, context_length=CONTEXT, seed=0,
        progress=False, normalization=fixed,
    )  # fmt: skip
    assert (cache.latents_mean, cache.latents_std) == fixed
    mean, std = (torch.tensor(v)[:, None, None] for v in fixed)
    expected = (torch.cat(stand_in.modes) - mean) / std
    torch.testing.assert_close(cache.latents.float(), expected, atol=2e-3, rtol=1e-3)


def test_cache_draws_prompt_kinds_by_the_scene_mix(tokenizer: Tokenizer) -> None:
    two_objects = {"single": 0.0, "counting": 0.0, "two_object": 1.0}
    cache = build_latent_cache(
        AffineStandIn(), tokenizer, num_samples=6, size=16, context_length=CONTEXT, seed=3,
        progress=False, kind_weights=two_objects,
    )  # fmt: skip
    _, scenes = render_batch(6, 16, derive_seed(_CACHE_DATA, 3, 0), kind_weights=two_objects)
    assert {parse_caption(s.canonical_caption).kind for s in scenes} == {"two_object"}
    torch.testing.assert_close(
        cache.input_ids, tokenizer.encode([s.caption for s in scenes], CONTEXT)
    )


def test_cache_of_a_real_autoencoder_has_unit_std(tokenizer: Tokenizer) -> None:
    torch.manual_seed(0)
    autoencoder = Autoencoder(CONFIG.autoencoder).eval()
    cache = build_latent_cache(
        autoencoder, tokenizer, num_samples=8, size=16, context_length=CONTEXT, seed=1,
        progress=False,
    )  # fmt: skip
    assert cache.latents.shape == (8, CONFIG.autoencoder.latent_channels, 8, 8)
    assert cache.latents.float().std().item() == pytest.approx(1.0, abs=1e-3)
    again = build_latent_cache(
        autoencoder, tokenizer, num_samples=8, size=16, context_length=CONTEXT, seed=1,
        progress=False,
    )  # fmt: skip
    assert torch.equal(again.latents, cache.latents)
    assert torch.equal(again.input_ids, cache.input_ids)


def numbered_cache(n: int = 8) -> LatentCache:
    """Sample i has latents all i and ids all i, so a batch shows which samples it holds."""
    index = torch.arange(n, dtype=torch.float16)
    latents = index[:, None, None, None].expand(n, 2, 2, 2).clone()
    return LatentCache(
        latents, torch.arange(n)[:, None].expand(n, CONTEXT).clone(), (0.0,) * 2, (1.0,) * 2
    )


def sample_ids(batch: tuple[torch.Tensor, torch.Tensor]) -> list[int]:
    latents, ids = batch
    assert latents.dtype == torch.float32
    assert torch.equal(latents[:, 0, 0, 0].long(), ids[:, 0])  # latents and captions paired
    return ids[:, 0].tolist()


def test_batches_are_deterministic_per_step_and_shard() -> None:
    batches = numbered_cache().batches(batch_size=4, seed=0)
    assert sample_ids(batches(5, 1, 2)) == sample_ids(numbered_cache().batches(4, 0)(5, 1, 2))
    assert sample_ids(batches(5, 0, 2)) + sample_ids(batches(5, 1, 2)) == sample_ids(
        batches(5, 0, 1)
    )
    assert sample_ids(batches(5, 0, 1)) != sample_ids(numbered_cache().batches(4, 1)(5, 0, 1))


def test_batches_walk_each_epoch_through_every_sample_once() -> None:
    batches = numbered_cache().batches(batch_size=4, seed=0)
    epoch_0 = sample_ids(batches(0, 0, 1)) + sample_ids(batches(1, 0, 1))
    epoch_1 = sample_ids(batches(2, 0, 1)) + sample_ids(batches(3, 0, 1))
    assert sorted(epoch_0) == sorted(epoch_1) == list(range(8))
    assert epoch_0 != epoch_1  # a new permutation each epoch


class SpyModel(nn.Module):
    """Predicts a scaled x_t and records the token ids it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))
        self.seen_ids: list[torch.Tensor] = []

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, input_ids: torch.Tensor):
        self.seen_ids.append(input_ids)
        return self.scale * x_t


EMPTY_IDS = torch.tensor([[BOS_ID, EOS_ID] + [0] * (CONTEXT - 2)])


def objective_ids(cond_drop_prob: float, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    spy = SpyModel()
    objective = DiffusionObjective(CONFIG.diffusion, EMPTY_IDS, cond_drop_prob)
    latents = torch.randn(len(ids), 4, 2, 2, generator=torch.Generator().manual_seed(2))
    loss = objective(spy, (latents, ids), torch.Generator().manual_seed(0))
    assert loss.shape == () and torch.isfinite(loss) and loss > 0
    (seen,) = spy.seen_ids
    return seen, loss


def caption_ids(n: int) -> torch.Tensor:
    return torch.randint(4, 60, (n, CONTEXT), generator=torch.Generator().manual_seed(1))


def test_cond_drop_one_replaces_every_caption_by_the_empty_prompt() -> None:
    seen, _ = objective_ids(1.0, caption_ids(6))
    assert torch.equal(seen, EMPTY_IDS.expand(6, CONTEXT))


def test_cond_drop_zero_keeps_every_caption() -> None:
    ids = caption_ids(6)
    seen, _ = objective_ids(0.0, ids)
    assert torch.equal(seen, ids)


def test_cond_drop_half_drops_some_captions_reproducibly() -> None:
    ids = caption_ids(64)
    seen, loss = objective_ids(0.5, ids)
    dropped = (seen == EMPTY_IDS).all(dim=1)
    assert 10 < dropped.sum() < 54
    assert torch.equal(seen[~dropped], ids[~dropped])
    again, loss_again = objective_ids(0.5, ids)
    assert torch.equal(seen, again) and torch.equal(loss, loss_again)


def joint_model(train_text_encoder: bool) -> LatentDiffusionModel:
    torch.manual_seed(0)
    unet = UNet(CONFIG.unet)
    with torch.no_grad():  # LDM's init zeroes the output layers, so no gradient would flow back
        for parameter in unet.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return LatentDiffusionModel(
        unet, TextEncoder(CONFIG.text_encoder), train_text_encoder=train_text_encoder
    )


def test_joint_model_runs_the_unet_on_the_encoded_captions() -> None:
    model = joint_model(train_text_encoder=False)
    x, t, ids = torch.randn(2, 4, 4, 4), torch.tensor([3.0, 700.0]), caption_ids(2)
    expected = model.unet(x, t, model.text_encoder(ids))
    torch.testing.assert_close(model(x, t, ids), expected)


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_text_encoder_is_trained_only_when_asked(train_text_encoder: bool) -> None:
    model = joint_model(train_text_encoder)
    model(
        torch.randn(2, 4, 4, 4), torch.tensor([3.0, 700.0]), caption_ids(2)
    ).square().sum().backward()
    text_grads = [p.grad for p in model.text_encoder.parameters()]
    if train_text_encoder:
        assert any(g is not None and g.abs().sum() > 0 for g in text_grads)
    else:
        assert all(g is None for g in text_grads)
        assert not any(p.requires_grad for p in model.text_encoder.parameters())
    assert model.unet.conv_out.weight.grad.abs().sum() > 0


# ── Representation alignment (REPA) ──────────────────────────────────────────────────────


def aligned_model() -> LatentDiffusionModel:
    model = joint_model(train_text_encoder=True)
    # tiny: level 1 of 4×4 latents is 2×2, 32 channels, aligned to 8-wide patch states.
    return LatentDiffusionModel(
        model.unet,
        model.text_encoder,
        train_text_encoder=True,
        alignment=Projector(1, CONFIG.unet.block_channels[1], 8, hidden=16),
    )


def test_an_aligning_model_returns_the_projection_of_its_level_features() -> None:
    model = aligned_model()
    x, t, ids = torch.randn(2, 4, 4, 4), torch.tensor([3.0, 700.0]), caption_ids(2)
    features = []
    model.unet.down[1].blocks[-1].register_forward_hook(lambda _m, _i, o: features.append(o))
    prediction, projected = model(x, t, ids)
    torch.testing.assert_close(prediction, joint_model(True)(x, t, ids))
    (level_features,) = features  # the down path's, not the up path's, at level 1
    assert level_features.shape == (2, CONFIG.unet.block_channels[1], 2, 2)
    assert projected.shape == (2, 4, 8)
    torch.testing.assert_close(projected, model.alignment(level_features))
    # An EMA-style deepcopy hooks into its own U-Net, not the original's.
    copy = deepcopy(model)
    _, copied = copy(x, t, ids)
    torch.testing.assert_close(copied, projected)
    assert model._features == [] and copy._features == []


def test_the_aligned_objective_adds_lambda_times_the_alignment_loss() -> None:
    model = aligned_model()
    latents = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    ids, targets = caption_ids(3), torch.randn(3, 4, 8)
    plain = DiffusionObjective(CONFIG.diffusion, EMPTY_IDS, 0.0, weighting="none")
    aligned = DiffusionObjective(
        CONFIG.diffusion, EMPTY_IDS, 0.0, weighting="none", alignment_weight=0.5
    )
    loss = aligned(model, (latents, ids, targets), torch.Generator().manual_seed(0))
    projections = []
    unaligned = LatentDiffusionModel(model.unet, model.text_encoder, train_text_encoder=True)

    def spy(x_t, t, input_ids):  # the same noise and timesteps as the aligned call
        prediction, projected = model(x_t, t, input_ids)
        projections.append(projected)
        return prediction

    expected_diffusion = plain(spy, (latents, ids), torch.Generator().manual_seed(0))
    expected = expected_diffusion + 0.5 * alignment_loss(projections[0], targets)
    torch.testing.assert_close(loss, expected)
    assert loss > expected_diffusion
    torch.testing.assert_close(
        plain(unaligned, (latents, ids), torch.Generator().manual_seed(0)), expected_diffusion
    )
    loss.backward()
    assert model.alignment.mlp[0].weight.grad.abs().sum() > 0
    # The alignment term reaches the U-Net's path up to the aligned level.
    assert model.unet.down[0].blocks[0].resnet.conv1.weight.grad.abs().sum() > 0


def test_a_cache_with_an_encoder_keeps_the_patch_states_of_its_renders(
    tokenizer: Tokenizer, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    encoder = ImageEncoder(ImageEncoderConfig(image_size=16, patch_size=4, width=8, heads=2))
    cache = build_latent_cache(
        AffineStandIn(), tokenizer, num_samples=5, size=16, context_length=CONTEXT, seed=1,
        batch_size=3, progress=False, target_encoder=encoder,
    )  # fmt: skip
    images, _ = render_batch(3, 16, derive_seed(_CACHE_DATA, 1, 0))
    assert cache.targets.shape == (5, 16, 8) and cache.targets.dtype == torch.float16
    torch.testing.assert_close(cache.targets[:3], patch_targets(encoder, images_to_tensor(images)))
    cache.save(tmp_path / "latents.safetensors")
    loaded = LatentCache.load(tmp_path / "latents.safetensors")
    assert torch.equal(loaded.targets, cache.targets)
    latents, ids, targets = loaded.batches(2, seed=0)(0, 0, 1)
    indices = [i for i in range(5) if torch.equal(loaded.input_ids[i], ids[0])]
    assert any(torch.equal(loaded.targets[i], targets[0]) for i in indices)
    assert len(loaded.batches(2, seed=0)(0, 0, 1)) == 3
    plain = LatentCache(cache.latents, cache.input_ids, cache.latents_mean, cache.latents_std)
    assert len(plain.batches(2, seed=0)(0, 0, 1)) == 2

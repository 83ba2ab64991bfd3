import pytest
import torch
from diffusers import AutoencoderKL
from hypothesis import given, settings
from hypothesis import strategies as st

from latentdiff.checkpoints.diffusers_layout import autoencoder_from_diffusers, diffusers_vae_config
from latentdiff.config import PRESETS, AutoencoderConfig
from latentdiff.errors import UsageError
from latentdiff.models.autoencoder import Autoencoder, DiagonalGaussian

F4 = AutoencoderConfig(block_channels=(8, 16, 16), layers_per_block=1, norm_groups=4)
F8 = AutoencoderConfig(block_channels=(8, 8, 16, 16), layers_per_block=2, norm_groups=4)


def pair(config: AutoencoderConfig) -> tuple[Autoencoder, AutoencoderKL]:
    torch.manual_seed(0)
    reference = AutoencoderKL(**diffusers_vae_config(config)).eval()
    model = Autoencoder(config).eval()
    model.load_state_dict(autoencoder_from_diffusers(reference.state_dict(), config))
    return model, reference


def randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("config", [F4, F8], ids=["f4", "f8"])
def test_encode_and_decode_match_diffusers(config):
    model, reference = pair(config)
    f = config.downsample_factor
    x = randn(2, 3, 4 * f, 3 * f)
    z = randn(2, config.latent_channels, 4, 3, seed=2)
    with torch.no_grad():
        posterior, expected = model.encode(x), reference.encode(x).latent_dist
        decoded, expected_decoded = model.decode(z), reference.decode(z).sample
    assert posterior.mean.shape == (2, config.latent_channels, 4, 3)
    torch.testing.assert_close(posterior.mean, expected.mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(posterior.logvar, expected.logvar, atol=1e-5, rtol=1e-5)
    assert decoded.shape == x.shape
    torch.testing.assert_close(decoded, expected_decoded, atol=1e-5, rtol=1e-5)


def test_forward_reconstructs_through_the_posterior_mode():
    model, reference = pair(F4)
    x = randn(1, 3, 16, 16)
    with torch.no_grad():
        reconstruction, posterior = model(x)
        torch.testing.assert_close(reconstruction, model.decode(posterior.mode()))
        torch.testing.assert_close(reconstruction, reference(x).sample, atol=1e-5, rtol=1e-5)


def test_posterior_sampling_is_seeded_and_reparameterised():
    moments = randn(2, 8, 3, 3)
    posterior = DiagonalGaussian(moments)
    a = posterior.sample(torch.Generator().manual_seed(7))
    b = posterior.sample(torch.Generator().manual_seed(7))
    eps = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, posterior.mean + posterior.std * eps)


def test_kl_and_log_variance_clamp():
    mean, logvar = randn(2, 4, 3, 3), randn(2, 4, 3, 3, seed=2)
    posterior = DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    per_element = 0.5 * (mean**2 + logvar.exp() - 1 - logvar)
    torch.testing.assert_close(posterior.kl(), per_element.sum(dim=(1, 2, 3)))
    standard = DiagonalGaussian(torch.zeros(1, 8, 2, 2))
    assert standard.kl().item() == 0.0
    extreme = DiagonalGaussian(torch.cat([mean, torch.full_like(logvar, 100.0)], dim=1))
    assert extreme.logvar.max().item() == 20.0


def test_parameter_count_of_sd_autoencoder():
    config = PRESETS["sd15"]().autoencoder
    with torch.device("meta"):
        ours = sum(p.numel() for p in Autoencoder(config).parameters())
        reference = AutoencoderKL(**diffusers_vae_config(config))
    assert ours == sum(p.numel() for p in reference.parameters()) == 83_653_863


def test_diffusion_latents_normalise_each_channel_and_invert() -> None:
    from latentdiff.config import AutoencoderConfig
    from latentdiff.models.autoencoder import from_diffusion_latents, to_diffusion_latents

    config = AutoencoderConfig(
        latent_channels=2, scaling_factor=0.5, latents_mean=(1.0, -2.0), latents_std=(2.0, 4.0)
    )
    z = torch.tensor([[[[3.0]], [[2.0]]]])  # (1, 2, 1, 1)
    x = to_diffusion_latents(z, config)
    torch.testing.assert_close(x.flatten(), torch.tensor([(3 - 1) * 0.5 / 2, (2 + 2) * 0.5 / 4]))
    torch.testing.assert_close(from_diffusion_latents(x, config), z)
    plain = AutoencoderConfig()  # SD: only the scalar factor
    torch.testing.assert_close(to_diffusion_latents(z, plain), z * 0.18215)


# ── Tiled decoding ────────────────────────────────────────────────────────────────────────


def test_tiled_decode_of_a_latent_within_one_tile_is_decode():
    model, _ = pair(F8)
    z = randn(2, 4, 5, 7)
    with torch.no_grad():
        assert torch.equal(model.decode_tiled(z, tile=8, overlap=2), model.decode(z))
        assert torch.equal(model.decode_tiled(z, tile=7, overlap=2), model.decode(z))


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(1, 80),
    width=st.integers(1, 80),
    tile=st.integers(2, 24),
    overlap_fraction=st.floats(0, 0.9),
)
def test_tiled_blending_is_a_partition_of_unity(height, width, tile, overlap_fraction):
    """With a tile-independent decoder (nearest upsampling), tiling must change nothing: any
    misplaced window or unnormalised weight would show here. Tiles never exceed `tile` and
    are as few as the overlap allows."""
    overlap = min(int(overlap_fraction * tile), tile - 1)
    model = Autoencoder(F4)
    f = F4.downsample_factor
    tiles = []

    def upsample(z: torch.Tensor) -> torch.Tensor:
        tiles.append(z.shape[-2:])
        return torch.nn.functional.interpolate(z[:, :3], scale_factor=f)

    model.decode = upsample
    z = randn(2, 4, height, width)
    tiled = model.decode_tiled(z, tile=tile, overlap=overlap)
    assert tiled.shape == (2, 3, f * height, f * width)
    torch.testing.assert_close(tiled, upsample(z), atol=1e-6, rtol=1e-6)
    tiles.pop()  # the untiled reference

    def count(size: int) -> int:
        return 1 if size <= tile else -(-(size - overlap) // (tile - overlap))

    assert len(tiles) == count(height) * count(width)
    assert all(h <= tile and w <= tile for h, w in tiles)


def test_tiled_decode_blends_the_seams_of_a_real_decoder():
    """A tiny random autoencoder; 24×40 latents in 16×16 tiles, rows from 0 and 8, columns from
    0, 8, 16, 24. Measured max |tiled − decode| 0.51 (decode's std 0.26), against 1.38 for the
    tiles pasted without blending; mean 0.045 against 0.084. Plain averaging of the overlaps
    (0.71, 0.068) or ramps the wrong way round (0.71, 0.060) fail the bounds below."""
    torch.manual_seed(0)
    model = Autoencoder(F4).eval()
    z = randn(1, 4, 24, 40)
    f = F4.downsample_factor
    with torch.no_grad():
        whole = model.decode(z)
        tiled = model.decode_tiled(z, tile=16, overlap=8)
        pasted = whole.clone()
        for top in (0, 8):
            for left in (0, 8, 16, 24):
                piece = model.decode(z[..., top : top + 16, left : left + 16])
                pasted[..., f * top : f * (top + 16), f * left : f * (left + 16)] = piece
    assert tiled.shape == whole.shape == (1, 3, 96, 160)
    # Where only the first tile reaches, the result is that tile's decode.
    torch.testing.assert_close(tiled[..., :32, :32], pasted[..., :32, :32], atol=0, rtol=0)
    blended, unblended = (tiled - whole).abs(), (pasted - whole).abs()
    assert blended.max() < 0.6 and blended.max() < 0.5 * unblended.max()
    assert blended.mean() < 0.7 * unblended.mean()


@pytest.mark.parametrize("tile, overlap", [(0, 0), (8, 8), (8, -1)])
def test_tiled_decode_refuses_bad_tiles(tile, overlap):
    model = Autoencoder(F4)
    with pytest.raises(UsageError, match="overlap < tile"):
        model.decode_tiled(randn(1, 4, 4, 4), tile=tile, overlap=overlap)

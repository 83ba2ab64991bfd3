import pytest
import torch
from diffusers import AutoencoderKL

from latentdiff.checkpoints.diffusers_layout import autoencoder_from_diffusers, diffusers_vae_config
from latentdiff.config import PRESETS, AutoencoderConfig
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

from pathlib import Path

import numpy as np
import pytest
import torch

from latentdiff.checkpoints.bundle import Components
from latentdiff.checkpoints.sources import load_model
from latentdiff.diffusion.schedules import SchedulerSettings
from latentdiff.errors import UsageError
from latentdiff.pipelines.common import (
    decode_latents,
    encode_images,
    encode_prompt,
    images_to_tensor,
    seeded_noise,
    tensor_to_images,
)
from latentdiff.pipelines.request import GenerationRequest
from latentdiff.pipelines.txt2img import resolve_seeds, txt2img_latents

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def components(tiny_model_dir: Path) -> Components:
    return load_model(tiny_model_dir, CPU)[0]


def sample(components: Components, seeds: list[int], **kwargs) -> torch.Tensor:
    latents = kwargs.pop("latents", None)
    request = GenerationRequest(num_inference_steps=2, sampler="ddim", **kwargs)
    return txt2img_latents(
        components, request, seeds, scheduler=SchedulerSettings(), latents=latents
    )


def test_resolve_seeds_gives_image_k_seed_plus_k() -> None:
    request = GenerationRequest(prompt=["a", "b"], num_images=2, seed=7)
    assert resolve_seeds(request) == [7, 8, 9, 10]


def test_resolve_seeds_without_seed_draws_consecutive_seeds() -> None:
    seeds = resolve_seeds(GenerationRequest(prompt="a", num_images=3))
    assert seeds == [seeds[0], seeds[0] + 1, seeds[0] + 2]
    assert 0 <= seeds[0] < 2**32


def test_seeded_noise_is_one_independent_draw_per_seed() -> None:
    noise = seeded_noise((2, 3, 3), [5, 6, 5], CPU)
    assert noise.shape == (3, 2, 3, 3)
    assert torch.equal(noise[0], torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(noise[0], noise[2])
    assert not torch.equal(noise[0], noise[1])


def test_latents_have_the_requested_shape(components: Components) -> None:
    z = sample(components, [0, 1], prompt="a red circle", num_images=2, height=8, width=24)
    f = components.config.autoencoder.downsample_factor
    assert z.shape == (2, components.config.unet.in_channels, 8 // f, 24 // f)
    assert torch.isfinite(z).all()


def test_given_seeded_noise_reproduces_the_seeded_run(components: Components) -> None:
    seeds = [3, 4]
    seeded = sample(components, seeds, prompt="a red circle", num_images=2)
    shape = tuple(seeded.shape[1:])
    given = sample(
        components, seeds, prompt="a red circle", num_images=2,
        latents=seeded_noise(shape, seeds, CPU),
    )  # fmt: skip
    other = sample(
        components, seeds, prompt="a red circle", num_images=2,
        latents=seeded_noise(shape, [30, 40], CPU),
    )  # fmt: skip
    assert torch.equal(given, seeded)
    assert not torch.allclose(other, seeded)


def test_latents_of_the_wrong_shape_are_rejected(components: Components) -> None:
    with pytest.raises(UsageError, match="latents must have shape"):
        sample(components, [0], prompt="a", latents=torch.zeros(1, 4, 3, 3))


def test_encode_prompt_gives_one_context_per_prompt(components: Components) -> None:
    text = components.config.text_encoder
    context = encode_prompt(components, ["a red circle", "", "a red circle"])
    assert context.shape == (3, text.context_length, text.width)
    assert torch.equal(context[0], context[2])
    assert not torch.allclose(context[0], context[1])


def test_decode_latents_gives_rgb_images_of_f_times_the_latent_size(
    components: Components,
) -> None:
    f = components.config.autoencoder.downsample_factor
    images = decode_latents(components, torch.randn(2, 4, 3, 5))
    assert [(image.mode, image.size) for image in images] == [("RGB", (5 * f, 3 * f))] * 2


def test_images_to_tensor_maps_uint8_to_minus_one_one() -> None:
    images = np.array([[[[0, 255, 51]]]], dtype=np.uint8)  # (1, 1, 1, 3)
    x = images_to_tensor(images)
    assert x.shape == (1, 3, 1, 1)
    torch.testing.assert_close(x.flatten(), torch.tensor([-1.0, 1.0, 51 / 127.5 - 1]))


def test_tensor_to_images_clamps_rounds_and_inverts_images_to_tensor() -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)
    np.testing.assert_array_equal(tensor_to_images(images_to_tensor(images)), images)
    x = torch.tensor([-3.0, 1.5, 0.0, 0.003]).reshape(1, 1, 2, 2).expand(1, 3, 2, 2)
    assert tensor_to_images(x)[0, :, :, 0].tolist() == [[0, 255], [128, 128]]


def test_encode_images_scales_the_posterior_mode(components: Components) -> None:
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    z = encode_images(components, x)
    mode = components.autoencoder.encode(x).mode()
    torch.testing.assert_close(z, mode * components.config.autoencoder.scaling_factor)

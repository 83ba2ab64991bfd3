import copy
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionInpaintPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from torch import nn

from latentdiff.checkpoints.bundle import Components, build_components, random_weights
from latentdiff.checkpoints.diffusers_layout import (
    autoencoder_to_diffusers,
    diffusers_unet_config,
    diffusers_vae_config,
    unet_to_diffusers,
)
from latentdiff.checkpoints.sources import load_model
from latentdiff.config import inpainting, tiny_config
from latentdiff.diffusion.schedules import SchedulerSettings
from latentdiff.errors import UsageError
from latentdiff.models.tokenizer import build_world_tokenizer
from latentdiff.pipelines.common import (
    decode_latents,
    encode_images,
    encode_prompt,
    images_to_tensor,
    inpainting_concat,
    seeded_noise,
    tensor_to_images,
)
from latentdiff.pipelines.request import GenerationRequest
from latentdiff.pipelines.txt2img import request_sigmas, resolve_seeds, txt2img_latents

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def components(tiny_model_dir: Path) -> Components:
    return load_model(tiny_model_dir, CPU)[0]


@pytest.fixture(scope="module")
def inpainting_components() -> Components:
    """The tiny model's 9-channel inpainting variant, random weights (outputs not all zero)."""
    config = inpainting(tiny_config())
    components = build_components(
        config, build_world_tokenizer(vocab_size=config.text_encoder.vocab_size)
    )
    for name, state in random_weights(config, noise=0.05).items():
        getattr(components, name).load_state_dict(state)
    return components


def sample(components: Components, seeds: list[int], **kwargs) -> torch.Tensor:
    latents = kwargs.pop("latents", None)
    request = GenerationRequest(num_inference_steps=2, sampler="ddim", **kwargs)
    return txt2img_latents(
        components, request, seeds, scheduler=SchedulerSettings(), latents=latents
    )


def test_resolve_seeds_gives_image_k_seed_plus_k() -> None:
    request = GenerationRequest(prompt=["a", "b"], num_images=2, seed=7)
    assert resolve_seeds(request) == [7, 8, 9, 10]


def test_resolve_seeds_draws_the_base_seed_from_a_generator() -> None:
    request = GenerationRequest(prompt="a", num_images=3)
    base = torch.randint(2**32, (), generator=torch.Generator().manual_seed(8)).item()
    assert resolve_seeds(request, torch.Generator().manual_seed(8)) == [base, base + 1, base + 2]


def test_resolve_seeds_gives_image_k_a_seed_from_generator_k() -> None:
    """diffusers' list of generators: image k's noise, and so its PNG's seed, from generator k."""
    request = GenerationRequest(prompt=["a", "b"], num_images=2)
    generators = [torch.Generator().manual_seed(s) for s in (9, 1, 9, 4)]
    expected = [torch.randint(2**32, (), generator=torch.Generator().manual_seed(s)).item()
                for s in (9, 1, 9, 4)]  # fmt: skip
    assert resolve_seeds(request, generators) == expected
    assert expected[0] == expected[2] and len(set(expected)) == 3


def test_resolve_seeds_rejects_a_seed_with_a_generator_and_a_wrong_count() -> None:
    """A seed and a generator would be two noise sources: the PNG's seed could not reproduce it."""
    seeded = GenerationRequest(prompt="a", seed=3)
    for generator in (torch.Generator(), [torch.Generator()]):
        with pytest.raises(UsageError, match="give a seed or a generator, not both"):
            resolve_seeds(seeded, generator)
    with pytest.raises(UsageError, match="one generator per image: 1 for 2 images"):
        resolve_seeds(GenerationRequest(prompt="a", num_images=2), [torch.Generator()])


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
    assert z.shape == (2, components.config.autoencoder.latent_channels, 8 // f, 24 // f)
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


def test_guidance_interval_guides_exactly_the_steps_whose_sigma_it_holds(
    components: Components,
) -> None:
    request = GenerationRequest(prompt="a red circle", num_inference_steps=2, sampler="ddim")
    first, second = request_sigmas(components.config, request, SchedulerSettings())[:2].tolist()

    def run(**kwargs) -> torch.Tensor:
        return sample(components, [5], prompt="a red circle", **kwargs)

    every_step = run(guidance_scale=7.0, guidance_interval=(0.0, math.inf))
    no_step = run(guidance_scale=7.0, guidance_interval=(first * 2, math.inf))
    first_only = run(guidance_scale=7.0, guidance_interval=((first + second) / 2, first))
    assert torch.equal(every_step, run(guidance_scale=7.0))
    assert torch.equal(no_step, run(guidance_scale=1.0))
    assert not torch.allclose(first_only, every_step) and not torch.allclose(first_only, no_step)


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


@pytest.mark.parametrize(
    ("sampler", "steps", "spacing"),
    [("euler", 1001, None), ("dpmpp_2m", 1001, None), ("dpmpp_2m", 1000, None),
     ("dpmpp_2m", 1000, "leading")],
)  # fmt: skip
def test_request_sigmas_names_the_steps_asked_for(
    components: Components, sampler: str, steps: int, spacing: str | None
) -> None:
    """DPM-Solver places steps + 1 timesteps; the message still counts the user's steps."""
    request = GenerationRequest(prompt="a", num_inference_steps=steps, sampler=sampler)
    with pytest.raises(UsageError) as error:
        request_sigmas(components.config, request, SchedulerSettings(spacing=spacing))
    assert str(error.value) == (
        f"{steps} steps are too many for the {sampler} sampler over this model's 1000 "
        "training timesteps"
    )


def test_request_sigmas_are_the_steps_plus_one_sigmas_of_a_valid_request(
    components: Components,
) -> None:
    for sampler, steps in (("euler", 1000), ("dpmpp_2m", 999), ("ddim", 7)):
        request = GenerationRequest(prompt="a", num_inference_steps=steps, sampler=sampler)
        sigmas = request_sigmas(components.config, request, SchedulerSettings())
        assert len(sigmas) == steps + 1 and (sigmas.diff() < 0).all()


def test_request_sigmas_checks_the_request_first(components: Components) -> None:
    request = GenerationRequest(prompt="a", width=6)  # tiny model: multiples of 4
    with pytest.raises(UsageError, match="width must be a positive multiple of 4"):
        request_sigmas(components.config, request, SchedulerSettings())


def test_a_model_that_needs_an_image_is_refused(components: Components) -> None:
    config = components.config
    upscaler = replace(config, unet=replace(config.unet, in_channels=7))  # latents + an RGB image
    with pytest.raises(UsageError, match="takes 7 input channels, not the 4 of text to image"):
        request_sigmas(upscaler, GenerationRequest(prompt="a"), SchedulerSettings())


class RecordingUNet(nn.Module):
    """The U-Net, remembering every input x it is given."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet, self.inputs = unet, []

    def forward(self, x, t, context):
        self.inputs.append(x)
        return self.unet(x, t, context)


def test_an_inpainting_model_repaints_everything_from_latent_channels_of_noise(
    inpainting_components: Components,
) -> None:
    """Text to image with a 9-channel U-Net (diffusers, A1111): x has the autoencoder's 4
    channels, and the U-Net sees [c_in·x, mask of ones, latents of the all-zero image]."""
    recorder = RecordingUNet(inpainting_components.unet)
    components = replace(inpainting_components, unet=recorder)
    seeds = [3, 4]
    z = sample(components, seeds, prompt="a red circle", num_images=2, height=8, width=12)
    assert z.shape == (2, 4, 4, 6) and torch.isfinite(z).all()
    assert [tuple(x.shape) for x in recorder.inputs] == [(4, 9, 4, 6)] * 2  # CFG: 2 × 2 images
    # Leading-spaced DDIM starts at x = noise·√(σ²+1) and c_in = 1/√(σ²+1): c_in·x is the noise.
    noise = seeded_noise((4, 4, 6), seeds, CPU)
    torch.testing.assert_close(recorder.inputs[0][:, :4], torch.cat([noise, noise]))
    blank = encode_images(components, torch.zeros(1, 3, 8, 12))
    assert blank.abs().max() > 0.05  # the encoder's biases: not the zero latent
    for x_in in recorder.inputs:
        assert torch.equal(x_in[:, 4], torch.ones(4, 4, 6))
        torch.testing.assert_close(x_in[:, 5:], blank.expand(4, -1, -1, -1), rtol=0, atol=0)


def test_inpainting_concat_resizes_the_mask_to_the_latent_grid(
    inpainting_components: Components,
) -> None:
    mask = torch.zeros(1, 1, 8, 12)
    mask[..., :, 6:] = 1  # repaint the right half
    image = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(0)) * 2 - 1
    concat = inpainting_concat(inpainting_components, mask, image * (1 - mask))
    assert concat.shape == (1, 5, 4, 6)
    assert concat[0, 0].tolist() == [[0, 0, 0, 1, 1, 1]] * 4
    expected = encode_images(inpainting_components, image * (1 - mask))
    torch.testing.assert_close(concat[:, 1:], expected, rtol=0, atol=0)


def diffusers_inpainting(components: Components, scheduler: dict) -> StableDiffusionInpaintPipeline:
    """diffusers' inpainting pipeline with our weights; text comes in as `prompt_embeds`."""
    config = components.config
    f = config.autoencoder.downsample_factor
    unet = UNet2DConditionModel(
        **diffusers_unet_config(config.unet), sample_size=config.sample_size // f
    )
    unet.load_state_dict(unet_to_diffusers(components.unet.state_dict(), config.unet))
    vae = AutoencoderKL(**diffusers_vae_config(config.autoencoder))
    vae.load_state_dict(
        autoencoder_to_diffusers(components.autoencoder.state_dict(), config.autoencoder)
    )
    return StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=unet,
        scheduler=DDIMScheduler(**scheduler), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip


@torch.no_grad()
def test_an_inpainting_model_samples_as_diffusers_inpaint_pipeline_with_a_full_mask(
    inpainting_components: Components,
) -> None:
    # diffusers encodes the masked image with a posterior *sample*; a σ of e^-15 (logvar -30)
    # makes that the mode, which latentdiff uses, to within 1e-7.
    autoencoder = copy.deepcopy(inpainting_components.autoencoder)
    latent = inpainting_components.config.autoencoder.latent_channels
    autoencoder.quant_conv.weight[latent:] = 0
    autoencoder.quant_conv.bias[latent:] = -30
    components = replace(inpainting_components, autoencoder=autoencoder)
    scheduler = {
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
        "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
        "timestep_spacing": "leading",
    }  # fmt: skip
    theirs = diffusers_inpainting(components, scheduler)
    request = GenerationRequest(
        prompt="a red circle", negative_prompt="two blue squares", num_inference_steps=3,
        guidance_scale=7.5, sampler="ddim",
    )  # fmt: skip
    settings = SchedulerSettings.from_diffusers_config(scheduler)
    ours = txt2img_latents(components, request, [5], scheduler=settings)
    cond, uncond = encode_prompt(components, ["a red circle", "two blue squares"]).chunk(2)
    expected = theirs(
        prompt_embeds=cond, negative_prompt_embeds=uncond,
        image=Image.new("RGB", (16, 16), "red"), mask_image=Image.new("L", (16, 16), 255),
        height=16, width=16, strength=1.0, num_inference_steps=3, guidance_scale=7.5,
        latents=seeded_noise((4, 8, 8), [5], CPU), output_type="latent",
    ).images  # fmt: skip
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    assert (ours - seeded_noise((4, 8, 8), [5], CPU)).abs().max() > 0.1  # it did sample

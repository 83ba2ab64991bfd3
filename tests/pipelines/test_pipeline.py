import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import latentdiff
from latentdiff.diffusion.samplers import SAMPLERS
from latentdiff.errors import UsageError
from latentdiff.pipelines.common import seeded_noise
from latentdiff.pipelines.pipeline import Pipeline, load_pipeline
from latentdiff.pipelines.request import SCHEDULES, GenerationRequest

PROMPT = "a red circle on the left"
DETERMINISTIC_SAMPLERS = ("ddim", "euler", "dpmpp_2m", "heun")


@pytest.fixture(scope="module")
def pipe(tiny_model_dir: Path) -> Pipeline:
    return load_pipeline(tiny_model_dir, device="cpu")


def pixels(images: list[Image.Image]) -> list[np.ndarray]:
    return [np.array(image) for image in images]


def run(pipe: Pipeline, **kwargs) -> np.ndarray:
    """The single image of a short run (2 steps) with `kwargs` over defaults."""
    kwargs = {"prompt": PROMPT, "num_inference_steps": 2, "seed": 0, **kwargs}
    (image,) = pipe(**kwargs)
    return np.array(image)


def test_load_pipeline_reads_the_folder_onto_the_device(tiny_model_dir: Path) -> None:
    pipe = latentdiff.load_pipeline(str(tiny_model_dir), device="cpu")
    assert pipe.device == torch.device("cpu")
    assert pipe.name == tiny_model_dir.name
    assert not any(p.requires_grad for p in pipe.components.unet.parameters())


def test_model_name_ignores_a_trailing_slash(tiny_model_dir: Path) -> None:
    assert load_pipeline(f"{tiny_model_dir}/", device="cpu").name == tiny_model_dir.name


def test_missing_model_folder_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no model folder"):
        load_pipeline(tmp_path / "nowhere", device="cpu")


def test_same_seed_gives_identical_pixels(pipe: Pipeline) -> None:
    first = run(pipe, seed=11)
    assert first.shape == (16, 16, 3) and first.dtype == np.uint8
    assert np.array_equal(first, run(pipe, seed=11))


def test_different_seeds_give_different_images(pipe: Pipeline) -> None:
    assert not np.array_equal(run(pipe, seed=11), run(pipe, seed=12))


@pytest.mark.parametrize("sampler", ["euler_a", "ddpm"])
def test_ancestral_samplers_are_reproducible_from_the_seed(pipe: Pipeline, sampler: str) -> None:
    assert np.array_equal(run(pipe, sampler=sampler, seed=3), run(pipe, sampler=sampler, seed=3))
    assert not np.array_equal(
        run(pipe, sampler=sampler, seed=3), run(pipe, sampler=sampler, seed=4)
    )


def test_generator_without_seed_makes_a_run_repeatable(pipe: Pipeline) -> None:
    """As in diffusers: a seeded `generator` alone fixes the result."""
    first = run(pipe, seed=None, generator=torch.Generator().manual_seed(5), sampler="euler_a")
    again = run(pipe, seed=None, generator=torch.Generator().manual_seed(5), sampler="euler_a")
    other = run(pipe, seed=None, generator=torch.Generator().manual_seed(6), sampler="euler_a")
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_seed_and_generator_together_are_a_usage_error(pipe: Pipeline) -> None:
    """Two noise sources would make the PNG's seed fail to reproduce the image."""
    for generator in (torch.Generator().manual_seed(5), [torch.Generator().manual_seed(5)]):
        with pytest.raises(UsageError, match="give a seed or a generator, not both"):
            run(pipe, seed=3, generator=generator, sampler="euler_a")


def seed_of(parameters: str) -> int:
    return int(parameters.split("Seed: ")[1].split(",")[0])


def test_a_list_of_generators_gives_image_k_the_seed_of_generator_k(pipe: Pipeline) -> None:
    """diffusers' list of generators; each PNG's seed reproduces its image (ancestral too)."""
    request = GenerationRequest(
        prompt=PROMPT, num_inference_steps=2, sampler="euler_a", num_images=2
    )
    images, parameters = pipe.generate(
        request, generator=[torch.Generator().manual_seed(s) for s in (5, 6)]
    )
    seeds = [seed_of(text) for text in parameters]
    single = [seed_of(pipe.generate(request, generator=torch.Generator().manual_seed(s))[1][0])
              for s in (5, 6)]  # fmt: skip
    assert seeds == single  # generator k's first draw, as a lone generator gives it
    lone = [run(pipe, sampler="euler_a", seed=seed) for seed in seeds]
    assert_same_images(pixels(images), lone)
    assert np.abs(lone[0].astype(int) - lone[1]).max() > 1
    with pytest.raises(UsageError, match="one generator per image: 1 for 2 images"):
        pipe.generate(request, generator=[torch.Generator()])


def test_check_rejects_what_the_model_cannot_honour_before_any_work(pipe: Pipeline) -> None:
    too_many = GenerationRequest(prompt=PROMPT, num_inference_steps=1000, sampler="dpmpp_2m")
    with pytest.raises(UsageError, match="^1000 steps are too many for the dpmpp_2m sampler"):
        pipe.check(too_many)
    with pytest.raises(UsageError, match="width must be a positive multiple of 4"):
        pipe.check(GenerationRequest(prompt=PROMPT, width=18))
    assert pipe.check(replace(too_many, sampler="euler")) is None  # as many as timesteps


def test_given_latents_equal_to_the_seeded_noise_reproduce_the_seeded_run(pipe: Pipeline) -> None:
    seeds = [20, 21]
    shape = (pipe.components.config.autoencoder.latent_channels, 8, 8)  # tiny: 16 px, f = 2
    seeded = pixels(pipe(PROMPT, num_inference_steps=2, seed=20, num_images=2))
    given = pixels(
        pipe(PROMPT, num_inference_steps=2, seed=20, num_images=2,
             latents=seeded_noise(shape, seeds, torch.device("cpu")))
    )  # fmt: skip
    other = pixels(
        pipe(PROMPT, num_inference_steps=2, seed=20, num_images=2,
             latents=seeded_noise(shape, [7, 8], torch.device("cpu")))
    )  # fmt: skip
    assert all(np.array_equal(a, b) for a, b in zip(given, seeded, strict=True))
    assert not any(np.array_equal(a, b) for a, b in zip(other, seeded, strict=True))


def assert_same_images(batch: list[np.ndarray], lone: list[np.ndarray]) -> None:
    """Equal up to one level of 8-bit rounding.

    Image k of a batch starts from the same noise as a lone run with seed + k, but CPU
    convolution kernels round differently at different batch sizes (~1e-6 per U-Net call),
    which can flip the rounding of a pixel. Another seed changes pixels by ~100 levels.
    """
    assert len(batch) == len(lone)
    for a, b in zip(batch, lone, strict=True):
        assert np.abs(a.astype(int) - b).max() <= 1


@pytest.mark.parametrize("sampler", [*DETERMINISTIC_SAMPLERS, "euler_a", "ddpm"])
def test_image_k_of_a_batch_equals_a_lone_run_with_seed_plus_k(
    pipe: Pipeline, sampler: str
) -> None:
    batch = pixels(pipe(PROMPT, num_inference_steps=2, sampler=sampler, seed=40, num_images=3))
    lone = [run(pipe, sampler=sampler, seed=40 + k) for k in range(3)]
    assert_same_images(batch, lone)
    assert np.abs(lone[0].astype(int) - lone[1]).max() > 1


def test_images_come_per_prompt_in_order(pipe: Pipeline) -> None:
    prompts = ["a red circle", "two blue squares"]
    batch = pixels(pipe(prompts, num_inference_steps=2, sampler="ddim", seed=50, num_images=2))
    lone = [run(pipe, prompt=p, sampler="ddim", seed=50 + k) for k, p in enumerate(
        [prompts[0], prompts[0], prompts[1], prompts[1]]
    )]  # fmt: skip
    assert_same_images(batch, lone)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_and_schedule_gives_images_of_the_requested_size(
    pipe: Pipeline, sampler: str, schedule: str
) -> None:
    images = pipe(
        PROMPT, num_inference_steps=2, sampler=sampler, schedule=schedule, seed=1,
        height=32, width=32, num_images=2,
    )  # fmt: skip
    assert [(image.mode, image.size) for image in images] == [("RGB", (32, 32))] * 2
    first, second = pixels(images)
    assert not np.array_equal(first, second)


def test_width_and_height_are_not_swapped(pipe: Pipeline) -> None:
    (image,) = pipe(PROMPT, num_inference_steps=1, sampler="euler", seed=1, height=16, width=32)
    assert image.size == (32, 16)


def test_karras_schedule_changes_the_result(pipe: Pipeline) -> None:
    assert not np.array_equal(run(pipe, schedule="karras"), run(pipe, schedule="default"))


def test_guidance_scale_one_uses_the_conditional_model_only(pipe: Pipeline) -> None:
    cond_only = run(pipe, guidance_scale=1.0)
    assert np.array_equal(cond_only, run(pipe, guidance_scale=1.0, negative_prompt="a square"))
    assert not np.array_equal(cond_only, run(pipe, guidance_scale=5.0))


def test_guidance_rescale_changes_guided_output_only(pipe: Pipeline) -> None:
    plain = run(pipe, guidance_scale=5.0)
    assert np.array_equal(plain, run(pipe, guidance_scale=5.0, guidance_rescale=0.0))
    assert not np.array_equal(plain, run(pipe, guidance_scale=5.0, guidance_rescale=0.7))
    cond_only = run(pipe, guidance_scale=1.0)  # nothing to rescale without guidance
    assert np.array_equal(cond_only, run(pipe, guidance_scale=1.0, guidance_rescale=0.7))


def test_unset_guidance_is_the_models_default_and_given_values_override_it(
    pipe: Pipeline, tiny_model_with_defaults_dir: Path
) -> None:
    own = load_pipeline(tiny_model_with_defaults_dir, device="cpu")
    assert own.sampling_defaults.guidance_interval == (0.5, None)
    # DDIM's 2 steps visit σ ≈ 1.6 (guided: above the default's 0.5) and 0.04 (not guided).
    ddim = {"sampler": "ddim"}
    its_defaults = {"guidance_scale": 3.0, "guidance_rescale": 0.5}
    expected = run(pipe, **ddim, **its_defaults, guidance_interval=(0.5, math.inf))
    assert np.array_equal(run(own, **ddim), expected)
    assert not np.array_equal(expected, run(pipe, **ddim, **its_defaults))  # the interval counts
    assert not np.array_equal(run(own, **ddim), run(pipe, **ddim))  # the project's: 5, every step
    # Every value given: the model's defaults play no part; (0, inf) is every step.
    given = {"guidance_scale": 5.0, "guidance_rescale": 0.0, "guidance_interval": (0, math.inf)}
    assert np.array_equal(run(own, **ddim, **given), run(pipe, **ddim))
    (_,), (text,) = own.generate(GenerationRequest(prompt="a", num_inference_steps=2, seed=1))
    assert "CFG scale: 3, CFG Rescale phi: 0.5, Guidance interval: 0.5-inf, Seed: 1," in text


def test_negative_prompt_changes_the_guided_output(pipe: Pipeline) -> None:
    plain = run(pipe, guidance_scale=5.0)
    assert not np.array_equal(plain, run(pipe, guidance_scale=5.0, negative_prompt="a square"))
    # no negative prompt means the empty one
    assert np.array_equal(plain, run(pipe, guidance_scale=5.0, negative_prompt=""))


def test_prompt_changes_the_output(pipe: Pipeline) -> None:
    assert not np.array_equal(run(pipe), run(pipe, prompt="three green triangles"))


def test_invalid_request_is_a_usage_error(pipe: Pipeline) -> None:
    with pytest.raises(UsageError, match="width must be a positive multiple of 4"):
        pipe(PROMPT, num_inference_steps=2, width=15)
    with pytest.raises(UsageError, match="unknown sampler"):
        pipe(PROMPT, sampler="lms")


def test_empty_prompt_list_is_a_usage_error(pipe: Pipeline) -> None:
    with pytest.raises(UsageError, match="prompt"):
        pipe([], num_inference_steps=2)


def test_generate_returns_the_parameters_of_each_image(pipe: Pipeline) -> None:
    request = GenerationRequest(
        prompt=["a", "b"], negative_prompt=["x", ""], num_inference_steps=2, seed=9
    )
    images, parameters = pipe.generate(request)
    assert len(images) == 2
    first, second = (text.splitlines() for text in parameters)
    assert first[:2] == ["a", "Negative prompt: x"]
    assert second[0] == "b" and len(second) == 2
    assert ", Seed: 9, Size: 16x16, " in first[2]
    assert ", Seed: 10, Size: 16x16, " in second[1]
    assert f"Model: {pipe.name}, " in first[2]


def test_generate_reports_the_random_seed_it_used(pipe: Pipeline) -> None:
    request = GenerationRequest(prompt="a", num_inference_steps=2, sampler="ddim")
    (image,), (text,) = pipe.generate(request)
    seed = int(text.split("Seed: ")[1].split(",")[0])
    assert np.array_equal(np.array(image), run(pipe, prompt="a", sampler="ddim", seed=seed))


def test_memory_options_keep_the_image(tiny_model_dir: Path) -> None:
    pipe = load_pipeline(tiny_model_dir, device="cpu")
    whole = run(pipe, sampler="ddim")
    pipe.enable_attention_slicing(3)  # fewer rows than any attention's queries
    pipe.vae_tiling = True  # one tile at this size: exactly the whole decode
    assert np.abs(run(pipe, sampler="ddim").astype(int) - whole).max() <= 1
    pipe.enable_attention_slicing(None)
    assert np.array_equal(run(pipe, sampler="ddim"), whole)


def test_load_options_reach_the_loader(tiny_model_dir: Path) -> None:
    pipe = load_pipeline(tiny_model_dir, device="cpu", prediction_type="v_prediction")
    assert pipe.components.config.diffusion.prediction_type == "v_prediction"
    with pytest.raises(TypeError):
        load_pipeline(tiny_model_dir, device="cpu", no_such_option=1)


@pytest.mark.parametrize(
    "torch_dtype, mean_error", [("fp16", 0.2), (torch.bfloat16, 1.0)]
)  # fmt: skip
def test_half_precision_modules_give_the_fp32_image(
    tiny_model_dir: Path, pipe: Pipeline, torch_dtype: torch.dtype | str, mean_error: float
) -> None:
    half = load_pipeline(tiny_model_dir, device="cpu", torch_dtype=torch_dtype)
    dtypes = {p.dtype for name in ("unet", "autoencoder", "text_encoder")
              for p in getattr(half.components, name).parameters()}  # fmt: skip
    assert dtypes == {torch.float16 if torch_dtype == "fp16" else torch.bfloat16}
    error = np.abs(run(half, num_inference_steps=4).astype(int) - run(pipe, num_inference_steps=4))
    # Measured: fp16 0.04 mean (max 1 level), bf16 0.38 mean (max 2 levels) of 255.
    assert error.mean() <= mean_error and error.max() <= 4


def test_an_unknown_dtype_is_a_usage_error(tiny_model_dir: Path) -> None:
    with pytest.raises(UsageError, match="dtype"):
        load_pipeline(tiny_model_dir, device="cpu", torch_dtype="fp64")

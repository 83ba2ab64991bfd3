import math

import pytest

from latentdiff.config import SamplingConfig
from latentdiff.diffusion.samplers import SAMPLERS
from latentdiff.errors import UsageError
from latentdiff.pipelines.request import MAX_SEED, SCHEDULES, GenerationRequest

FACTOR = 8


def validate(**overrides) -> None:
    request = GenerationRequest(**{"prompt": "a red circle", **overrides})
    request.validate(FACTOR, tuple(SAMPLERS))


def test_defaults_follow_diffusers_names_and_are_valid() -> None:
    request = GenerationRequest(prompt="a red circle")
    assert request.num_inference_steps == 20
    # Guidance left unset is the model's; without a model's say, SD's usual 5 at every step.
    assert (request.guidance_scale, request.guidance_rescale, request.guidance_interval) == (
        None,
        None,
        None,
    )
    resolved = request.with_defaults(SamplingConfig())
    assert (resolved.guidance_scale, resolved.guidance_rescale) == (5.0, 0.0)
    assert resolved.guidance_interval is None
    assert (request.sampler, request.schedule, request.num_images) == ("dpmpp_2m", "default", 1)
    assert request.validate(FACTOR, tuple(SAMPLERS)) is None


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"num_inference_steps": 0}, "steps"),
        ({"num_inference_steps": -3}, "steps"),
        ({"guidance_scale": math.nan}, "guidance scale"),
        ({"guidance_scale": math.inf}, "guidance scale"),
        ({"guidance_scale": -math.inf}, "guidance scale"),
        ({"sampler": "plms"}, "sampler 'plms'"),
        ({"schedule": "exponential"}, "schedule 'exponential'"),
        ({"height": 60}, "height"),
        ({"width": 4}, "width"),
        ({"width": 0}, "width"),
        ({"height": -8}, "height"),
        ({"num_images": 0}, "num_images"),
        ({"seed": -1}, "seed"),
        ({"seed": MAX_SEED + 1}, "seed"),
        ({"seed": MAX_SEED, "num_images": 2}, "seed"),  # image 1 would get seed 2**64
    ],
)
def test_each_bad_value_is_a_usage_error_naming_it(overrides: dict, named: str) -> None:
    with pytest.raises(UsageError, match=named) as error:
        validate(**overrides)
    assert str(next(iter(overrides.values()))) in str(error.value)


@pytest.mark.parametrize(
    ("interval", "shown"),
    [
        ((2.0, 1.0), "LO=2 HI=1"),
        ((1.0, 1.0), "LO=1 HI=1"),
        ((-0.5, 3.0), "LO=-0.5 HI=3"),
        ((math.nan, 3.0), "LO=nan HI=3"),
        ((0.5, math.nan), "LO=0.5 HI=nan"),
        ((math.inf, math.inf), "LO=inf HI=inf"),
    ],
)
def test_a_guidance_interval_must_be_a_range_of_noise_levels(interval, shown) -> None:
    with pytest.raises(UsageError, match=rf"guidance interval \(LO, HI\] needs .*{shown}$"):
        validate(guidance_interval=interval)


def test_a_guidance_interval_bound_that_is_no_number_is_a_usage_error() -> None:
    # (0.6, None) is how a config.json writes an open top; a request takes inf.
    with pytest.raises(
        UsageError, match=r"must be numbers \(inf for an open top\), got \(0.6, None\)"
    ):
        validate(guidance_interval=(0.6, None))


def test_guidance_intervals_with_an_open_top_or_a_zero_bottom_pass() -> None:
    for interval in ((0.0, 5.0), (1.0, math.inf), (0.28, 5.42)):
        assert validate(guidance_interval=interval) is None


MODEL_DEFAULTS = SamplingConfig(
    guidance_scale=2.0, guidance_rescale=0.7, guidance_interval=(0.6, None)
)


def test_unset_guidance_takes_the_models_defaults_with_an_open_top_as_infinity() -> None:
    resolved = GenerationRequest(prompt="a").with_defaults(MODEL_DEFAULTS)
    assert (resolved.guidance_scale, resolved.guidance_rescale) == (2.0, 0.7)
    assert resolved.guidance_interval == (0.6, math.inf)
    assert resolved.with_defaults(MODEL_DEFAULTS) == resolved  # resolving twice changes nothing


def test_given_guidance_values_override_the_models_defaults() -> None:
    given = GenerationRequest(
        prompt="a", guidance_scale=7.5, guidance_rescale=0.0, guidance_interval=(0.0, math.inf)
    )
    assert given.with_defaults(MODEL_DEFAULTS) == given
    # One value given, the others still the model's.
    partly = GenerationRequest(prompt="a", guidance_scale=3.0).with_defaults(MODEL_DEFAULTS)
    assert (partly.guidance_scale, partly.guidance_rescale) == (3.0, 0.7)
    assert partly.guidance_interval == (0.6, math.inf)


def test_unknown_sampler_message_lists_the_choices() -> None:
    with pytest.raises(UsageError) as error:
        validate(sampler="plms")
    assert all(name in str(error.value) for name in SAMPLERS)


def test_an_empty_prompt_list_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="at least one prompt"):
        validate(prompt=[])


def test_seeds_up_to_the_generator_limit_pass() -> None:
    validate(seed=0)
    validate(seed=MAX_SEED)
    validate(seed=MAX_SEED - 2, num_images=3)


def test_sizes_that_are_multiples_of_the_latent_factor_pass() -> None:
    validate(height=FACTOR, width=5 * FACTOR, guidance_scale=1.0, num_inference_steps=1)
    for schedule in SCHEDULES:
        validate(schedule=schedule)


def test_prompts_repeat_each_prompt_num_images_times_in_order() -> None:
    request = GenerationRequest(prompt=["a", "b"], num_images=3)
    assert request.prompts == ["a", "a", "a", "b", "b", "b"]
    assert GenerationRequest(prompt="c", num_images=2).prompts == ["c", "c"]


def test_negative_prompts_default_to_the_empty_prompt() -> None:
    request = GenerationRequest(prompt=["a", "b"], num_images=2)
    assert request.negative_prompts == ["", "", "", ""]


def test_one_negative_prompt_applies_to_every_image() -> None:
    request = GenerationRequest(prompt=["a", "b"], negative_prompt="n", num_images=2)
    assert request.negative_prompts == ["n", "n", "n", "n"]


def test_negative_prompt_per_prompt_expands_like_the_prompts() -> None:
    request = GenerationRequest(prompt=["a", "b"], negative_prompt=["x", "y"], num_images=2)
    assert request.negative_prompts == ["x", "x", "y", "y"]


def test_negative_prompt_count_mismatch_is_a_usage_error() -> None:
    request = GenerationRequest(prompt=["a", "b"], negative_prompt=["x", "y", "z"])
    with pytest.raises(UsageError, match="negative prompt"):
        _ = request.negative_prompts


@pytest.mark.parametrize("size_multiple", [1, FACTOR])  # 1: the CLI's check before the model loads
@pytest.mark.parametrize(("name", "side"), [("height", 0), ("width", -8)])
def test_a_size_below_one_must_be_positive_whatever_the_multiple(
    size_multiple: int, name: str, side: int
) -> None:
    request = GenerationRequest(prompt="a red circle", **{name: side})
    with pytest.raises(UsageError) as error:
        request.validate(size_multiple, tuple(SAMPLERS))
    assert str(error.value) == f"{name} must be positive, got {side}"

import io
import math
import re

import pytest
from PIL import Image

from latentdiff import __version__
from latentdiff.config import SamplingConfig
from latentdiff.diffusion.samplers import SAMPLERS
from latentdiff.pipelines.metadata import A1111_SAMPLER_NAMES, format_parameters, png_info
from latentdiff.pipelines.request import GenerationRequest

VERSION = f"latentdiff {__version__}"


def parameters(request: GenerationRequest, seed: int = 7) -> str:
    # The pipeline formats a request resolved against its model; these use the project defaults.
    resolved = request.with_defaults(SamplingConfig())
    return format_parameters(resolved, seed=seed, width=64, height=32, model="shapes")


def test_layout_without_negative_prompt_is_two_lines() -> None:
    request = GenerationRequest(prompt="a red circle", seed=7)
    assert parameters(request) == (
        "a red circle\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Automatic, CFG scale: 5, Seed: 7, "
        f"Size: 64x32, Model: shapes, Version: {VERSION}"
    )


def test_layout_with_negative_prompt_and_karras() -> None:
    request = GenerationRequest(
        prompt="two blue squares",
        negative_prompt="a green triangle",
        num_inference_steps=12,
        guidance_scale=7.5,
        sampler="euler_a",
        schedule="karras",
    )
    assert parameters(request, seed=123) == (
        "two blue squares\n"
        "Negative prompt: a green triangle\n"
        "Steps: 12, Sampler: Euler a, Schedule type: Karras, CFG scale: 7.5, Seed: 123, "
        f"Size: 64x32, Model: shapes, Version: {VERSION}"
    )


def test_guidance_rescale_is_written_only_when_used() -> None:
    request = GenerationRequest(prompt="a", guidance_scale=7.5, guidance_rescale=0.7)
    assert "CFG scale: 7.5, CFG Rescale phi: 0.7, Seed: 1," in parameters(request, seed=1)
    assert "CFG Rescale" not in parameters(GenerationRequest(prompt="a"), seed=1)


def test_guidance_interval_is_written_only_when_given() -> None:
    request = GenerationRequest(prompt="a", guidance_interval=(0.6, math.inf))
    assert "CFG scale: 5, Guidance interval: 0.6-inf, Seed: 1," in parameters(request, seed=1)
    assert "interval" not in parameters(GenerationRequest(prompt="a"), seed=1)


def test_empty_negative_prompt_writes_no_negative_line() -> None:
    text = parameters(GenerationRequest(prompt="a circle", negative_prompt=""))
    assert "Negative prompt" not in text
    assert len(text.splitlines()) == 2


def test_seed_argument_not_the_request_seed_is_written() -> None:
    text = parameters(GenerationRequest(prompt="a", seed=1), seed=4)
    assert ", Seed: 4, " in text


def test_every_sampler_has_a_web_ui_name() -> None:
    assert set(A1111_SAMPLER_NAMES) == set(SAMPLERS)
    names = {
        sampler: re.search(
            r"Sampler: ([^,]+),", parameters(GenerationRequest("a", sampler=sampler))
        )
        for sampler in SAMPLERS
    }
    assert {s: m.group(1) for s, m in names.items()} == A1111_SAMPLER_NAMES


def web_ui_fields(line: str) -> dict[str, str]:
    """How AUTOMATIC1111's `parse_generation_parameters` splits the last line (unquoted values)."""
    return dict(re.findall(r"\s*(\w[\w \-/]+):\s*([^,]*)(?:,|$)", line))


def test_last_line_parses_as_the_web_ui_reads_it() -> None:
    request = GenerationRequest(prompt="a", guidance_scale=3.25, num_inference_steps=30)
    fields = web_ui_fields(parameters(request, seed=99).splitlines()[-1])
    assert fields == {
        "Steps": "30",
        "Sampler": "DPM++ 2M",
        "Schedule type": "Automatic",
        "CFG scale": "3.25",
        "Seed": "99",
        "Size": "64x32",
        "Model": "shapes",
        "Version": VERSION,
    }


@pytest.mark.parametrize("text", ["a red circle\nSteps: 1", "ünïcode prompt ✓"])
def test_png_info_round_trips_through_a_png_file(text: str) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG", pnginfo=png_info(text))
    buffer.seek(0)
    with Image.open(buffer) as image:
        assert image.text == {"parameters": text}
        assert image.info["parameters"] == text

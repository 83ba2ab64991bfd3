"""Generation parameters in a PNG's `parameters` text chunk, as AUTOMATIC1111's web UI writes them.

Many tools (image browsers, the web UI's "PNG Info", civitai) read this format:

    a red circle on the left
    Negative prompt: a blue square
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5, Seed: 1, Size: 64x64, ...
"""

from __future__ import annotations

from PIL.PngImagePlugin import PngInfo

from latentdiff import __version__
from latentdiff.pipelines.request import GenerationRequest

# The web UI's display names for our sampler ids.
A1111_SAMPLER_NAMES = {
    "ddpm": "DDPM",
    "ddim": "DDIM",
    "euler": "Euler",
    "euler_a": "Euler a",
    "heun": "Heun",
    "dpmpp_2m": "DPM++ 2M",
}


def format_parameters(
    request: GenerationRequest, *, seed: int, width: int, height: int, model: str
) -> str:
    """The `parameters` text for one image generated with `seed`; `request` is resolved against
    its model (`with_defaults`), so that the text names the guidance actually used."""
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    fields = [
        ("Steps", request.num_inference_steps),
        ("Sampler", A1111_SAMPLER_NAMES.get(request.sampler, request.sampler)),
        ("Schedule type", "Karras" if request.schedule == "karras" else "Automatic"),
        ("CFG scale", f"{request.guidance_scale:g}"),
        *(
            [("CFG Rescale phi", f"{request.guidance_rescale:g}")]
            if request.guidance_rescale
            else []
        ),
        *(
            [("Guidance interval", "{:g}-{:g}".format(*request.guidance_interval))]
            if request.guidance_interval
            else []
        ),
        ("Seed", seed),
        ("Size", f"{width}x{height}"),
        ("Model", model),
        ("Version", f"latentdiff {__version__}"),
    ]
    lines.append(", ".join(f"{key}: {value}" for key, value in fields))
    return "\n".join(lines)


def png_info(parameters: str) -> PngInfo:
    info = PngInfo()
    info.add_text("parameters", parameters)
    return info

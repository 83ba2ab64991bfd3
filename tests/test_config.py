import dataclasses
import json
import math

import pytest

from latentdiff.config import PRESETS, ModelConfig, SamplingConfig, UNetConfig, shapes_config
from latentdiff.errors import UsageError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_round_trips_through_json_dict(name):
    config = PRESETS[name]()
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_unknown_key_is_an_error():
    data = PRESETS["tiny"]().to_dict()
    data["unet"]["channel_multt"] = [1, 2]
    with pytest.raises(UsageError, match="channel_multt"):
        ModelConfig.from_dict(data)


def test_heads_or_head_dim_exactly_one():
    with pytest.raises(ValueError, match="exactly one"):
        UNetConfig(num_heads=8, head_dim=64)
    assert UNetConfig(num_heads=None, head_dim=64).heads_at(1280) == 20


def test_context_width_must_match_text_encoder():
    config = PRESETS["tiny"]()
    with pytest.raises(ValueError, match="context_dim"):
        dataclasses.replace(config, unet=dataclasses.replace(config.unet, context_dim=32))


def test_shapes_v2_differs_from_shapes_v1_in_autoencoder_width_objective_and_sampling():
    v1, v2 = PRESETS["shapes-v1"](), PRESETS["shapes-v2"]()
    assert v2.autoencoder.block_channels == (32, 64, 128)
    assert dataclasses.replace(v2.autoencoder, block_channels=(16, 32, 64)) == v1.autoencoder
    assert (v2.diffusion.prediction_type, v2.diffusion.rescale_betas_zero_snr) == (
        "v_prediction",
        True,
    )
    assert (v2.unet, v2.text_encoder, v2.sample_size) == (v1.unet, v1.text_encoder, v1.sample_size)


def test_shapes_is_shapes_v2_with_a_token_layout_bias_and_its_own_guidance():
    shapes, v2 = PRESETS["shapes"](), PRESETS["shapes-v2"]()
    side = shapes.sample_size // shapes.autoencoder.downsample_factor
    assert (shapes.unet.token_layout_size, v2.unet.token_layout_size) == (side, None)
    # Each model's sampling defaults are the ones measured best on its weights.
    assert (shapes.sampling.guidance_scale, v2.sampling.guidance_scale) == (5.0, 2.0)
    assert dataclasses.replace(shapes, unet=v2.unet, sampling=v2.sampling) == v2


def test_sampling_defaults_round_trip_through_strict_json() -> None:
    config = dataclasses.replace(
        ModelConfig(),
        sampling=SamplingConfig(guidance_scale=2.0, guidance_interval=(0.6, None)),
    )
    text = json.dumps(config.to_dict(), allow_nan=False)  # an open top is null, not Infinity
    loaded = ModelConfig.from_dict(json.loads(text))
    assert loaded == config
    assert loaded.sampling.interval == (0.6, math.inf)
    # An infinite top given from Python is stored as the open top JSON can write.
    assert SamplingConfig(2.0, guidance_interval=(0.6, math.inf)) == config.sampling


def test_a_config_without_sampling_gets_the_project_defaults() -> None:
    data = ModelConfig().to_dict()
    del data["sampling"]
    assert ModelConfig.from_dict(data).sampling == SamplingConfig(5.0, 0.0, None)


@pytest.mark.parametrize(
    ("sampling", "named"),
    [
        ({"guidance_scale": math.nan}, "guidance_scale"),
        ({"guidance_rescale": 1.5}, "guidance_rescale"),
        ({"guidance_interval": [2.0, 1.0]}, "guidance_interval"),
        ({"guidance_interval": [-1.0, None]}, "guidance_interval"),
        ({"guidance_interval": [0.5]}, "SamplingConfig"),
        ({"guidance_scale": 10**400}, "SamplingConfig"),  # too large for a float
        ({"guidance_interval": [10**400, None]}, "SamplingConfig"),
        ({"steps": 20}, "unknown config key"),
    ],
)
def test_bad_sampling_defaults_are_a_usage_error(sampling: dict, named: str) -> None:
    data = {**ModelConfig().to_dict(), "sampling": sampling}
    with pytest.raises(UsageError, match=named):
        ModelConfig.from_dict(data)


def test_the_shapes_preset_samples_with_its_measured_defaults() -> None:
    # docs/MODEL.md measures these on the bundled weights; SD presets keep the usual ones.
    assert shapes_config().sampling != SamplingConfig()
    assert PRESETS["sd15"]().sampling == SamplingConfig()

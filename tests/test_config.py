import dataclasses

import pytest

from latentdiff.config import PRESETS, ModelConfig, UNetConfig
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


def test_shapes_differs_from_shapes_v1_only_in_autoencoder_width_and_objective():
    v1, v2 = PRESETS["shapes-v1"](), PRESETS["shapes"]()
    assert v2.autoencoder.block_channels == (32, 64, 128)
    assert dataclasses.replace(v2.autoencoder, block_channels=(16, 32, 64)) == v1.autoencoder
    assert (v2.diffusion.prediction_type, v2.diffusion.rescale_betas_zero_snr) == (
        "v_prediction",
        True,
    )
    assert (v2.unet, v2.text_encoder, v2.sample_size) == (v1.unet, v1.text_encoder, v1.sample_size)

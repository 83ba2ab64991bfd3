import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from latentdiff.checkpoints.diffusers_layout import (
    autoencoder_from_diffusers,
    autoencoder_to_diffusers,
    diffusers_unet_config,
    diffusers_vae_config,
    unet_from_diffusers,
    unet_to_diffusers,
)
from latentdiff.config import PRESETS
from latentdiff.errors import UsageError
from latentdiff.models.autoencoder import Autoencoder
from latentdiff.models.unet import UNet

TINY = PRESETS["tiny"]()


def shapes(state_dict):
    return {key: tuple(value.shape) for key, value in state_dict.items()}


@pytest.mark.parametrize("preset", ["sd15", "sd21", "shapes-v1"])
def test_unet_keys_and_shapes_equal_diffusers(preset):
    config = PRESETS[preset]().unet
    with torch.device("meta"):
        ours = UNet(config).state_dict()
        reference = UNet2DConditionModel(**diffusers_unet_config(config)).state_dict()
    assert shapes(unet_to_diffusers(ours, config)) == shapes(reference)


@pytest.mark.parametrize("preset", ["sd15", "shapes"])
def test_autoencoder_keys_and_shapes_equal_diffusers(preset):
    config = PRESETS[preset]().autoencoder
    with torch.device("meta"):
        ours = Autoencoder(config).state_dict()
        reference = AutoencoderKL(**diffusers_vae_config(config)).state_dict()
    assert shapes(autoencoder_to_diffusers(ours, config)) == shapes(reference)


def test_a_unet_with_a_token_layout_bias_has_no_diffusers_counterpart():
    assert PRESETS["shapes"]().unet.token_layout_size is not None
    with pytest.raises(UsageError, match="token layout bias"):
        diffusers_unet_config(PRESETS["shapes"]().unet)


def test_round_trips_give_back_the_same_tensors():
    unet, vae = UNet(TINY.unet).state_dict(), Autoencoder(TINY.autoencoder).state_dict()
    unet_back = unet_from_diffusers(unet_to_diffusers(unet, TINY.unet), TINY.unet)
    vae_back = autoencoder_from_diffusers(
        autoencoder_to_diffusers(vae, TINY.autoencoder), TINY.autoencoder
    )
    for original, back in ((unet, unet_back), (vae, vae_back)):
        assert list(back) == list(original)
        assert all(back[key] is original[key] for key in original)


def test_legacy_vae_attention_names_are_read():
    current = autoencoder_to_diffusers(Autoencoder(TINY.autoencoder).state_dict(), TINY.autoencoder)
    legacy_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for key, value in current.items():
        for new, old in legacy_names.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        legacy[key] = value
    assert any(".proj_attn." in key for key in legacy)
    assert shapes(autoencoder_from_diffusers(legacy, TINY.autoencoder)) == shapes(
        autoencoder_from_diffusers(current, TINY.autoencoder)
    )


def test_mismatched_weights_are_rejected_with_the_key():
    weights = unet_to_diffusers(UNet(TINY.unet).state_dict(), TINY.unet)
    extra = {**weights, "conv_in.scale": torch.zeros(1)}
    with pytest.raises(UsageError, match=r"unexpected key conv_in.scale \(1 unexpected\)"):
        unet_from_diffusers(extra, TINY.unet)
    missing = {k: v for k, v in weights.items() if k != "conv_out.bias"}
    with pytest.raises(UsageError, match=r"missing key conv_out.bias \(1 missing\)"):
        unet_from_diffusers(missing, TINY.unet)
    wrong = {**weights, "conv_out.bias": torch.zeros(5)}
    with pytest.raises(UsageError, match=r"conv_out.bias has shape \(5,\)"):
        unet_from_diffusers(wrong, TINY.unet)


def test_diffusers_configs_of_sd_presets_are_the_published_ones():
    sd15, sd21 = (
        diffusers_unet_config(PRESETS["sd15"]().unet),
        diffusers_unet_config(PRESETS["sd21"]().unet),
    )
    assert sd15["attention_head_dim"] == 8 and sd15["cross_attention_dim"] == 768
    assert sd15["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert sd15["up_block_types"] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert not sd15["use_linear_projection"] and sd15["flip_sin_to_cos"] and sd15["freq_shift"] == 0
    assert sd21["attention_head_dim"] == [5, 10, 20, 20] and sd21["cross_attention_dim"] == 1024
    assert sd21["use_linear_projection"]
    vae = diffusers_vae_config(PRESETS["sd15"]().autoencoder)
    assert vae["block_out_channels"] == [128, 256, 512, 512] and vae["scaling_factor"] == 0.18215

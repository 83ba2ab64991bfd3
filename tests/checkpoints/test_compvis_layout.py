import dataclasses

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel

from latentdiff.checkpoints.bundle import random_weights
from latentdiff.checkpoints.compvis_layout import (
    CLIP_PREFIX,
    OPENCLIP_PREFIX,
    compvis_shapes,
    model_from_compvis,
    model_to_compvis,
    text_encoder_from_compvis,
    text_encoder_to_compvis,
    text_layout,
    unet_from_compvis,
    unet_to_compvis,
    written_config,
    written_text_config,
)
from latentdiff.checkpoints.diffusers_layout import (
    autoencoder_to_diffusers,
    diffusers_unet_config,
    diffusers_vae_config,
    unet_to_diffusers,
)
from latentdiff.checkpoints.transformers_layout import (
    text_encoder_to_transformers,
    transformers_clip_text_config,
)
from latentdiff.config import PRESETS, ModelConfig, tiny_config
from latentdiff.errors import UsageError
from latentdiff.models.autoencoder import Autoencoder
from latentdiff.models.text_encoder import TextEncoder
from latentdiff.models.unet import UNet

replace = dataclasses.replace


def clip_tiny() -> ModelConfig:
    """SD 1.x-shaped: three levels, attention on the first two, 2 ResBlocks per level."""
    base = tiny_config()
    return replace(
        base,
        unet=replace(
            base.unet,
            block_channels=(16, 32, 32),
            layers_per_block=2,
            attention_levels=(True, True, False),
        ),
        text_encoder=replace(base.text_encoder, layers=2),
    )


def openclip_tiny() -> ModelConfig:
    """SD 2.x-shaped: linear projections, two transformer blocks, OpenCLIP text (penultimate)."""
    base = clip_tiny()
    return replace(
        base,
        unet=replace(base.unet, use_linear_projection=True, transformer_depth=2),
        text_encoder=replace(base.text_encoder, activation="gelu", output_layer="penultimate"),
    )


def meta_states(config: ModelConfig) -> dict[str, dict[str, torch.Tensor]]:
    with torch.device("meta"):
        return {
            "autoencoder": Autoencoder(config.autoencoder).state_dict(),
            "unet": UNet(config.unet).state_dict(),
            "text_encoder": TextEncoder(config.text_encoder).state_dict(),
        }


def diffusers_reads(tensors: dict, config: ModelConfig, text_model: CLIPTextModel) -> tuple:
    """What diffusers' own single-file conversion makes of CompVis-layout tensors."""
    unet_config = {**diffusers_unet_config(config.unet), "num_class_embeds": None}
    unet = convert_ldm_unet_checkpoint(dict(tensors), unet_config)
    vae = convert_ldm_vae_checkpoint(dict(tensors), diffusers_vae_config(config.autoencoder))
    if text_layout(config.text_encoder) == "clip":
        text = convert_ldm_clip_checkpoint(dict(tensors))
    else:
        text = convert_open_clip_checkpoint(text_model, dict(tensors), prefix=OPENCLIP_PREFIX)
    # transformers 5.x's CLIPTextModel has no `text_model.` level
    return unet, vae, {k.removeprefix("text_model."): v for k, v in text.items()}


def root(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor._base is None else tensor._base


@pytest.mark.parametrize("preset", ["sd15", "sd21"])
def test_full_size_files_are_what_diffusers_reads(preset):
    """Every tensor of a written SD 1.5 / 2.1 file lands, through diffusers' own converter,
    on the diffusers parameter that our diffusers layout maps it to (meta tensors: no RAM)."""
    config = PRESETS[preset]()
    ours = meta_states(config)
    # diffusers folders hold SD 2's text encoder without its unused last layer
    text_config = replace(
        config.text_encoder, layers=23 if preset == "sd21" else 12, output_layer="last"
    )
    with torch.device("meta"):
        reference_unet = UNet2DConditionModel(**diffusers_unet_config(config.unet)).state_dict()
        reference_vae = AutoencoderKL(**diffusers_vae_config(config.autoencoder)).state_dict()
        text_model = CLIPTextModel(CLIPTextConfig(**transformers_clip_text_config(text_config)))
    unet, vae, text = diffusers_reads(model_to_compvis(ours, config), config, text_model)

    expected_unet = unet_to_diffusers(ours["unet"], config.unet)
    assert set(unet) == set(reference_unet) == set(expected_unet)
    assert all(unet[key] is expected_unet[key] for key in unet)  # renamed, never copied
    expected_vae = autoencoder_to_diffusers(ours["autoencoder"], config.autoencoder)
    assert set(vae) == set(reference_vae) == set(expected_vae)
    assert all(root(vae[key]) is expected_vae[key] for key in vae)
    assert {k: v.shape for k, v in vae.items()} == {k: v.shape for k, v in reference_vae.items()}
    assert {k: v.shape for k, v in text.items()} == {
        k: v.shape for k, v in text_model.state_dict().items()
    }


@pytest.mark.parametrize("make_config", [clip_tiny, openclip_tiny])
def test_tiny_values_are_what_diffusers_reads(make_config):
    config = make_config()
    states = random_weights(config)
    with torch.device("meta"):
        text_model = CLIPTextModel(
            CLIPTextConfig(**transformers_clip_text_config(config.text_encoder))
        )
    unet, vae, text = diffusers_reads(model_to_compvis(states, config), config, text_model)
    expected = {
        **unet_to_diffusers(states["unet"], config.unet),
        **autoencoder_to_diffusers(states["autoencoder"], config.autoencoder),
        **text_encoder_to_transformers(states["text_encoder"], prefix=""),
    }
    got = {**unet, **vae, **text}
    assert set(got) == set(expected)
    assert all(torch.equal(got[key], expected[key]) for key in expected)


@pytest.mark.parametrize("make_config", [clip_tiny, openclip_tiny])
def test_round_trip_gives_back_the_same_tensors(make_config):
    config = make_config()
    states = random_weights(config, seed=1)
    back = model_from_compvis(model_to_compvis(states, config), config)
    assert config == written_config(config)
    for name, state in states.items():
        assert list(back[name]) == list(state)
        assert all(torch.equal(back[name][key], state[key]) for key in state)
    # the U-Net is only renamed: the very same tensor objects come back
    assert all(back["unet"][key] is states["unet"][key] for key in states["unet"])


def test_known_key_names_and_shapes_of_sd15_and_sd21():
    """Spot checks against the published v1-5 / v2-1 files' keys."""
    sd15, sd21 = compvis_shapes(PRESETS["sd15"]()), compvis_shapes(PRESETS["sd21"]())
    unet = "model.diffusion_model."
    assert sd15[unet + "input_blocks.3.0.op.weight"] == (320, 320, 3, 3)
    assert sd15[unet + "input_blocks.4.0.skip_connection.weight"] == (640, 320, 1, 1)
    assert sd15[unet + "input_blocks.1.1.proj_in.weight"] == (320, 320, 1, 1)
    assert sd21[unet + "input_blocks.1.1.proj_in.weight"] == (320, 320)
    assert sd15[unet + "output_blocks.2.1.conv.weight"] == (1280, 1280, 3, 3)  # no attention
    assert sd15[unet + "output_blocks.5.2.conv.weight"] == (1280, 1280, 3, 3)
    assert sd15[unet + "output_blocks.8.2.conv.weight"] == (640, 640, 3, 3)
    assert sd15[unet + "output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight"] == (
        2560,
        320,
    )
    assert sd15[unet + "middle_block.1.transformer_blocks.0.attn2.to_k.weight"] == (1280, 768)
    assert sd21[unet + "middle_block.1.transformer_blocks.0.attn2.to_k.weight"] == (1280, 1024)
    assert sd15[unet + "out.2.weight"] == (4, 320, 3, 3)
    vae = "first_stage_model."
    assert sd15[vae + "decoder.up.0.block.0.nin_shortcut.weight"] == (128, 256, 1, 1)
    assert sd15[vae + "decoder.up.3.upsample.conv.weight"] == (512, 512, 3, 3)
    assert vae + "decoder.up.0.upsample.conv.weight" not in sd15
    assert sd15[vae + "encoder.down.0.downsample.conv.weight"] == (128, 128, 3, 3)
    assert sd15[vae + "encoder.mid.attn_1.proj_out.weight"] == (512, 512, 1, 1)
    assert sd15[vae + "quant_conv.weight"] == (8, 8, 1, 1)
    clip = CLIP_PREFIX + "text_model."
    assert sd15[clip + "encoder.layers.11.self_attn.q_proj.weight"] == (768, 768)
    assert sd15[clip + "embeddings.position_embedding.weight"] == (77, 768)
    assert sd21[OPENCLIP_PREFIX + "transformer.resblocks.23.attn.in_proj_weight"] == (3072, 1024)
    assert sd21[OPENCLIP_PREFIX + "positional_embedding"] == (77, 1024)
    assert sd21[OPENCLIP_PREFIX + "ln_final.weight"] == (1024,)
    assert len(sd15) == 686 + 248 + 196  # diffusers' U-Net, VAE and CLIP-L key counts


def test_autoencoder_attention_is_written_as_1x1_convolutions_and_read_back():
    config = clip_tiny()
    states = random_weights(config)
    tensors = model_to_compvis(states, config)
    written = tensors["first_stage_model.decoder.mid.attn_1.v.weight"]
    ours = states["autoencoder"]["decoder.mid.attn.attention.to_v.weight"]
    assert written.shape == (*ours.shape, 1, 1) and torch.equal(written[:, :, 0, 0], ours)
    back = model_from_compvis(tensors, config)["autoencoder"][
        "decoder.mid.attn.attention.to_v.weight"
    ]
    assert back.shape == ours.shape and torch.equal(back, ours)


def test_openclip_text_encoder_with_last_layer_output_is_padded_with_an_identity_block():
    """A diffusers SD 2 text encoder (23 layers, last output) is written as the standard 24
    layers taken at the penultimate one; the extra block is all zeros and changes nothing."""
    config = replace(openclip_tiny().text_encoder, layers=2, output_layer="last")
    written = written_text_config(config)
    assert (written.layers, written.output_layer) == (3, "penultimate")
    torch.manual_seed(0)
    original = TextEncoder(config).eval()
    tensors = text_encoder_to_compvis(original.state_dict(), config)
    pad = OPENCLIP_PREFIX + "transformer.resblocks.2."
    padding = {key: tensor for key, tensor in tensors.items() if key.startswith(pad)}
    assert len(padding) == 12 and all(not tensor.any() for tensor in padding.values())
    reread = TextEncoder(written).eval()
    reread.load_state_dict(text_encoder_from_compvis(tensors, written))
    ids = torch.randint(0, config.vocab_size, (2, config.context_length))
    with torch.no_grad():
        assert torch.equal(reread(ids), original(ids))
        assert torch.equal(reread.pooled(ids), original.pooled(ids))


def test_penultimate_openclip_and_clip_text_encoders_are_written_as_they_are():
    assert written_text_config(openclip_tiny().text_encoder) == openclip_tiny().text_encoder
    clip_penultimate = replace(clip_tiny().text_encoder, output_layer="penultimate")
    assert written_text_config(clip_penultimate) == clip_penultimate
    assert text_layout(clip_tiny().text_encoder) == "clip"
    assert text_layout(openclip_tiny().text_encoder) == "openclip"


def test_clip_keys_without_text_model_are_read():
    config = clip_tiny()
    state = random_weights(config)["text_encoder"]
    tensors = text_encoder_to_compvis(state, config.text_encoder)
    short = {key.replace("text_model.", ""): tensor for key, tensor in tensors.items()}
    assert not any("text_model" in key for key in short)
    back = text_encoder_from_compvis(short, config.text_encoder)
    assert all(torch.equal(back[key], state[key]) for key in state)


def test_bad_keys_and_shapes_are_named():
    config = clip_tiny()
    tensors = unet_to_compvis(random_weights(config)["unet"], config.unet)
    extra = {**tensors, "model.diffusion_model.out.9.weight": torch.zeros(1)}
    with pytest.raises(UsageError, match=r"unexpected key model.diffusion_model.out.9.weight \(1"):
        unet_from_compvis(extra, config.unet)
    missing = {k: v for k, v in tensors.items() if k != "model.diffusion_model.out.2.bias"}
    with pytest.raises(UsageError, match=r"missing key model.diffusion_model.out.2.bias \(1 m"):
        unet_from_compvis(missing, config.unet)
    wrong = {**tensors, "model.diffusion_model.out.2.bias": torch.zeros(5)}
    with pytest.raises(UsageError, match=r"out.2.bias has shape \(5,\), expected \(4,\)"):
        unet_from_compvis(wrong, config.unet)
    states = random_weights(config)
    with pytest.raises(UsageError, match="need weights for exactly"):
        model_to_compvis({"unet": states["unet"]}, config)
    bad_text = {**states["text_encoder"], "blocks.0.ln_1.weight": torch.zeros(3)}
    with pytest.raises(UsageError, match=r"blocks.0.ln_1.weight has shape \(3,\)"):
        text_encoder_to_compvis(bad_text, config.text_encoder)

import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    PNDMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from latentdiff.checkpoints import diffusers_folder
from latentdiff.checkpoints.bundle import random_weights
from latentdiff.checkpoints.diffusers_configs import (
    autoencoder_config_from_diffusers,
    text_encoder_config_from_transformers,
    unet_config_from_diffusers,
)
from latentdiff.checkpoints.diffusers_folder import (
    DiffusersModel,
    diffusers_scheduler_config,
    drop_unused_text_layer,
    read_diffusers_folder,
    special_token_ids,
    write_diffusers_folder,
)
from latentdiff.checkpoints.diffusers_layout import (
    autoencoder_from_diffusers,
    autoencoder_to_diffusers,
    diffusers_unet_config,
    unet_from_diffusers,
    unet_to_diffusers,
)
from latentdiff.checkpoints.transformers_layout import (
    text_encoder_from_transformers,
    text_encoder_to_transformers,
)
from latentdiff.config import PRESETS, DiffusionConfig, ModelConfig, tiny_config
from latentdiff.diffusion.schedules import SchedulerSettings, get_timesteps
from latentdiff.errors import UsageError
from latentdiff.models.text_encoder import TextEncoder

EOS = "<|endoftext|>"
BOS_ID, EOS_ID = 512, 513  # in conftest's byte-level vocabulary
PROMPTS = ["a red cube", "two blue spheres left of a cube"]


# ── Tiny SD-like configs, tokenizers and weights ─────────────────────────────────────────────


def sd1_config() -> ModelConfig:
    """SD 1.x in miniature: heads by count, 1×1-conv projections, quick_gelu, pad = eos."""
    base = tiny_config()
    return replace(
        base, text_encoder=replace(base.text_encoder, vocab_size=520, pad_token_id=EOS_ID)
    )


def sd2_config() -> ModelConfig:
    """SD 2.x in miniature: head width 8 (2 and 4 heads), linear projections, penultimate gelu
    text layer, pad "!" = 0, v-prediction, two transformer blocks per level."""
    base = tiny_config()
    unet = replace(
        base.unet,
        attention_levels=(True, True),
        num_heads=None,
        head_dim=8,
        context_dim=24,
        use_linear_projection=True,
        transformer_depth=2,
    )
    text = replace(
        base.text_encoder,
        vocab_size=520,
        width=24,
        layers=3,
        heads=2,
        activation="gelu",
        output_layer="penultimate",
        pad_token_id=0,
    )
    diffusion = DiffusionConfig(prediction_type="v_prediction")
    return replace(base, unet=unet, text_encoder=text, diffusion=diffusion, sample_size=32)


def inpaint_config() -> ModelConfig:
    config = sd1_config()
    return replace(config, unet=replace(config.unet, in_channels=9))


CONFIGS = {"sd1": sd1_config, "sd2": sd2_config, "inpaint": inpaint_config}


@pytest.fixture(scope="module")
def hub_tokenizers(tmp_path_factory, sd_tokenizer_folder) -> dict[str, Path]:
    """Pad token → a tokenizer folder as SD's hub folders hold it (vocab.json, merges.txt,
    special tokens as AddedToken objects): conftest's byte-level CLIP tokenizer."""
    root = tmp_path_factory.mktemp("hub_tokenizers")
    return {
        pad: sd_tokenizer_folder(root / name, pad) for name, pad in [("eos", EOS), ("bang", "!")]
    }


@pytest.fixture(scope="module")
def saved_tokenizers(hub_tokenizers, tmp_path_factory) -> dict[str, Path]:
    """Pad token → the same tokenizer as transformers 5 saves it (tokenizer.json +
    tokenizer_config.json, no vocab.json)."""
    root = tmp_path_factory.mktemp("saved_tokenizers")
    result = {}
    for name, (pad, hub) in zip(["eos", "bang"], hub_tokenizers.items(), strict=True):
        tokenizer = CLIPTokenizer(str(hub / "vocab.json"), str(hub / "merges.txt"), pad_token=pad)
        tokenizer.save_pretrained(root / name)
        result[pad] = root / name
    return result


def assert_states_equal(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name].keys() == expected[name].keys(), name
        for key, tensor in expected[name].items():
            assert actual[name][key].dtype == tensor.dtype, key
            assert torch.equal(actual[name][key], tensor), key


def assert_tensors_equal(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), key


def tokenizer_for(config: ModelConfig, saved_tokenizers: dict[str, Path]) -> Path:
    pad = EOS if config.text_encoder.pad_token_id == EOS_ID else "!"
    return saved_tokenizers[pad]


@pytest.fixture(scope="module")
def written(tmp_path_factory, hub_tokenizers, saved_tokenizers) -> dict:
    """For each config: (config, our states, a folder written by us, its source tokenizer);
    SD 2's tokenizer in the hub layout, the others as transformers saves them."""
    root = tmp_path_factory.mktemp("written")
    result = {}
    for name, make_config in CONFIGS.items():
        config = make_config()
        states = random_weights(config, noise=0.1)
        tokenizer = (
            hub_tokenizers["!"] if name == "sd2" else tokenizer_for(config, saved_tokenizers)
        )
        write_diffusers_folder(
            root / name, config, states, scheduler=None, tokenizer_dir=tokenizer, dtype=None
        )
        result[name] = (config, states, root / name, tokenizer)
    return result


# ── Writing: diffusers and transformers load what we write ────────────────────────────────


@pytest.mark.parametrize("name", list(CONFIGS))
def test_diffusers_and_transformers_load_our_folder_with_our_weights(written, name):
    config, states, folder, tokenizer_dir = written[name]
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    assert_tensors_equal(unet.state_dict(), unet_to_diffusers(states["unet"], config.unet))
    assert unet.config.sample_size * 2 == config.sample_size
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    assert_tensors_equal(
        vae.state_dict(), autoencoder_to_diffusers(states["autoencoder"], config.autoencoder)
    )
    text = CLIPTextModel.from_pretrained(folder / "text_encoder")
    text_config, text_state = drop_unused_text_layer(config.text_encoder, states["text_encoder"])
    assert_tensors_equal(text.state_dict(), text_encoder_to_transformers(text_state, prefix=""))
    assert text.config.num_hidden_layers == text_config.layers
    assert (text.config.bos_token_id, text.config.eos_token_id) == (BOS_ID, EOS_ID)
    assert text.config.pad_token_id == config.text_encoder.pad_token_id

    ours = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    original = CLIPTokenizer.from_pretrained(tokenizer_dir)
    assert ours(PROMPTS).input_ids == original(PROMPTS).input_ids
    assert ours.pad_token_id == config.text_encoder.pad_token_id


def test_penultimate_text_encoder_is_written_without_its_last_layer(written):
    """SD 2: the folder's "last" layer output is the original's penultimate one."""
    config, states, folder, _ = written["sd2"]
    assert config.text_encoder.layers == 3
    ours = TextEncoder(config.text_encoder).eval()
    ours.load_state_dict(states["text_encoder"])
    theirs = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    assert theirs.config.num_hidden_layers == 2
    ids = torch.tensor([[BOS_ID, 70, 80, EOS_ID] + [0] * 12, [BOS_ID, 5, EOS_ID] + [0] * 13])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).last_hidden_state, rtol=0, atol=1e-6)
    all_layers = TextEncoder(replace(config.text_encoder, output_layer="last")).eval()
    all_layers.load_state_dict(states["text_encoder"])
    with torch.no_grad():
        assert (all_layers(ids) - ours(ids)).abs().max() > 1e-3  # the dropped layer mattered


def test_scheduler_config_is_sd_explicit_and_gives_diffusers_timesteps(written):
    config, _, folder, _ = written["sd2"]
    data = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert data["_class_name"] == "PNDMScheduler"
    assert data["prediction_type"] == "v_prediction"
    # SD's own config: no timestep_spacing (each scheduler class keeps its default), offset 1.
    assert "timestep_spacing" not in data
    assert (data["steps_offset"], data["set_alpha_to_one"]) == (1, False)
    assert (data["clip_sample"], data["skip_prk_steps"], data["use_karras_sigmas"]) == (
        False,
        True,
        False,
    )
    ddim = DDIMScheduler.from_pretrained(folder / "scheduler")
    assert ddim.config.prediction_type == "v_prediction"
    assert ddim.config.beta_schedule == "scaled_linear"
    ddim.set_timesteps(10)
    expected = get_timesteps(10, 1000, "leading", steps_offset=1)
    assert ddim.timesteps.tolist() == expected.long().tolist()


def test_unset_spacing_stays_unset_so_each_scheduler_keeps_its_default():
    """SD's own configs have no timestep_spacing; Euler then uses "linspace", DDIM "leading"."""
    settings = SchedulerSettings(spacing=None, steps_offset=1, set_alpha_to_one=False)
    data = diffusers_scheduler_config(DiffusionConfig(), settings)
    assert "timestep_spacing" not in data
    assert SchedulerSettings.from_diffusers_config(data) == settings
    cosine = diffusers_scheduler_config(
        DiffusionConfig(beta_schedule="cosine"), SchedulerSettings(karras=True)
    )
    assert cosine["beta_schedule"] == "squaredcos_cap_v2"
    assert cosine["use_karras_sigmas"] is True


@pytest.mark.parametrize(
    ("name", "pipeline_class"),
    [("sd1", StableDiffusionPipeline), ("inpaint", StableDiffusionInpaintPipeline)],
)
def test_diffusers_pipeline_loads_our_folder(written, name, pipeline_class, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, _, folder, _ = written[name]
    pipeline = DiffusionPipeline.from_pretrained(folder)
    assert type(pipeline) is pipeline_class
    assert type(pipeline.scheduler) is PNDMScheduler
    assert pipeline.safety_checker is None
    assert pipeline.unet.config.in_channels == (9 if name == "inpaint" else 4)


# ── Reading: the configs of the real SD folders map onto our presets ───────────────────────

DOWN = ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
UP = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
# unet/config.json of runwayml/stable-diffusion-v1-5 (written by diffusers 0.6: no
# use_linear_projection, no transformer_layers_per_block) and of stabilityai/stable-diffusion-2-1.
SD15_UNET = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": DOWN,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": UP,
}
SD21_UNET = {
    **SD15_UNET,
    "_diffusers_version": "0.10.0.dev0",
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "dual_cross_attention": False,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "sample_size": 96,
    "upcast_attention": True,
    "use_linear_projection": True,
}
SD_VAE = {  # no scaling_factor: diffusers' default 0.18215
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
CLIP_L_TEXT = {  # transformers 4.22's config, with its leftover bos/eos/pad defaults
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "torch_dtype": "float32",
    "transformers_version": "4.22.0.dev0",
    "vocab_size": 49408,
}
OPEN_CLIP_H_TEXT = {
    **CLIP_L_TEXT,
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "projection_dim": 512,
}


def test_real_sd_configs_map_onto_the_presets():
    sd15, sd21 = PRESETS["sd15"](), PRESETS["sd21"]()
    assert unet_config_from_diffusers(SD15_UNET) == sd15.unet
    assert unet_config_from_diffusers(SD21_UNET) == sd21.unet
    assert autoencoder_config_from_diffusers(SD_VAE) == sd15.autoencoder == sd21.autoencoder
    assert text_encoder_config_from_transformers(CLIP_L_TEXT, pad_token_id=49407) == (
        sd15.text_encoder
    )
    sd2_text, _ = drop_unused_text_layer(sd21.text_encoder, {})
    assert text_encoder_config_from_transformers(OPEN_CLIP_H_TEXT, pad_token_id=0) == sd2_text
    assert text_encoder_config_from_transformers(CLIP_L_TEXT).pad_token_id == 1
    for preset in (sd15, sd21):  # and back: what our writer puts in config.json
        assert unet_config_from_diffusers(diffusers_unet_config(preset.unet)) == preset.unet


# ── Reading: folders that diffusers itself saved ────────────────────────────────────────────


def diffusers_pipeline(config: ModelConfig, tokenizer_dir: Path) -> StableDiffusionPipeline:
    """Random diffusers/transformers modules with the architecture of `config`, built from
    hand-written constructor arguments (not from latentdiff's config functions)."""
    sd2 = config.unet.head_dim is not None
    torch.manual_seed(3)
    unet = UNet2DConditionModel(
        sample_size=config.sample_size // 2,
        in_channels=config.unet.in_channels,
        out_channels=4,
        down_block_types=(
            ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
            if sd2
            else ("DownBlock2D", "CrossAttnDownBlock2D")
        ),
        up_block_types=(
            ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
            if sd2
            else ("CrossAttnUpBlock2D", "UpBlock2D")
        ),
        block_out_channels=(16, 32),
        layers_per_block=1,
        transformer_layers_per_block=2 if sd2 else 1,
        attention_head_dim=[2, 4] if sd2 else 2,
        cross_attention_dim=24 if sd2 else 16,
        use_linear_projection=sd2,
        norm_num_groups=4,
        upcast_attention=sd2,  # as SD 2.1's own config
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=config.sample_size,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=520,
            hidden_size=24 if sd2 else 16,
            intermediate_size=96 if sd2 else 64,
            num_hidden_layers=2 if sd2 else 1,
            num_attention_heads=2,
            max_position_embeddings=16,
            hidden_act="gelu" if sd2 else "quick_gelu",
        )
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
        prediction_type=config.diffusion.prediction_type,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def expected_states(pipeline: StableDiffusionPipeline, config: ModelConfig) -> dict:
    return {
        "unet": unet_from_diffusers(pipeline.unet.state_dict(), config.unet),
        "autoencoder": autoencoder_from_diffusers(pipeline.vae.state_dict(), config.autoencoder),
        "text_encoder": text_encoder_from_transformers(pipeline.text_encoder.state_dict()),
    }


def read_config(name: str) -> ModelConfig:
    """What reading a diffusers folder of CONFIGS[name] gives: SD 2 with 2 layers, "last"."""
    config = CONFIGS[name]()
    text, _ = drop_unused_text_layer(config.text_encoder, {})
    return replace(config, text_encoder=text)


@pytest.mark.parametrize("name", ["sd1", "sd2"])
def test_reads_a_folder_saved_by_diffusers(tmp_path, saved_tokenizers, name):
    config = read_config(name)
    pipeline = diffusers_pipeline(config, tokenizer_for(config, saved_tokenizers))
    pipeline.save_pretrained(tmp_path / "model")
    model = read_diffusers_folder(tmp_path / "model")
    assert isinstance(model, DiffusersModel)
    assert model.config == config
    assert_states_equal(model.states, expected_states(pipeline, config))
    assert model.scheduler == SchedulerSettings("leading", 1, False, False)
    assert model.tokenizer_dir == tmp_path / "model" / "tokenizer"
    assert model.dtype == torch.float32


def test_reads_the_fp16_variant(tmp_path, saved_tokenizers):
    config = read_config("sd1")
    pipeline = diffusers_pipeline(config, tokenizer_for(config, saved_tokenizers))
    pipeline.to(torch.float16).save_pretrained(tmp_path / "model", variant="fp16")
    assert (tmp_path / "model" / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    model = read_diffusers_folder(tmp_path / "model", variant="fp16")
    assert model.dtype == torch.float16
    assert_states_equal(model.states, expected_states(pipeline, config))
    with pytest.raises(UsageError, match=r"no weights in .*unet \(looked for"):
        read_diffusers_folder(tmp_path / "model")
    with pytest.raises(UsageError, match=r"no bf16 weights in .*unet"):
        read_diffusers_folder(tmp_path / "model", variant="bf16")


def test_reads_legacy_pickles_and_shards(tmp_path, saved_tokenizers):
    """.bin files written by torch.save of plain state dicts, and a sharded text encoder."""
    config = read_config("sd1")
    pipeline = diffusers_pipeline(config, tokenizer_for(config, saved_tokenizers))
    folder = tmp_path / "model"
    pipeline.save_pretrained(folder)
    for sub, name in [("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model")]:
        weights = folder / sub / f"{name}.safetensors"
        torch.save(load_file(weights), weights.with_suffix(".bin"))
        weights.unlink()
    text = folder / "text_encoder" / "model.safetensors"
    state = load_file(text)
    keys = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": keys[:7],
        "model-00002-of-00002.safetensors": keys[7:],
    }
    for shard, shard_keys in shards.items():
        save_file({k: state[k] for k in shard_keys}, folder / "text_encoder" / shard)
    weight_map = {k: shard for shard, shard_keys in shards.items() for k in shard_keys}
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "text_encoder" / "model.safetensors.index.json").write_text(json.dumps(index))
    text.unlink()
    model = read_diffusers_folder(folder)
    assert_states_equal(model.states, expected_states(pipeline, config))


# ── Round trips ─────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("name", list(CONFIGS))
def test_write_read_write_read_is_bit_exact(written, tmp_path, name):
    config, states, folder, _ = written[name]
    first = read_diffusers_folder(folder)
    text_config, text_state = drop_unused_text_layer(config.text_encoder, states["text_encoder"])
    assert first.config == replace(config, text_encoder=text_config)
    assert_states_equal(first.states, {**states, "text_encoder": text_state})
    assert first.scheduler == SchedulerSettings()

    write_diffusers_folder(
        tmp_path / "again",
        first.config,
        first.states,
        scheduler=first.scheduler,
        tokenizer_dir=first.tokenizer_dir,
    )
    second = read_diffusers_folder(tmp_path / "again")
    assert second.config == first.config
    assert second.scheduler == first.scheduler
    assert_states_equal(second.states, first.states)
    for file in ("vocab.json", "merges.txt", "tokenizer.json"):
        if (first.tokenizer_dir / file).exists():
            assert (second.tokenizer_dir / file).read_bytes() == (
                first.tokenizer_dir / file
            ).read_bytes()


def test_round_trip_keeps_scheduler_settings_and_casts_to_dtype(written, tmp_path):
    config, states, _, tokenizer_dir = written["sd1"]
    scheduler = SchedulerSettings(spacing=None, steps_offset=1, karras=True, set_alpha_to_one=False)
    write_diffusers_folder(
        tmp_path / "half",
        config,
        states,
        scheduler=scheduler,
        tokenizer_dir=tokenizer_dir,
        dtype=torch.float16,
    )
    model = read_diffusers_folder(tmp_path / "half")
    assert model.scheduler == scheduler
    assert model.dtype == torch.float16
    half = {name: {k: v.half() for k, v in state.items()} for name, state in states.items()}
    assert_states_equal(model.states, half)


def test_special_token_ids_from_both_tokenizer_layouts(hub_tokenizers, saved_tokenizers):
    expected = {"bos_token": BOS_ID, "eos_token": EOS_ID}
    assert special_token_ids(hub_tokenizers["!"]) == {**expected, "pad_token": 0}
    saved = saved_tokenizers[EOS]
    assert special_token_ids(saved) == {**expected, "pad_token": EOS_ID}
    assert not (saved / "vocab.json").exists()  # ids from tokenizer.json


def test_pad_id_falls_back_to_the_text_config_without_a_tokenizer_pad(
    written, hub_tokenizers, tmp_path
):
    folder = Path(shutil.copytree(written["sd1"][2], tmp_path / "model"))
    shutil.rmtree(folder / "tokenizer")
    (folder / "tokenizer").mkdir()
    for name in ("vocab.json", "merges.txt"):  # no special tokens named
        shutil.copy(hub_tokenizers[EOS] / name, folder / "tokenizer" / name)
    edit_json(folder / "text_encoder" / "config.json", pad_token_id=7)
    assert read_diffusers_folder(folder).config.text_encoder.pad_token_id == 7


# ── Bad input: one UsageError naming the file and the key ───────────────────────────────────


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, **changes}))


@pytest.fixture
def sd1_copy(written, tmp_path) -> Path:
    return Path(shutil.copytree(written["sd1"][2], tmp_path / "model"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"class_embed_type": "timestep"}, "unsupported class_embed_type = 'timestep'"),
        ({"addition_embed_type": "text_time"}, "unsupported addition_embed_type = 'text_time'"),
        ({"time_cond_proj_dim": 256}, "unsupported time_cond_proj_dim = 256"),
        ({"freq_shift": 1}, "unsupported freq_shift = 1"),
        ({"center_input_sample": True}, "unsupported center_input_sample = True"),
        ({"num_attention_heads": 2}, "unsupported num_attention_heads = 2"),
        ({"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}, "unsupported mid_block_type"),
        ({"resnet_time_scale_shift": "scale_shift"}, "unsupported resnet_time_scale_shift"),
        ({"some_new_feature": 3}, "unsupported key some_new_feature = 3"),
        ({"down_block_types": ["AttnDownBlock2D", "DownBlock2D"]}, r"down_block_types = \["),
        (
            {"up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]},
            r"up_block_types = \[.*\] do not mirror",
        ),
        ({"attention_head_dim": [2, 3]}, r"attention_head_dim = \[2, 3\]"),
        ({"block_out_channels": "16"}, "block_out_channels = '16': expected a list"),
        ({"_class_name": "UNet2DModel"}, "_class_name = 'UNet2DModel'"),
        ({"norm_num_groups": 5}, "UNetConfig: channels 16 not divisible by norm_groups"),
    ],
)
def test_unet_configs_we_cannot_run_are_refused(sd1_copy, changes, message):
    path = sd1_copy / "unet" / "config.json"
    edit_json(path, **changes)
    with pytest.raises(UsageError, match=rf"^{re.escape(str(path))}: {message}"):
        read_diffusers_folder(sd1_copy)


def test_harmless_unet_keys_are_accepted(sd1_copy):
    edit_json(
        sd1_copy / "unet" / "config.json",
        upcast_attention=True,
        dropout=0.1,
        some_new_feature=None,
        other_new_flag=False,
        layers_per_block=[1, 1],
        only_cross_attention=[False, False],
    )
    assert read_diffusers_folder(sd1_copy).config == sd1_config()


@pytest.mark.parametrize(
    ("component", "changes", "message"),
    [
        ("vae", {"shift_factor": 0.1}, "unsupported shift_factor = 0.1"),
        ("vae", {"use_quant_conv": False}, "unsupported use_quant_conv = False"),
        ("vae", {"out_channels": 1}, "out_channels = 1 differs from in_channels = 3"),
        ("vae", {"up_block_types": ["UpDecoderBlock2D"]}, "up_block_types"),
        ("text_encoder", {"intermediate_size": 100}, "intermediate_size = 100"),
        ("text_encoder", {"hidden_act": "relu"}, "hidden_act = 'relu'"),
        ("text_encoder", {"model_type": "clip_vision_model"}, "model_type = 'clip_vision_model'"),
        ("text_encoder", {"layer_norm_eps": 1e-6}, "layer_norm_eps = 1e-06"),
    ],
)
def test_vae_and_text_configs_we_cannot_run_are_refused(sd1_copy, component, changes, message):
    path = sd1_copy / component / "config.json"
    edit_json(path, **changes)
    with pytest.raises(UsageError, match=rf"^{re.escape(str(path))}: {message}"):
        read_diffusers_folder(sd1_copy)


def test_latents_mean_and_std_are_read(sd1_copy):
    edit_json(sd1_copy / "vae" / "config.json", latents_mean=[0, 1, 2, 3], latents_std=[1, 2, 3, 4])
    autoencoder = read_diffusers_folder(sd1_copy).config.autoencoder
    assert autoencoder.latents_mean == (0.0, 1.0, 2.0, 3.0)
    assert autoencoder.latents_std == (1.0, 2.0, 3.0, 4.0)


def test_components_that_do_not_fit_together(sd1_copy):
    edit_json(sd1_copy / "unet" / "config.json", cross_attention_dim=32)
    with pytest.raises(
        UsageError,
        match=r"model: the components' configs do not fit together: "
        r"unet.context_dim must equal text_encoder.width",
    ):
        read_diffusers_folder(sd1_copy)


def test_bad_scheduler_config_names_the_file(sd1_copy):
    path = sd1_copy / "scheduler" / "scheduler_config.json"
    edit_json(path, beta_schedule="sigmoid")
    with pytest.raises(UsageError, match=rf"^{path}: .*unsupported beta_schedule 'sigmoid'"):
        read_diffusers_folder(sd1_copy)


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("unet/config.json", r"unet/config.json is missing"),
        ("scheduler", r"scheduler/scheduler_config.json is missing"),
        ("tokenizer", r"no CLIP tokenizer at .*tokenizer: need vocab.json and merges.txt"),
        ("vae/diffusion_pytorch_model.safetensors", r"no weights in .*vae \(looked for"),
    ],
)
def test_missing_parts_are_named(sd1_copy, remove, message):
    path = sd1_copy / remove
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(UsageError, match=message):
        read_diffusers_folder(sd1_copy)


def test_missing_folder_and_bad_json(sd1_copy, tmp_path):
    with pytest.raises(UsageError, match="no diffusers folder at"):
        read_diffusers_folder(tmp_path / "nowhere")
    (sd1_copy / "vae" / "config.json").write_text("{not json")
    with pytest.raises(UsageError, match=r"cannot read .*vae/config.json: Expecting"):
        read_diffusers_folder(sd1_copy)
    (sd1_copy / "model_index.json").write_text("[]")
    with pytest.raises(UsageError, match=r"model_index.json: expected a JSON object"):
        read_diffusers_folder(sd1_copy)


def test_weights_that_do_not_fit_name_the_file_and_key(sd1_copy):
    text = sd1_copy / "text_encoder" / "model.safetensors"
    state = load_file(text)
    save_file({**state, "text_model.text_projection.weight": torch.zeros(16, 16)}, text)
    with pytest.raises(
        UsageError, match=rf"^{text}: not a CLIP text-model weight: text_projection"
    ):
        read_diffusers_folder(sd1_copy)
    save_file({k: v for k, v in state.items() if "final_layer_norm.bias" not in k}, text)
    with pytest.raises(
        UsageError, match=rf"^{text}: missing key final_layer_norm.bias \(1 missing\)$"
    ):
        read_diffusers_folder(sd1_copy)
    save_file({**state, "text_model.final_layer_norm.bias": torch.zeros(3)}, text)
    with pytest.raises(UsageError, match=rf"^{text}: .*final_layer_norm.bias has shape \(3,\)"):
        read_diffusers_folder(sd1_copy)

    unet = sd1_copy / "unet" / "diffusion_pytorch_model.safetensors"
    unet_state = load_file(unet)
    save_file({**unet_state, "conv_out.bias": torch.zeros(5)}, unet)
    with pytest.raises(UsageError, match=rf"^{unet}: .*conv_out.bias has shape \(5,\)"):
        read_diffusers_folder(sd1_copy)
    unet.write_bytes(unet.read_bytes()[:1000])
    with pytest.raises(UsageError, match=rf"cannot read weights {unet}"):
        read_diffusers_folder(sd1_copy)


class NotATensor:
    pass


def test_pickles_that_need_unsafe_loading_are_refused(sd1_copy):
    vae = sd1_copy / "vae" / "diffusion_pytorch_model.safetensors"
    pickled = vae.with_suffix(".bin")
    torch.save({**load_file(vae), "extra": NotATensor()}, pickled)
    vae.unlink()
    with pytest.raises(
        UsageError,
        match=r"this pickle needs unsafe unpickling \(it needs .*NotATensor\); refusing",
    ):
        read_diffusers_folder(sd1_copy)
    torch.save([torch.zeros(1)], pickled)
    with pytest.raises(UsageError, match=rf"{pickled}: holds a list, not a state dict"):
        read_diffusers_folder(sd1_copy)
    pickled.write_bytes(b"garbage")
    with pytest.raises(UsageError, match=r"not a PyTorch checkpoint \(Unsupported"):
        read_diffusers_folder(sd1_copy)
    torch.save(load_file(sd1_copy / "unet" / "diffusion_pytorch_model.safetensors"), pickled)
    pickled.write_bytes(pickled.read_bytes()[:2000])  # truncated
    with pytest.raises(UsageError, match=rf"{re.escape(str(pickled))}: cannot read checkpoint: "):
        read_diffusers_folder(sd1_copy)


def test_writer_refuses_a_non_empty_folder_and_accepts_an_empty_one(written, tmp_path):
    config, states, _, tokenizer_dir = written["sd1"]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="already exists and is not empty; refusing"):
        write_diffusers_folder(
            tmp_path / "full", config, states, scheduler=None, tokenizer_dir=tokenizer_dir
        )
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    write_diffusers_folder(
        tmp_path / "empty", config, states, scheduler=None, tokenizer_dir=tokenizer_dir
    )
    assert read_diffusers_folder(tmp_path / "empty").config == config


def test_writer_leaves_nothing_behind_on_bad_weights_or_a_failed_write(
    written, tmp_path, monkeypatch
):
    config, states, _, tokenizer_dir = written["sd1"]
    target = tmp_path / "out"
    bad = {**states, "unet": {k: v for k, v in states["unet"].items() if k != "conv_out.bias"}}
    with pytest.raises(UsageError, match=r"missing key conv_out.bias \(1 missing\)"):
        write_diffusers_folder(target, config, bad, scheduler=None, tokenizer_dir=tokenizer_dir)
    with pytest.raises(UsageError, match="no CLIP tokenizer at"):
        write_diffusers_folder(target, config, states, scheduler=None, tokenizer_dir=tmp_path)

    calls = []
    save_weights = diffusers_folder.save_weights

    def failing_save(path, *args):
        calls.append(path)
        if len(calls) == 2:  # the disk fills up after the first weights file
            raise OSError(28, "No space left on device")
        return save_weights(path, *args)

    monkeypatch.setattr(diffusers_folder, "save_weights", failing_save)
    with pytest.raises(UsageError, match=rf"cannot write {target}: .*No space left"):
        write_diffusers_folder(target, config, states, scheduler=None, tokenizer_dir=tokenizer_dir)
    assert len(calls) == 2
    assert os.listdir(tmp_path) == []  # neither the folder nor its temporary twin


def test_writer_without_tokenizer_uses_clip_ids(written, tmp_path):
    config, states, _, _ = written["sd1"]
    write_diffusers_folder(tmp_path / "m", config, states, scheduler=None, tokenizer_dir=None)
    text = json.loads((tmp_path / "m" / "text_encoder" / "config.json").read_text())
    assert (text["bos_token_id"], text["eos_token_id"]) == (49406, 49407)
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert "tokenizer" not in index
    with pytest.raises(UsageError, match="no CLIP tokenizer at"):
        read_diffusers_folder(tmp_path / "m")

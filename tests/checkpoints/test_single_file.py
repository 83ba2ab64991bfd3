import dataclasses
import json
from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from latentdiff.checkpoints import single_file
from latentdiff.checkpoints.bundle import random_weights
from latentdiff.checkpoints.compvis_layout import compvis_shapes, model_to_compvis
from latentdiff.checkpoints.diffusers_layout import (
    autoencoder_to_diffusers,
    diffusers_unet_config,
    diffusers_vae_config,
    unet_to_diffusers,
)
from latentdiff.checkpoints.single_file import (
    CONFIG_METADATA_KEY,
    detect_config,
    ema_key,
    read_single_file,
    write_single_file,
)
from latentdiff.checkpoints.transformers_layout import (
    text_encoder_to_transformers,
    transformers_clip_text_config,
)
from latentdiff.config import ModelConfig, UNetConfig, sd15_config, sd21_config, tiny_config
from latentdiff.errors import UsageError
from latentdiff.models.text_encoder import TextEncoder

replace = dataclasses.replace
VOCAB_SIZE = 514  # the byte-level test vocabulary: 256 bytes, 256 word-final bytes, bos, eos
DDPM_BUFFERS = (
    "betas alphas_cumprod alphas_cumprod_prev sqrt_alphas_cumprod sqrt_one_minus_alphas_cumprod "
    "log_one_minus_alphas_cumprod sqrt_recip_alphas_cumprod sqrt_recipm1_alphas_cumprod "
    "posterior_variance posterior_log_variance_clipped posterior_mean_coef1 posterior_mean_coef2"
).split()


# ── Tiny models shaped like SD 1.x and 2.x, sized so that detection recovers them exactly ──


def sd1_like(in_channels: int = 4) -> ModelConfig:
    """SD 1.5's preset shrunk: 8 heads, 1×1-conv projections, CLIP text with 64-wide heads."""
    base = sd15_config()
    return replace(
        base,
        autoencoder=replace(base.autoencoder, block_channels=(32, 64), layers_per_block=1),
        unet=replace(
            base.unet,
            in_channels=in_channels,
            block_channels=(32, 64, 64),
            attention_levels=(True, True, False),
            context_dim=64,
        ),
        text_encoder=replace(
            base.text_encoder, vocab_size=VOCAB_SIZE, context_length=8, width=64, layers=2, heads=1
        ),
    )


def sd2_like(in_channels: int = 4) -> ModelConfig:
    """SD 2.1's preset shrunk: 64-wide heads, linear projections, OpenCLIP text (penultimate);
    v-prediction at 768 px, or ε at 512 px for inpainting, as detection assumes."""
    base = sd21_config()
    config = replace(
        base,
        autoencoder=replace(base.autoencoder, block_channels=(32, 64), layers_per_block=1),
        unet=replace(
            base.unet,
            in_channels=in_channels,
            block_channels=(64, 128),
            layers_per_block=1,
            attention_levels=(True, True),
            transformer_depth=2,
            context_dim=128,
        ),
        text_encoder=replace(
            base.text_encoder, vocab_size=VOCAB_SIZE, context_length=8, width=128, layers=3, heads=2
        ),
    )
    if in_channels == 9:
        config = replace(
            config, diffusion=replace(config.diffusion, prediction_type="epsilon"), sample_size=512
        )
    return config


CONFIGS = {
    "sd1": sd1_like,
    "sd2": sd2_like,
    "sd1-inpainting": lambda: sd1_like(9),
    "sd2-inpainting": lambda: sd2_like(9),
}


def assert_states_equal(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for name in expected:
        assert set(got[name]) == set(expected[name])
        for key, tensor in expected[name].items():
            assert got[name][key].dtype == tensor.dtype, key
            assert torch.equal(got[name][key], tensor), key


def file_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as file:
        return {key: file.get_tensor(key) for key in file.keys()}


def foreign_file(path: Path, config: ModelConfig, states: dict, **extra: torch.Tensor) -> Path:
    """A CompVis-layout file as other tools write it: no latentdiff config in the metadata."""
    tensors = {**model_to_compvis(states, config), **extra}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


# ── Round trips and detection ─────────────────────────────────────────────────────────────


@pytest.mark.parametrize("name", [*CONFIGS, "tiny"])
def test_round_trip_is_bit_exact(tmp_path, name):
    config = tiny_config() if name == "tiny" else CONFIGS[name]()
    states = random_weights(config)
    path = tmp_path / "model.safetensors"
    write_single_file(path, config, states)
    got_config, got = read_single_file(path)
    assert got_config == config  # stored in the metadata, even where shapes cannot tell
    assert_states_equal(got, states)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_is_detected_from_keys_and_shapes(tmp_path, name):
    config = CONFIGS[name]()
    states = random_weights(config)
    path = foreign_file(tmp_path / "model.safetensors", config, states)
    got_config, got = read_single_file(path)
    assert got_config == config
    assert_states_equal(got, states)


def test_detection_follows_the_sd_presets():
    sd15, sd21 = sd15_config(), sd21_config()
    assert detect_config(compvis_shapes(sd15)) == sd15
    assert detect_config(compvis_shapes(sd21)) == sd21
    base = detect_config(compvis_shapes(sd21), prediction_type="epsilon")
    assert base == replace(
        sd21, diffusion=replace(sd21.diffusion, prediction_type="epsilon"), sample_size=512
    )
    inpainting = replace(sd15, unet=replace(sd15.unet, in_channels=9))
    assert detect_config(compvis_shapes(inpainting)) == inpainting
    assert detect_config(compvis_shapes(inpainting), inpainting=True) == inpainting


def test_overrides_replace_what_shapes_cannot_tell():
    shapes = compvis_shapes(sd2_like())
    as_sd1 = detect_config(shapes, version="sd1")
    assert as_sd1.unet.num_heads == 8 and as_sd1.unet.head_dim is None
    assert as_sd1.diffusion.prediction_type == "epsilon" and as_sd1.sample_size == 512
    assert as_sd1.text_encoder.activation == "gelu"  # the layout decides the text tower
    v_sd1 = detect_config(compvis_shapes(sd1_like()), prediction_type="v_prediction")
    assert v_sd1.diffusion.prediction_type == "v_prediction" and v_sd1.sample_size == 512
    with pytest.raises(UsageError, match="4 input channels: not an inpainting model"):
        detect_config(shapes, inpainting=True)
    with pytest.raises(UsageError, match="9 input channels: an inpainting model"):
        detect_config(compvis_shapes(sd2_like(9)), inpainting=False)
    with pytest.raises(UsageError, match="version must be one of sd1, sd2, got 'sdxl'"):
        detect_config(shapes, version="sdxl")
    with pytest.raises(UsageError, match="prediction_type must be one of"):
        detect_config(shapes, prediction_type="sample")


def test_overrides_apply_to_a_stored_config(tmp_path):
    config = sd2_like()
    path = tmp_path / "model.safetensors"
    write_single_file(path, config, random_weights(config))
    got, _ = read_single_file(path, prediction_type="epsilon")
    assert got == replace(config, diffusion=replace(config.diffusion, prediction_type="epsilon"))
    forced, _ = read_single_file(path, version="sd1")  # detection with SD 1's defaults
    assert forced.unet.num_heads == 8
    with pytest.raises(UsageError, match="not an inpainting model"):
        read_single_file(path, inpainting=True)


def test_shapes_no_sd_model_has_are_refused_by_detection(tmp_path):
    """The tiny test preset (16-wide, 4 GroupNorm groups) is only readable from our metadata."""
    config = tiny_config()
    path = foreign_file(tmp_path / "tiny.safetensors", config, random_weights(config))
    with pytest.raises(UsageError, match=r"tiny.safetensors: .*do not split|unsupported arch"):
        read_single_file(path)
    shapes = compvis_shapes(sd1_like())
    block = "model.diffusion_model.input_blocks.2."
    irregular = {key: shape for key, shape in shapes.items() if not key.startswith(block)}
    with pytest.raises(UsageError, match=r"ResBlocks per level \[1, 2, 2\] are not all equal"):
        detect_config(irregular)
    del shapes[block + "0.out_layers.3.weight"]
    with pytest.raises(UsageError, match=rf"missing key {block}0.out_layers.3.weight"):
        detect_config(shapes)


def test_written_sd2_text_encoder_from_a_diffusers_folder_reads_back_equivalent(tmp_path):
    """23 layers, last output (a diffusers SD 2 folder) → 24 layers, penultimate (standard)."""
    config = sd2_like()
    config = replace(config, text_encoder=replace(config.text_encoder, output_layer="last"))
    torch.manual_seed(0)
    states = random_weights(config)
    path = tmp_path / "model.safetensors"
    write_single_file(path, config, states)
    for read in (
        read_single_file(path),
        read_single_file(foreign_file(tmp_path / "f.safetensors", config, states)),
    ):
        got_config, got = read
        assert got_config.text_encoder == replace(
            config.text_encoder, layers=4, output_layer="penultimate"
        )
        original, reread = TextEncoder(config.text_encoder), TextEncoder(got_config.text_encoder)
        original.load_state_dict(states["text_encoder"])
        reread.load_state_dict(got["text_encoder"])
        ids = torch.randint(0, VOCAB_SIZE, (2, 8))
        with torch.no_grad():
            assert torch.equal(reread(ids), original(ids))


# ── Variants ──────────────────────────────────────────────────────────────────────────────


def test_full_checkpoint_gives_raw_weights_by_default_and_ema_on_request(tmp_path):
    config = sd1_like()
    states, ema_states = random_weights(config, seed=0), random_weights(config, seed=1)
    unet = model_to_compvis(ema_states, config)
    ema = {ema_key(k): v for k, v in unet.items() if k.startswith("model.diffusion_model.")}
    assert "model_ema.diffusion_modelinput_blocks00weight" in ema
    extra = {
        **ema,
        "model_ema.decay": torch.tensor(0.9999),
        "model_ema.num_updates": torch.tensor(7),
    }
    path = foreign_file(tmp_path / "full.safetensors", config, states, **extra)
    _, raw = read_single_file(path)
    assert_states_equal(raw, states)
    _, averaged = read_single_file(path, use_ema=True)
    assert_states_equal(averaged, {**states, "unet": ema_states["unet"]})

    missing_one = {k: v for k, v in extra.items() if k != "model_ema.diffusion_modelout2bias"}
    path = foreign_file(tmp_path / "partial.safetensors", config, states, **missing_one)
    with pytest.raises(UsageError, match=r"missing key model_ema.diffusion_modelout2bias \(1 m"):
        read_single_file(path, use_ema=True)
    path = foreign_file(tmp_path / "pruned.safetensors", config, states)
    with pytest.raises(UsageError, match=r"pruned.safetensors: use_ema: the file holds no EMA"):
        read_single_file(path, use_ema=True)


def test_only_the_tensors_the_model_uses_are_loaded(tmp_path, monkeypatch):
    """A full checkpoint's EMA copy and training buffers are never read into memory."""
    config = sd1_like()
    states = random_weights(config)
    unet = model_to_compvis(states, config)
    extra = {ema_key(k): v + 1 for k, v in unet.items() if k.startswith("model.diffusion_model.")}
    extra |= {name: torch.rand(1000) for name in DDPM_BUFFERS}
    path = foreign_file(tmp_path / "full.safetensors", config, states, **extra)
    loaded: list[str] = []

    class Spy:
        def __init__(self, *args, **kwargs):
            self.file = safe_open(*args, **kwargs)

        def __enter__(self):
            self.file.__enter__()
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def get_tensor(self, key):
            loaded.append(key)
            return self.file.get_tensor(key)

    monkeypatch.setattr(single_file, "safe_open", Spy)
    read_single_file(path)
    assert sorted(loaded) == sorted(model_to_compvis(states, config))
    loaded.clear()
    read_single_file(path, use_ema=True)
    assert sorted(loaded) == sorted(
        ema_key(k) if k.startswith("model.diffusion_model.") else k for k in unet
    )


def test_fp16_files_are_returned_as_stored(tmp_path):
    config = sd1_like()
    states = random_weights(config)
    path = tmp_path / "half.safetensors"
    write_single_file(path, config, states, dtype=torch.float16)
    assert all(t.dtype == torch.float16 for t in file_tensors(path).values())
    _, got = read_single_file(path)
    half = {name: {k: v.half() for k, v in state.items()} for name, state in states.items()}
    assert_states_equal(got, half)
    bf16 = foreign_file(
        tmp_path / "bf16.safetensors",
        config,
        {name: {k: v.bfloat16() for k, v in state.items()} for name, state in states.items()},
    )
    _, got = read_single_file(bf16)
    assert got["unet"]["conv_in.weight"].dtype == torch.bfloat16


def test_keys_that_inference_does_not_use_are_ignored(tmp_path):
    config = sd2_like()
    states = random_weights(config)
    extra = {name: torch.rand(1000) for name in DDPM_BUFFERS}
    extra |= {
        "logvar": torch.zeros(1000),
        "lvlb_weights": torch.zeros(1000),
        "first_stage_model.loss.logvar": torch.zeros(()),
        "first_stage_model.loss.discriminator.main.0.weight": torch.zeros(4, 3, 4, 4),
        "cond_stage_model.model.text_projection": torch.zeros(128, 128),
        "cond_stage_model.model.logit_scale": torch.zeros(()),
        "model_ema.decay": torch.tensor(0.9999),
        "model_ema.num_updates": torch.tensor(3),
    }
    path = foreign_file(tmp_path / "model.safetensors", config, states, **extra)
    got_config, got = read_single_file(path)
    assert got_config == config
    assert_states_equal(got, states)


def test_sd1_text_keys_with_position_ids_or_without_text_model_are_read(tmp_path):
    config = sd1_like()
    states = random_weights(config)
    tensors = model_to_compvis(states, config)
    short = {k.replace("transformer.text_model.", "transformer."): v for k, v in tensors.items()}
    short["cond_stage_model.transformer.embeddings.position_ids"] = torch.arange(8)[None]
    save_file({k: v.contiguous() for k, v in short.items()}, str(tmp_path / "short.safetensors"))
    got_config, got = read_single_file(tmp_path / "short.safetensors")
    assert got_config == config
    assert_states_equal(got, states)


# ── Pickles ───────────────────────────────────────────────────────────────────────────────


class Callback:
    """Stands for the PyTorch Lightning objects some original .ckpt files carry."""


def test_ckpt_with_plain_tensors_loads(tmp_path):
    config = sd1_like()
    states = random_weights(config)
    tensors = model_to_compvis(states, config)
    wrapped = {"state_dict": tensors, "global_step": 470000, "epoch": 6}
    torch.save(wrapped, tmp_path / "wrapped.ckpt")
    torch.save(tensors, tmp_path / "bare.pt")
    # torch < 1.6's format: no zip container, so it cannot be memory-mapped
    torch.save(wrapped, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    for name in ("wrapped.ckpt", "bare.pt", "legacy.pth"):
        got_config, got = read_single_file(tmp_path / name)
        assert got_config == config
        assert_states_equal(got, states)


def test_ckpt_that_needs_unsafe_unpickling_is_refused(tmp_path):
    config = sd1_like()
    tensors = model_to_compvis(random_weights(config), config)
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": tensors, "callbacks": {"checkpoint": Callback()}}, path)
    with pytest.raises(UsageError) as error:
        read_single_file(path)
    message = str(error.value)
    assert message.startswith(f"{path}: this pickle needs unsafe unpickling (it needs ")
    assert "Callback" in message and "refusing to load it" in message
    assert "\n" not in message


# ── Bad input ─────────────────────────────────────────────────────────────────────────────


@pytest.fixture
def sd1_file(tmp_path) -> tuple[ModelConfig, dict, Path]:
    config = sd1_like()
    states = random_weights(config)
    return config, states, foreign_file(tmp_path / "model.safetensors", config, states)


def test_truncated_and_corrupt_files_are_one_line_errors(tmp_path, sd1_file):
    _, _, path = sd1_file
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match=r"cut.safetensors: cannot read safetensors file"):
        read_single_file(cut)
    ckpt = tmp_path / "cut.ckpt"
    torch.save(file_tensors(path), ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(UsageError, match=r"cut.ckpt: cannot read checkpoint: "):
        read_single_file(ckpt)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(UsageError, match=r"garbage.pth: cannot read checkpoint: not a PyTorch"):
        read_single_file(garbage)
    with pytest.raises(UsageError, match=r"no such file: .*nowhere.safetensors"):
        read_single_file(tmp_path / "nowhere.safetensors")
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(UsageError, match=r"unknown checkpoint type '.bin'"):
        read_single_file(tmp_path / "model.bin")


def test_unknown_missing_and_misshapen_keys_are_named(tmp_path, sd1_file):
    _, _, path = sd1_file
    tensors = file_tensors(path)

    def rewrite(name: str, new: dict) -> Path:
        save_file(new, str(tmp_path / name))
        return tmp_path / name

    unknown = rewrite(
        "unknown.safetensors", {**tensors, "model.diffusion_model.extra": torch.zeros(1)}
    )
    with pytest.raises(
        UsageError,
        match=r"unknown.safetensors: unexpected key model.diffusion_model.extra \(1 unexpected\)",
    ):
        read_single_file(unknown)
    key = "first_stage_model.decoder.conv_out.bias"
    missing = rewrite("missing.safetensors", {k: v for k, v in tensors.items() if k != key})
    with pytest.raises(UsageError, match=rf"missing.safetensors: missing key {key} \(1 missing\)"):
        read_single_file(missing)
    wrong = rewrite("wrong.safetensors", {**tensors, key: torch.zeros(4)})
    with pytest.raises(
        UsageError, match=rf"wrong.safetensors: key {key} has shape \(4,\), expected \(3,\)"
    ):
        read_single_file(wrong)
    no_unet = rewrite(
        "vae.safetensors", {k: v for k, v in tensors.items() if k.startswith("first_stage_model.")}
    )
    with pytest.raises(
        UsageError, match=r"vae.safetensors: unknown layout: no model.diffusion_model"
    ):
        read_single_file(no_unet)
    no_text = rewrite(
        "no_text.safetensors",
        {k: v for k, v in tensors.items() if not k.startswith("cond_stage_model.")},
    )
    with pytest.raises(UsageError, match=r"no text encoder: neither cond_stage_model.transformer"):
        read_single_file(no_text)


def test_writing_refuses_pickles_and_bad_states(tmp_path):
    config = sd1_like()
    states = random_weights(config)
    with pytest.raises(
        UsageError, match=r"model.ckpt: single files are written as .safetensors only"
    ):
        write_single_file(tmp_path / "model.ckpt", config, states)
    bad = {**states, "unet": {**states["unet"], "conv_in.weight": torch.zeros(1)}}
    with pytest.raises(UsageError, match=r"conv_in.weight has shape \(1,\)"):
        write_single_file(tmp_path / "model.safetensors", config, bad)
    with pytest.raises(UsageError, match="cannot write"):
        write_single_file(tmp_path / "no" / "dir.safetensors", config, states)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_written_file_carries_the_config_in_its_metadata(tmp_path):
    config = sd1_like()
    path = tmp_path / "model.safetensors"
    write_single_file(path, config, random_weights(config))
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata()
    assert ModelConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY])) == config
    assert metadata["format"] == "pt"


# ── Interoperability with diffusers' `from_single_file` ───────────────────────────────────


def diffusers_folder(folder: Path, config: ModelConfig, text_layers: int, tokenizer: Path) -> Path:
    """A diffusers SD folder of this architecture (random weights: only its configs are read)."""
    text_config = replace(config.text_encoder, layers=text_layers)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=config.diffusion.prediction_type,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**diffusers_vae_config(config.autoencoder)),
        text_encoder=CLIPTextModel(CLIPTextConfig(**transformers_clip_text_config(text_config))),
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer),
        unet=UNet2DConditionModel(**diffusers_unet_config(config.unet)),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def read_with_diffusers(path: Path, folder: Path, monkeypatch) -> dict[str, dict]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = StableDiffusionPipeline.from_single_file(
        str(path), config=str(folder), safety_checker=None, local_files_only=True
    )
    return {
        "unet": pipe.unet.state_dict(),
        "vae": pipe.vae.state_dict(),
        "text": pipe.text_encoder.state_dict(),
    }


def ours_in_diffusers_layout(config: ModelConfig, states: dict, text_layers: int) -> dict:
    text = {
        key: tensor
        for key, tensor in states["text_encoder"].items()
        if not key.startswith("blocks.") or int(key.split(".")[1]) < text_layers
    }
    return {
        "unet": unet_to_diffusers(states["unet"], config.unet),
        "vae": autoencoder_to_diffusers(states["autoencoder"], config.autoencoder),
        "text": text_encoder_to_transformers(text, prefix=""),
    }


def assert_same_weights(got: dict, expected: dict) -> None:
    for part in expected:
        assert set(got[part]) == set(expected[part]), part
        for key, tensor in expected[part].items():
            assert torch.equal(got[part][key], tensor), f"{part}: {key}"


@pytest.mark.parametrize("name", ["sd1", "sd2"])
def test_diffusers_reads_our_file_into_the_same_weights(
    tmp_path, monkeypatch, sd_tokenizer_folder, name
):
    config = CONFIGS[name]()
    text_layers = config.text_encoder.layers
    if name == "sd2":  # as converted from a diffusers folder: one layer less, its last output
        text_layers -= 1
        config = replace(
            config,
            text_encoder=replace(config.text_encoder, layers=text_layers, output_layer="last"),
        )
    states = random_weights(config)
    path = tmp_path / "model.safetensors"
    write_single_file(path, config, states)
    tokenizer = sd_tokenizer_folder(tmp_path / "tokenizer")
    got = read_with_diffusers(
        path, diffusers_folder(tmp_path / "folder", config, text_layers, tokenizer), monkeypatch
    )
    assert_same_weights(got, ours_in_diffusers_layout(config, states, text_layers))


# The original code's state-dict keys, written out from its architecture (CompVis'
# `openaimodel.UNetModel`, `model.Encoder/Decoder`, OpenCLIP's text tower) independently of
# latentdiff's rule tables. CLIP's come from transformers itself.


def reference_unet_keys(c: UNetConfig) -> dict[str, tuple]:
    keys: dict[str, tuple] = {}
    channels0 = c.block_channels[0]
    time_dim = c.time_embed_mult * channels0

    def linear(name, n_in, n_out, bias=True):
        keys[name + ".weight"] = (n_out, n_in)
        if bias:
            keys[name + ".bias"] = (n_out,)

    def conv(name, n_in, n_out, size):
        keys[name + ".weight"] = (n_out, n_in, size, size)
        keys[name + ".bias"] = (n_out,)

    def norm(name, ch):
        keys[name + ".weight"] = keys[name + ".bias"] = (ch,)

    def resblock(name, ch, out):
        norm(f"{name}.in_layers.0", ch)
        conv(f"{name}.in_layers.2", ch, out, 3)
        linear(f"{name}.emb_layers.1", time_dim, out)
        norm(f"{name}.out_layers.0", out)
        conv(f"{name}.out_layers.3", out, out, 3)
        if ch != out:
            conv(f"{name}.skip_connection", ch, out, 1)

    def spatial_transformer(name, ch):
        norm(f"{name}.norm", ch)
        for proj in ("proj_in", "proj_out"):
            if c.use_linear_projection:
                linear(f"{name}.{proj}", ch, ch)
            else:
                conv(f"{name}.{proj}", ch, ch, 1)
        for d in range(c.transformer_depth):
            block = f"{name}.transformer_blocks.{d}"
            for attn, context in (("attn1", ch), ("attn2", c.context_dim)):
                linear(f"{block}.{attn}.to_q", ch, ch, bias=False)
                linear(f"{block}.{attn}.to_k", context, ch, bias=False)
                linear(f"{block}.{attn}.to_v", context, ch, bias=False)
                linear(f"{block}.{attn}.to_out.0", ch, ch)
            linear(f"{block}.ff.net.0.proj", ch, 8 * ch)  # GEGLU: value and gate
            linear(f"{block}.ff.net.2", 4 * ch, ch)
            for i in (1, 2, 3):
                norm(f"{block}.norm{i}", ch)

    linear("time_embed.0", channels0, time_dim)
    linear("time_embed.2", time_dim, time_dim)
    conv("input_blocks.0.0", c.in_channels, channels0, 3)
    skips, ch, n = [channels0], channels0, 1
    last = len(c.block_channels) - 1
    for level, width in enumerate(c.block_channels):
        for _ in range(c.layers_per_block):
            resblock(f"input_blocks.{n}.0", ch, width)
            ch = width
            if c.attention_levels[level]:
                spatial_transformer(f"input_blocks.{n}.1", ch)
            skips.append(ch)
            n += 1
        if level != last:
            conv(f"input_blocks.{n}.0.op", ch, ch, 3)
            skips.append(ch)
            n += 1
    resblock("middle_block.0", ch, ch)
    spatial_transformer("middle_block.1", ch)
    resblock("middle_block.2", ch, ch)
    n = 0
    for level in reversed(range(len(c.block_channels))):
        for i in range(c.layers_per_block + 1):
            resblock(f"output_blocks.{n}.0", ch + skips.pop(), c.block_channels[level])
            ch = c.block_channels[level]
            slot = 1
            if c.attention_levels[level]:
                spatial_transformer(f"output_blocks.{n}.1", ch)
                slot = 2
            if level and i == c.layers_per_block:
                conv(f"output_blocks.{n}.{slot}.conv", ch, ch, 3)
            n += 1
    norm("out.0", ch)
    conv("out.2", channels0, c.out_channels, 3)
    return {"model.diffusion_model." + key: shape for key, shape in keys.items()}


def reference_vae_keys(c) -> dict[str, tuple]:
    keys: dict[str, tuple] = {}
    widths, z = c.block_channels, c.latent_channels

    def conv(name, n_in, n_out, size):
        keys[name + ".weight"] = (n_out, n_in, size, size)
        keys[name + ".bias"] = (n_out,)

    def norm(name, ch):
        keys[name + ".weight"] = keys[name + ".bias"] = (ch,)

    def resnet(name, n_in, n_out):
        norm(f"{name}.norm1", n_in)
        conv(f"{name}.conv1", n_in, n_out, 3)
        norm(f"{name}.norm2", n_out)
        conv(f"{name}.conv2", n_out, n_out, 3)
        if n_in != n_out:
            conv(f"{name}.nin_shortcut", n_in, n_out, 1)

    def mid(name, ch):
        resnet(f"{name}.block_1", ch, ch)
        norm(f"{name}.attn_1.norm", ch)
        for proj in ("q", "k", "v", "proj_out"):
            conv(f"{name}.attn_1.{proj}", ch, ch, 1)
        resnet(f"{name}.block_2", ch, ch)

    conv("encoder.conv_in", c.in_channels, widths[0], 3)
    ch = widths[0]
    for i, width in enumerate(widths):
        for b in range(c.layers_per_block):
            resnet(f"encoder.down.{i}.block.{b}", ch, width)
            ch = width
        if i != len(widths) - 1:
            conv(f"encoder.down.{i}.downsample.conv", ch, ch, 3)
    mid("encoder.mid", ch)
    norm("encoder.norm_out", ch)
    conv("encoder.conv_out", ch, 2 * z, 3)
    conv("decoder.conv_in", z, ch, 3)
    mid("decoder.mid", ch)
    for i in reversed(range(len(widths))):
        for b in range(c.layers_per_block + 1):
            resnet(f"decoder.up.{i}.block.{b}", ch, widths[i])
            ch = widths[i]
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", ch, ch, 3)
    norm("decoder.norm_out", ch)
    conv("decoder.conv_out", ch, c.in_channels, 3)
    conv("quant_conv", 2 * z, 2 * z, 1)
    conv("post_quant_conv", z, z, 1)
    return {"first_stage_model." + key: shape for key, shape in keys.items()}


def reference_text_keys(c) -> dict[str, tuple]:
    width = c.width
    if c.activation == "quick_gelu":
        with torch.device("meta"):
            model = CLIPTextModel(CLIPTextConfig(**transformers_clip_text_config(c)))
        return {
            "cond_stage_model.transformer.text_model." + key: tuple(tensor.shape)
            for key, tensor in model.state_dict().items()
        }
    keys = {
        "token_embedding.weight": (c.vocab_size, width),
        "positional_embedding": (c.context_length, width),
    }
    for n in range(c.layers):
        block = f"transformer.resblocks.{n}."
        keys |= {
            block + "ln_1.weight": (width,),
            block + "ln_1.bias": (width,),
            block + "attn.in_proj_weight": (3 * width, width),
            block + "attn.in_proj_bias": (3 * width,),
            block + "attn.out_proj.weight": (width, width),
            block + "attn.out_proj.bias": (width,),
            block + "ln_2.weight": (width,),
            block + "ln_2.bias": (width,),
            block + "mlp.c_fc.weight": (4 * width, width),
            block + "mlp.c_fc.bias": (4 * width,),
            block + "mlp.c_proj.weight": (width, 4 * width),
            block + "mlp.c_proj.bias": (width,),
        }
    keys |= {"ln_final.weight": (width,), "ln_final.bias": (width,)}
    return {"cond_stage_model.model." + key: shape for key, shape in keys.items()}


def reference_keys(config: ModelConfig) -> dict[str, tuple]:
    return {
        **reference_unet_keys(config.unet),
        **reference_vae_keys(config.autoencoder),
        **reference_text_keys(config.text_encoder),
    }


@pytest.mark.parametrize("name", ["sd1", "sd2", "sd1-inpainting"])
def test_our_layout_equals_the_original_architecture(name):
    config = CONFIGS[name]()
    assert {k: tuple(v) for k, v in compvis_shapes(config).items()} == reference_keys(config)


@pytest.mark.parametrize("name", ["sd1", "sd2"])
def test_a_foreign_file_is_read_as_diffusers_reads_it(
    tmp_path, monkeypatch, sd_tokenizer_folder, name
):
    """A file built from the original architecture's key list with random tensors (plus what
    original files carry beside the weights): our reader and diffusers' put every tensor in
    the same place."""
    config = CONFIGS[name]()
    generator = torch.Generator().manual_seed(3)
    tensors = {
        key: torch.randn(shape, generator=generator)
        for key, shape in reference_keys(config).items()
    }
    tensors |= {name: torch.rand(1000) for name in DDPM_BUFFERS}
    if name == "sd1":
        tensors["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(
            8
        )[None]
    else:
        tensors["cond_stage_model.model.text_projection"] = torch.randn(128, 128)
        tensors["cond_stage_model.model.logit_scale"] = torch.tensor(4.6)
    path = tmp_path / "foreign.safetensors"
    save_file(tensors, str(path))

    got_config, states = read_single_file(path)
    assert got_config == config
    # diffusers folders hold SD 2's text encoder without its last layer, which SD 2 skips
    text_layers = config.text_encoder.layers - (name == "sd2")
    tokenizer = sd_tokenizer_folder(tmp_path / "tokenizer")
    diffusers = read_with_diffusers(
        path, diffusers_folder(tmp_path / "folder", config, text_layers, tokenizer), monkeypatch
    )
    assert_same_weights(diffusers, ours_in_diffusers_layout(config, states, text_layers))

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors.torch import save_file

from latentdiff.checkpoints.bundle import (
    AUTOENCODER_CONFIG_FILE,
    AUTOENCODER_FILE,
    random_weights,
)
from latentdiff.checkpoints.compvis_layout import VAE_PREFIX, autoencoder_to_compvis
from latentdiff.checkpoints.diffusers_layout import autoencoder_from_diffusers
from latentdiff.checkpoints.single_file import read_single_file, write_single_file
from latentdiff.checkpoints.sources import LoadOptions, components_from_weights, read_model
from latentdiff.cli import main
from latentdiff.config import AutoencoderConfig, tiny_config
from latentdiff.errors import UsageError
from latentdiff.training.checkpoint import load_weights, save_weights

CPU = torch.device("cpu")
CONFIG = tiny_config().autoencoder  # the autoencoder of conftest's `tiny_model_dir`
SCALING_FACTOR = 0.5  # the VAE's own; the model's (0.18215) must stay


def reference_vae(**changes) -> AutoencoderKL:
    """diffusers' AutoencoderKL shaped like `CONFIG` (hand-written arguments), every weight
    perturbed so that no zero-initialised layer can hide a swapped key."""
    arguments = {
        "block_out_channels": (8, 16),
        "down_block_types": ("DownEncoderBlock2D",) * 2,
        "up_block_types": ("UpDecoderBlock2D",) * 2,
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 4,
        "scaling_factor": SCALING_FACTOR,
        **changes,
    }
    torch.manual_seed(5)
    vae = AutoencoderKL(**arguments).eval()
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return vae


def compvis_tensors(state: dict, config: AutoencoderConfig = CONFIG) -> dict[str, torch.Tensor]:
    """An AutoencoderKL state dict in the original layout, without `first_stage_model.`
    (as `vae-ft-mse-840000-ema-pruned.safetensors`)."""
    tensors = autoencoder_to_compvis(autoencoder_from_diffusers(state, config), config)
    return {key.removeprefix(VAE_PREFIX): tensor.contiguous() for key, tensor in tensors.items()}


@pytest.fixture(scope="module")
def reference() -> AutoencoderKL:
    return reference_vae()


@pytest.fixture(scope="module")
def sources(reference: AutoencoderKL, tmp_path_factory) -> dict[str, Path]:
    """The same VAE in every form `--vae` reads."""
    root = tmp_path_factory.mktemp("vaes")
    reference.save_pretrained(root / "sd-vae-ft-mse")
    (root / "sd" / "vae").mkdir(parents=True)
    (root / "sd" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    reference.save_pretrained(root / "sd" / "vae")
    compvis = compvis_tensors(reference.state_dict())
    save_file(compvis, root / "vae-ft-mse-840000-ema-pruned.safetensors")
    training = {  # a training checkpoint: loss and EMA buffers beside the weights
        **compvis,
        "loss.logvar": torch.zeros(()),
        "loss.discriminator.main.0.weight": torch.ones(2, 3),
        "model_ema.decay": torch.tensor(0.9999),
        "model_ema.encoderconv_inweight": torch.ones(8, 3, 3, 3),
    }
    torch.save({"state_dict": training, "global_step": 840000}, root / "vae-training.ckpt")
    whole = {  # a whole SD checkpoint: its first_stage_model.* is the VAE
        **{VAE_PREFIX + key: tensor for key, tensor in compvis.items()},
        VAE_PREFIX + "loss.logvar": torch.zeros(()),
        "model.diffusion_model.input_blocks.0.0.weight": torch.ones(2, 4, 3, 3),
    }
    save_file(whole, root / "sd-whole.safetensors")
    state = {key: tensor.contiguous() for key, tensor in reference.state_dict().items()}
    save_file(state, root / "vae-diffusers-layout.safetensors")
    run = root / "run"  # what `train autoencoder` writes
    run.mkdir()
    save_weights(run / AUTOENCODER_FILE, autoencoder_from_diffusers(state, CONFIG))
    config = dataclasses.replace(CONFIG, scaling_factor=SCALING_FACTOR)
    (run / AUTOENCODER_CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(config)))
    return {
        "train autoencoder run": run,
        "diffusers folder": root / "sd-vae-ft-mse",
        "diffusers SD folder": root / "sd",
        "CompVis file": root / "vae-ft-mse-840000-ema-pruned.safetensors",
        "CompVis training ckpt": root / "vae-training.ckpt",
        "whole SD file": root / "sd-whole.safetensors",
        "diffusers-layout file": root / "vae-diffusers-layout.safetensors",
    }


def test_the_compvis_file_is_what_diffusers_reads(reference, sources):
    """The test data is right: diffusers' own converter reads the CompVis file into `reference`."""
    tensors = load_weights(sources["CompVis file"])[0]
    converted = convert_ldm_vae_checkpoint(tensors, dict(reference.config))
    expected = reference.state_dict()
    assert converted.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(converted[key].reshape(tensor.shape), tensor), key


@pytest.mark.parametrize(
    "source",
    [
        "train autoencoder run",
        "diffusers folder",
        "diffusers SD folder",
        "CompVis file",
        "CompVis training ckpt",
        "whole SD file",
        "diffusers-layout file",
    ],
)
def test_model_with_vae_decodes_and_encodes_as_the_diffusers_vae(
    reference, sources, tiny_model_dir, source
):
    weights = read_model(tiny_model_dir, LoadOptions(vae=sources[source]))
    assert weights.notes[-1].startswith(f"autoencoder weights from {sources[source]} (")
    components = components_from_weights(weights, CPU)
    assert components.config.autoencoder == CONFIG  # scaling factor 0.18215, not the VAE's 0.5
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 8, 8, generator=generator)
    x = torch.rand(2, 3, 16, 16, generator=generator) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(
            components.autoencoder.decode(z), reference.decode(z).sample, atol=1e-4, rtol=1e-4
        )
        torch.testing.assert_close(
            components.autoencoder.encode(x).mode(),
            reference.encode(x).latent_dist.mode(),
            atol=1e-4,
            rtol=1e-4,
        )


def test_variant_weights_where_the_vae_folder_has_them(
    reference, sources, tiny_model_dir, tmp_path
):
    copy.deepcopy(reference).half().save_pretrained(tmp_path / "fp16", variant="fp16")
    expected = autoencoder_from_diffusers(reference.state_dict(), CONFIG)
    for folder, dtype in [(tmp_path / "fp16", torch.float16), (sources["diffusers folder"], None)]:
        # sd-vae-ft-mse has no fp16 variant: its default weights serve a `--variant fp16` model
        weights = read_model(tiny_model_dir, LoadOptions(vae=folder, variant="fp16"))
        state = weights.states["autoencoder"]
        assert state.keys() == expected.keys()
        for key, tensor in expected.items():
            assert torch.equal(state[key], tensor.to(dtype or tensor.dtype)), key


def test_convert_bakes_the_vae_into_a_new_model_folder(
    reference, sources, tiny_model_dir, tmp_path, capsys, assert_autoencoder_baked_in
):
    expected = autoencoder_from_diffusers(reference.state_dict(), CONFIG)
    for source in ("diffusers folder", "CompVis file", "diffusers-layout file"):
        out = tmp_path / source.replace(" ", "-")
        args = ["convert", str(tiny_model_dir), str(out), "--to", "latentdiff"]
        assert main([*args, "--vae", str(sources[source])]) == 0
        assert_autoencoder_baked_in(tiny_model_dir, out, expected)
    capsys.readouterr()


def test_convert_bakes_the_vae_into_a_stable_diffusion_file(reference, sources, tmp_path, capsys):
    config = tiny_config()
    states = random_weights(config)
    write_single_file(tmp_path / "model.safetensors", config, states)
    out = tmp_path / "with-vae.safetensors"
    args = ["convert", str(tmp_path / "model.safetensors"), str(out), "--to", "single-file"]
    assert main([*args, "--vae", str(sources["CompVis training ckpt"])]) == 0
    capsys.readouterr()
    written_config, written = read_single_file(out)
    assert written_config == config
    expected = {**states, "autoencoder": autoencoder_from_diffusers(reference.state_dict(), CONFIG)}
    assert written.keys() == expected.keys()
    for name, state in expected.items():
        assert written[name].keys() == state.keys()
        assert all(torch.equal(written[name][key], tensor) for key, tensor in state.items()), name


def edited_folder(sources, tmp_path, **changes) -> Path:
    folder = Path(shutil.copytree(sources["diffusers folder"], tmp_path / "vae"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


def file_of(tmp_path: Path, name: str, tensors: dict) -> Path:
    save_file({key: tensor.contiguous() for key, tensor in tensors.items()}, tmp_path / name)
    return tmp_path / name


def test_another_architecture_is_one_error_naming_the_field_or_key(
    sources, tiny_model_dir, tmp_path
):
    deeper = AutoencoderConfig(block_channels=(8, 16, 16), layers_per_block=1, norm_groups=4)
    three_levels = reference_vae(
        block_out_channels=(8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
    )
    wider = reference_vae(block_out_channels=(8, 32)).state_dict()
    cases = [
        (
            edited_folder(sources, tmp_path, norm_num_groups=8),
            r"--vae .*vae: its norm_groups = 8 differs from .*'s autoencoder \(4\)",
        ),
        (
            file_of(
                tmp_path, "deeper.safetensors", compvis_tensors(three_levels.state_dict(), deeper)
            ),
            r"--vae .*deeper.safetensors: does not fit .*'s autoencoder: "
            r"unexpected key decoder\.up\.2\.",
        ),
        (
            file_of(tmp_path, "wider.safetensors", wider),
            r"does not fit .*: key decoder\.conv_in\.bias has shape \(32,\), expected \(16,\)",
        ),
    ]
    for path, message in cases:
        with pytest.raises(UsageError, match=message) as error:
            read_model(tiny_model_dir, LoadOptions(vae=path))
        assert "\n" not in str(error.value)


def test_missing_corrupt_or_foreign_vae_is_one_line_error(sources, tiny_model_dir, tmp_path):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(sources["CompVis file"].read_bytes()[:1000])
    broken_pickle = tmp_path / "broken.ckpt"
    broken_pickle.write_bytes(sources["CompVis training ckpt"].read_bytes()[:1000])
    folder = Path(shutil.copytree(sources["diffusers folder"], tmp_path / "broken-folder"))
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    empty = tmp_path / "empty"
    empty.mkdir()
    unet = file_of(
        tmp_path, "unet.safetensors", {"model.diffusion_model.out.2.weight": torch.ones(1)}
    )
    cases = [
        (tmp_path / "nowhere", r"no autoencoder at .*nowhere$"),
        (empty, r"empty holds no autoencoder: expected a finished `train autoencoder` run"),
        (truncated, r"truncated.safetensors: cannot read safetensors file"),
        (broken_pickle, r"broken.ckpt: cannot read checkpoint"),
        (folder, r"cannot read weights .*broken-folder/diffusion_pytorch_model.safetensors"),
        (unet, r"unet.safetensors: not a Stable Diffusion VAE \(no encoder.conv_in.weight key\)"),
        (tmp_path / "notes.txt", r"notes.txt: unknown checkpoint type '.txt'"),
    ]
    (tmp_path / "notes.txt").write_text("not weights")
    for path, message in cases:
        with pytest.raises(UsageError, match=message) as error:
            read_model(tiny_model_dir, LoadOptions(vae=path))
        assert "\n" not in str(error.value)

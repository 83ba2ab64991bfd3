"""Fixtures shared across test directories."""

from pathlib import Path

import pytest
import torch

from latentdiff.models.clip_tokenizer import write_byte_level_tokenizer

# One thread per test process: `pytest -n 2` already fills both cores, and OpenMP threads that
# outnumber the cores spin against each other (a 2-step generation went from 0.05 s to 9 s).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A latentdiff model folder of `tiny_config()` with random weights, built once per session.

    The U-Net's zero-initialised output layers (LDM's init) are perturbed so that the random
    model's prediction depends on the prompt: otherwise every prompt would give the same image.
    Tests must not modify the folder (copy it first).
    """
    from latentdiff.checkpoints.bundle import build_components, save_components
    from latentdiff.config import tiny_config
    from latentdiff.models.tokenizer import build_world_tokenizer

    config = tiny_config()
    torch.manual_seed(0)
    tokenizer = build_world_tokenizer(vocab_size=config.text_encoder.vocab_size)
    components = build_components(config, tokenizer)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in components.unet.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    folder = tmp_path_factory.mktemp("tiny_model")
    save_components(components, folder)
    return folder


TINY_SAMPLING = {"guidance_scale": 3.0, "guidance_rescale": 0.5, "guidance_interval": [0.5, None]}


@pytest.fixture(scope="session")
def tiny_model_with_defaults_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """`tiny_model_dir` whose config.json names its own sampling defaults (`TINY_SAMPLING`:
    guidance 3, rescale 0.5, guided at σ > 0.5), as the bundled model's does."""
    import json
    import shutil

    folder = tmp_path_factory.mktemp("tiny_defaults") / "tiny_defaults"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "sampling": TINY_SAMPLING}))
    return folder


@pytest.fixture(scope="session")
def sd_tokenizer_folder():
    """`sd_tokenizer_folder(folder, pad_token)` writes a CLIP tokenizer folder with a byte-level vocabulary (`write_byte_level_tokenizer`)."""
    return write_byte_level_tokenizer


@pytest.fixture(scope="session")
def assert_autoencoder_baked_in():
    """A check that `baked` (a latentdiff folder written by `convert --vae`) is `model` with its
    autoencoder replaced by `autoencoder` (latentdiff keys): every tensor fp16, config unchanged
    (the model's latent scaling kept)."""
    from latentdiff.training.checkpoint import load_weights

    def check(model: Path, baked: Path, autoencoder: dict[str, torch.Tensor]) -> None:
        before, _ = load_weights(model / "model.safetensors")
        after, _ = load_weights(baked / "model.safetensors")
        assert after.keys() == before.keys()
        for key, tensor in after.items():
            component, _, name = key.partition(".")
            expected = autoencoder[name].half() if component == "autoencoder" else before[key]
            assert tensor.dtype == torch.float16 and torch.equal(tensor, expected), key
        assert (baked / "config.json").read_text() == (model / "config.json").read_text()

    return check

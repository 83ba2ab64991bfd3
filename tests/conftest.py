"""Fixtures shared across test directories."""

from pathlib import Path

import pytest
import torch

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


# ── A CLIP tokenizer folder without downloads ─────────────────────────────────────────────
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_BOS_ID, CLIP_EOS_ID = 512, 513  # after the 256 byte symbols and the 256 word-final ones


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes (what byte-level BPE vocabularies hold)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def write_sd_tokenizer_folder(folder: Path, pad_token: str = CLIP_EOS) -> Path:
    """A `tokenizer/` folder laid out as SD checkpoints ship it (vocab.json, merges.txt, special
    tokens; SD 1.x pads with the end-of-text token, SD 2.x with "!"), with a byte-level
    vocabulary and no merges: real CLIP tokenization rules, 514 tokens, nothing downloaded."""
    import json

    symbols = sorted(_byte_symbols())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab |= {s + "</w>": 256 + i for i, s in enumerate(symbols)}
    vocab |= {CLIP_BOS: CLIP_BOS_ID, CLIP_EOS: CLIP_EOS_ID}
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")

    def token(content: str) -> dict:
        return {"content": content, "lstrip": False, "normalized": True, "rstrip": False}

    special = {"bos_token": token(CLIP_BOS), "eos_token": token(CLIP_EOS)}
    special["unk_token"] = token(CLIP_EOS)
    (folder / "special_tokens_map.json").write_text(json.dumps(special | {"pad_token": pad_token}))
    config = {**special, "pad_token": pad_token, "model_max_length": 77, "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"errors": "replace"}))
    return folder


@pytest.fixture(scope="session")
def sd_tokenizer_folder():
    """`sd_tokenizer_folder(folder, pad_token)` writes a CLIP tokenizer folder (see above)."""
    return write_sd_tokenizer_folder

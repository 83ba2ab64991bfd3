"""OpenAI CLIP's byte-level BPE tokenizer, as real Stable Diffusion checkpoints ship it.

SD's U-Net was trained on the hidden states of CLIP (SD 1.x) or OpenCLIP (SD 2.x) text towers,
fed by this tokenizer; our `TextEncoder` equals transformers' `CLIPTextModel`, so the states are
SD's exactly when the ids are. The ids are therefore those of transformers' `CLIPTokenizer`,
which is what diffusers' pipelines call, read from a checkpoint's `tokenizer/` folder
(`vocab.json` + `merges.txt` + `special_tokens_map.json` + `tokenizer_config.json`, or a
`tokenizer.json` written by transformers). This module only adapts it to `PromptTokenizer`.

transformers 5's `CLIPTokenizer` is this Rust-backed tokenizer, and the tests check parity
with it; on transformers 4 the same tokenizer is `CLIPTokenizerFast` (what is loaded here),
whose ids for some non-ASCII text differ from 4's pure-Python `CLIPTokenizer`.

The padding token is the folder's own: SD 1.x pads with `<|endoftext|>` (= eos), SD 2.x with
"!" (id 0); the U-Net has seen that padding in every prompt it was trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from latentdiff.errors import UsageError
from latentdiff.models.tokenizer import check_prompts, frame_prompts

if TYPE_CHECKING:
    import transformers

VOCAB_FILE, MERGES_FILE, TOKENIZER_FILE = "vocab.json", "merges.txt", "tokenizer.json"


class CLIPTokenizer:
    """transformers' `CLIPTokenizer` behind latentdiff's `PromptTokenizer` contract."""

    max_chunks = None

    def __init__(self, tokenizer: transformers.CLIPTokenizerFast) -> None:
        ids = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
        if None in ids or tokenizer.bos_token_id == tokenizer.eos_token_id:
            raise ValueError("a CLIP tokenizer needs distinct bos and eos tokens and a pad token")
        self._tokenizer = tokenizer
        # The Rust tokenizer itself: transformers' `__call__` adds nothing for CLIP but a
        # warning on every prompt longer than 77 tokens, which chunked prompts are by design.
        self._backend = tokenizer.backend_tokenizer

    @property
    def transformers_tokenizer(self) -> transformers.CLIPTokenizerFast:
        """The wrapped tokenizer (to save it beside a converted checkpoint, for instance)."""
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self._tokenizer)

    @property
    def bos_id(self) -> int:
        return self._tokenizer.bos_token_id

    @property
    def eos_id(self) -> int:
        return self._tokenizer.eos_token_id

    @property
    def pad_id(self) -> int:
        return self._tokenizer.pad_token_id

    def tokenize(self, text: str) -> list[int]:
        """BPE ids of `text` (lower-cased, whitespace collapsed), without framing."""
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode(self, texts: list[str], context_length: int) -> torch.Tensor:
        """Prompts → ids (B, context_length): bos, tokens, eos, then the pad token.

        Equals transformers' `tokenizer(texts, padding="max_length", max_length=context_length,
        truncation=True).input_ids`, except that truncating a prompt also warns.
        """
        check_prompts(texts, context_length)
        encodings = self._backend.encode_batch(texts, add_special_tokens=False) if texts else []
        return frame_prompts(texts, [e.ids for e in encodings], context_length, self)

    @classmethod
    def load(cls, folder: str | Path) -> CLIPTokenizer:
        """Read a CLIP tokenizer folder (a diffusers checkpoint's `tokenizer/`)."""
        folder = Path(folder)
        has_bpe_files = (folder / VOCAB_FILE).is_file() and (folder / MERGES_FILE).is_file()
        if not (has_bpe_files or (folder / TOKENIZER_FILE).is_file()):
            raise UsageError(f"no CLIP tokenizer at {folder}: needs {VOCAB_FILE} and {MERGES_FILE}")
        # The fast (Rust-backed) class by its name on transformers 4 and 5 alike: 4's
        # `CLIPTokenizer` is the pure-Python one, without the `backend_tokenizer` used here.
        from transformers import CLIPTokenizerFast  # 2 s import

        try:
            tokenizer = CLIPTokenizerFast.from_pretrained(folder, local_files_only=True)
            return cls(tokenizer)
        except Exception as error:  # JSON, I/O and library errors alike mean a broken folder
            raise UsageError(
                f"cannot read CLIP tokenizer at {folder}: {_one_line(error)}"
            ) from None


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# ── A CLIP tokenizer without downloads (tests, benchmarks) ─────────────────────────────────
# after the 256 byte symbols and the 256 word-final ones
BYTE_LEVEL_BOS_ID, BYTE_LEVEL_EOS_ID = 512, 513


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes (what byte-level BPE vocabularies hold)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def write_byte_level_tokenizer(folder: Path, pad_token: str = "<|endoftext|>") -> Path:
    """A `tokenizer/` folder laid out as SD checkpoints ship it (vocab.json, merges.txt, special
    tokens; SD 1.x pads with the end-of-text token, SD 2.x with "!"), with a byte-level
    vocabulary and no merges: real CLIP tokenization rules, 514 tokens, nothing downloaded."""
    import json

    symbols = sorted(_byte_symbols())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab |= {s + "</w>": 256 + i for i, s in enumerate(symbols)}
    vocab |= {"<|startoftext|>": BYTE_LEVEL_BOS_ID, "<|endoftext|>": BYTE_LEVEL_EOS_ID}
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")

    def token(content: str) -> dict:
        return {"content": content, "lstrip": False, "normalized": True, "rstrip": False}

    special = {"bos_token": token("<|startoftext|>"), "eos_token": token("<|endoftext|>")}
    special["unk_token"] = token("<|endoftext|>")
    (folder / "special_tokens_map.json").write_text(json.dumps(special | {"pad_token": pad_token}))
    config = {**special, "pad_token": pad_token, "model_max_length": 77, "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"errors": "replace"}))
    return folder

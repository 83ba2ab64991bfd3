"""Prompt → token ids for latentdiff's own text encoders, built on the `tokenizers` library.

The Shapes World's caption vocabulary is closed and tiny (~60 words, WORLD.md), so the model is
word-level: one id per word plus `<unk>` for anything else. Sub-word models (BPE, WordPiece)
exist to cover an open vocabulary; here they would only split words the text encoder must
learn as wholes and spend embedding rows on fragments that never occur.

Every latentdiff tokenizer has the same special ids, so models can rely on them: `<pad>` = 0
(= `TextEncoderConfig.pad_token_id`), `<unk>` = 1, `<bos>` = 2, `<eos>` = 3. (The eos id is not
2 because transformers' `CLIPTextModel` treats `eos_token_id == 2` as its legacy "pool at the
highest id" convention.) Real SD checkpoints use transformers' CLIP tokenizer instead
(`models/clip_tokenizer.py`); both satisfy `PromptTokenizer`, the contract pipelines rely on.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

import tokenizers
import torch
from tokenizers import models, normalizers, pre_tokenizers, processors, trainers

from latentdiff.config import PRESETS
from latentdiff.errors import UsageError
from latentdiff.world.captions import caption_corpus

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(len(SPECIAL_TOKENS))

TOKENIZER_FILE = "tokenizer.json"
WORLD_CORPUS_SIZE = 10_000
"""Captions the world tokenizer is trained on: enough that every word of the grammar appears."""


@runtime_checkable
class PromptTokenizer(Protocol):
    """What pipelines need from a tokenizer: the ids of a text, and the special ids to frame them.

    A framed row is `bos tokens eos pad…` of the text encoder's context length. Prompts longer
    than one row are split by `pipelines/prompts.py`, which is why the bare ids are exposed.
    """

    max_chunks: int | None
    """How many context rows one prompt may span: None for CLIP (AUTOMATIC1111's chunking of
    long prompts), 1 for latentdiff's own models (trained on single rows: longer is truncated)."""

    @property
    def vocab_size(self) -> int:
        """Ids the tokenizer can produce (the text encoder's embedding must have as many rows)."""
        ...

    @property
    def bos_id(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def pad_id(self) -> int:
        """Fills a row after its eos (SD 1.x: the eos itself; SD 2.x: "!" = 0)."""
        ...

    def tokenize(self, text: str) -> list[int]:
        """The ids of `text` alone: no bos, eos or padding, never truncated."""
        ...

    def encode(self, texts: list[str], context_length: int) -> torch.Tensor:
        """Prompts → framed rows (B, context_length); over-long prompts truncated with a warning."""
        ...


def check_prompts(texts: list[str], context_length: int) -> None:
    """The argument checks every `encode` shares."""
    if isinstance(texts, str):
        raise TypeError("encode takes a list of prompts, not a single string")
    if context_length < 2:
        raise ValueError("context_length must leave room for <bos> and <eos>")


def frame(tokens: list[int], context_length: int, tokenizer: PromptTokenizer) -> list[int]:
    """`bos tokens eos pad…`, `context_length` ids; `tokens` must leave room for bos and eos."""
    if len(tokens) > context_length - 2:
        raise ValueError(f"{len(tokens)} tokens do not fit a context of {context_length}")
    row = [tokenizer.bos_id, *tokens, tokenizer.eos_id]
    return row + [tokenizer.pad_id] * (context_length - len(row))


def frame_prompts(
    texts: list[str], tokens: list[list[int]], context_length: int, tokenizer: PromptTokenizer
) -> torch.Tensor:
    """Each prompt's ids framed into one row, (B, context_length).

    A prompt longer than the context keeps its first `context_length − 2` tokens and its eos
    (so the pooled state still sits on an eos), with a warning naming the prompt.
    """
    rows = []
    for text, ids in zip(texts, tokens, strict=True):
        if len(ids) > context_length - 2:
            warnings.warn(
                f"prompt of {len(ids) + 2} tokens truncated to {context_length}: {text!r}",
                stacklevel=3,  # the caller of `encode`
            )
            ids = ids[: context_length - 2]
        rows.append(frame(ids, context_length, tokenizer))
    return torch.tensor(rows, dtype=torch.long).view(len(rows), context_length)


class Tokenizer:
    """A trained `tokenizers.Tokenizer` that lower-cases, splits words and punctuation, and
    frames each prompt as `<bos> words <eos> <pad>…`."""

    max_chunks = 1

    def __init__(self, tokenizer: tokenizers.Tokenizer) -> None:
        problem = _special_token_problem(tokenizer)
        if problem:
            raise ValueError(problem)
        self._tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    @property
    def bos_id(self) -> int:
        return BOS_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def pad_id(self) -> int:
        return PAD_ID

    def tokenize(self, text: str) -> list[int]:
        """Word ids of `text` (lower-cased; unknown words → `<unk>`), without framing."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode(self, texts: list[str], context_length: int) -> torch.Tensor:
        """Prompts → ids (B, context_length): `<bos> tokens <eos>` then `<pad>`s.

        A prompt longer than the context keeps its first `context_length − 2` tokens and its
        `<eos>` (so the pooled state still sits on an eos), with a warning.
        """
        check_prompts(texts, context_length)
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        return frame_prompts(texts, [e.ids for e in encodings], context_length, self)

    def save(self, path: str | Path) -> None:
        """Write `tokenizer.json` (into `path` if it is a directory, else to `path` itself)."""
        path = Path(path)
        self._tokenizer.save(str(path / TOKENIZER_FILE if path.is_dir() else path))

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a file written by `save` (or a directory holding `tokenizer.json`)."""
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as error:  # the library raises bare Exception for I/O and JSON errors
            raise UsageError(f"cannot read tokenizer {path}: {error}") from None
        problem = _special_token_problem(tokenizer)
        if problem:
            raise UsageError(f"tokenizer {path}: {problem}")
        return cls(tokenizer)


def _special_token_problem(tokenizer: tokenizers.Tokenizer) -> str | None:
    """Why `tokenizer` breaks the special-token contract, or None."""
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != expected_id:
            return f"special token {token} must have id {expected_id}"
    if tokenizer.encode("").ids != [BOS_ID, EOS_ID]:
        return f"prompts must be framed as {BOS} … {EOS}"
    return None


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A word-level tokenizer over the `vocab_size − 4` most frequent words of `texts`."""
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens")
    tokenizer = tokenizers.Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # \w+ | [^\w\s]+: words, punctuation
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, BOS_ID), (EOS, EOS_ID)]
    )
    return Tokenizer(tokenizer)


def build_world_tokenizer(seed: int = 0, vocab_size: int | None = None) -> Tokenizer:
    """The Shapes World tokenizer, trained on the world's caption corpus (paraphrases included).

    `vocab_size` defaults to the `shapes` preset's text encoder, whose embedding it must fit.
    """
    if vocab_size is None:
        vocab_size = PRESETS["shapes"]().text_encoder.vocab_size
    return train_tokenizer(caption_corpus(WORLD_CORPUS_SIZE, seed), vocab_size)

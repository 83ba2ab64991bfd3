"""Prompt → token ids for latentdiff's own text encoders, built on the `tokenizers` library.

The Shapes World's caption vocabulary is closed and tiny (~60 words, WORLD.md), so the model is
word-level: one id per word plus `<unk>` for anything else. Sub-word models (BPE, WordPiece)
exist to cover an open vocabulary; here they would only split words the text encoder must
learn as wholes and spend embedding rows on fragments that never occur.

Every latentdiff tokenizer has the same special ids, so models can rely on them: `<pad>` = 0
(= `TextEncoderConfig.pad_token_id`), `<unk>` = 1, `<bos>` = 2, `<eos>` = 3. (The eos id is not
2 because transformers' `CLIPTextModel` treats `eos_token_id == 2` as its legacy "pool at the
highest id" convention.) Real SD checkpoints use transformers' CLIP tokenizer instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

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


class Tokenizer:
    """A trained `tokenizers.Tokenizer` that lower-cases, splits words and punctuation, and
    frames each prompt as `<bos> words <eos> <pad>…`."""

    def __init__(self, tokenizer: tokenizers.Tokenizer) -> None:
        problem = _special_token_problem(tokenizer)
        if problem:
            raise ValueError(problem)
        self._tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def encode(self, texts: list[str], context_length: int) -> torch.Tensor:
        """Prompts → ids (B, context_length): `<bos> tokens <eos>` then `<pad>`s.

        A prompt longer than the context keeps its first `context_length − 2` tokens and its
        `<eos>` (so the pooled state still sits on an eos), with a warning.
        """
        if isinstance(texts, str):
            raise TypeError("encode takes a list of prompts, not a single string")
        if context_length < 2:
            raise ValueError("context_length must leave room for <bos> and <eos>")
        rows = []
        for text, encoding in zip(texts, self._tokenizer.encode_batch(texts), strict=True):
            ids = encoding.ids
            if len(ids) > context_length:
                warnings.warn(
                    f"prompt of {len(ids)} tokens truncated to {context_length}: {text!r}",
                    stacklevel=2,
                )
                ids = ids[: context_length - 1] + [EOS_ID]
            rows.append(ids + [PAD_ID] * (context_length - len(ids)))
        return torch.tensor(rows, dtype=torch.long).view(len(rows), context_length)

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

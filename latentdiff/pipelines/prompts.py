"""Prompts as AUTOMATIC1111's web UI reads them: `(word:1.2)` emphasis, any length, `BREAK`.

SD's text encoder sees 77 tokens: bos, 75 tokens, eos. The web UI, whose prompts users share,
lifted both limits in ways many tools now follow:

- Emphasis. `(x)` multiplies the weight of x by 1.1, `[x]` divides it by 1.1, `(x:1.5)` sets
  the factor to 1.5; nesting multiplies; `\\(` `\\)` `\\[` `\\]` `\\\\` are literal characters.
  A bracket left open applies to the rest of the prompt, a closing one with no opener is text.
  Each token's hidden state is multiplied by its weight, then the chunk is rescaled so that its
  mean equals the unweighted mean — only the relative emphasis changes, not the overall scale
  the U-Net was trained on.
- Length. A prompt's tokens are cut into chunks of 75, each framed and encoded on its own, and
  the states are concatenated along the sequence (cross-attention takes any number of keys).
  `BREAK`, upper case, as a word, ends the current chunk early.

Two deliberate departures from the web UI: the mean is restored per chunk of each prompt rather
than over the whole batch, so a prompt's encoding does not depend on its batch-mates (image k
of a batch equals a lone run); and a chunk that fills up is cut at its 75th token, not moved
back to the last comma (the web UI's optional "comma backtrack").
"""

from __future__ import annotations

import re
import warnings

import torch
from torch import Tensor, nn

from latentdiff.models.token_layout import join_token_embeddings
from latentdiff.models.tokenizer import PromptTokenizer, check_prompts, frame

ROUND_FACTOR = 1.1
SQUARE_FACTOR = 1 / 1.1  # a multiplication, as in the web UI, so the floats are the same
BREAK = ("BREAK", -1.0)
"""The segment `parse_emphasis` returns for the keyword `BREAK` (the web UI's own marker)."""

_LEXEME = re.compile(
    r"""
      \\[()\[\]\\]                             # escaped bracket or backslash: literal
    | \\                                       # any other backslash: dropped, as the web UI does
    | [(\[]                                    # opening bracket
    | :\s*(?P<weight>[+-]?(?:\d+\.?\d*|\.\d+))\s*\)  # ":1.5)" closes a round bracket with a factor
    | [)\]]                                    # closing bracket
    | [^\\()\[\]:]+                            # plain text
    | :                                        # a colon that is not a factor
    """,
    re.VERBOSE,
)
_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*")


def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """Prompt → (text, weight) segments; adjacent segments of equal weight are merged.

    >>> parse_emphasis("a (red:1.5) circle [left]")
    [('a ', 1.0), ('red', 1.5), (' circle ', 1.0), ('left', 0.9090909090909091)]

    `BREAK` is returned as the segment `BREAK`. An empty prompt is `[("", 1.0)]`.
    """
    segments: list[list] = []  # [text, weight]; breaks are the BREAK tuple, never reweighted
    round_starts: list[int] = []  # index of the first segment inside each open bracket
    square_starts: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for segment in segments[start:]:
            if segment is not BREAK:
                segment[1] *= factor

    for match in _LEXEME.finditer(text):
        lexeme, weight = match.group(0), match.group("weight")
        if lexeme.startswith("\\"):
            segments.append([lexeme[1:], 1.0])
        elif lexeme == "(":
            round_starts.append(len(segments))
        elif lexeme == "[":
            square_starts.append(len(segments))
        elif weight is not None and round_starts:
            scale_from(round_starts.pop(), float(weight))
        elif lexeme == ")" and round_starts:
            scale_from(round_starts.pop(), ROUND_FACTOR)
        elif lexeme == "]" and square_starts:
            scale_from(square_starts.pop(), SQUARE_FACTOR)
        else:  # text, or a bracket or factor with nothing to close
            for i, part in enumerate(_BREAK_WORD.split(lexeme)):
                segments.extend([BREAK, [part, 1.0]] if i else [[part, 1.0]])
    for start in round_starts:  # brackets left open reach the end of the prompt
        scale_from(start, ROUND_FACTOR)
    for start in square_starts:
        scale_from(start, SQUARE_FACTOR)
    return _merge(segments) or [("", 1.0)]


def _merge(segments: list) -> list[tuple[str, float]]:
    """Join neighbours of equal weight, so that they are tokenized as one text."""
    merged: list[tuple[str, float]] = []
    for segment in segments:
        if segment is BREAK:
            merged.append(BREAK)
        elif merged and merged[-1] is not BREAK and merged[-1][1] == segment[1]:
            merged[-1] = (merged[-1][0] + segment[0], segment[1])
        else:
            merged.append((segment[0], segment[1]))
    return merged


Chunk = tuple[list[int], list[float]]
"""Token ids and their weights, at most `context_length − 2` of each."""


def prompt_chunks(tokenizer: PromptTokenizer, prompt: str, size: int) -> list[Chunk]:
    """A prompt's weighted tokens, cut into chunks of `size` tokens (and at each `BREAK`).

    A full chunk is closed only when another token comes, so a prompt of exactly `size` tokens
    is one chunk; a `BREAK` always closes the current chunk, even an empty one.
    """
    chunks: list[Chunk] = []
    ids: list[int] = []
    weights: list[float] = []
    for text, weight in parse_emphasis(prompt):
        if (text, weight) == BREAK:
            chunks.append((ids, weights))
            ids, weights = [], []
            continue
        for token in tokenizer.tokenize(text):
            if len(ids) == size:
                chunks.append((ids, weights))
                ids, weights = [], []
            ids.append(token)
            weights.append(weight)
    if ids or not chunks:
        chunks.append((ids, weights))
    return chunks


def encode_prompts(
    text_encoder: nn.Module,
    tokenizer: PromptTokenizer,
    prompts: list[str],
    context_length: int,
    *,
    max_chunks: int | None = None,
    token_embeddings: bool = False,
) -> Tensor:
    """Prompts → the U-Net's context, (B, n·context_length, D), n = the most chunks of any prompt.

    Prompts with fewer chunks are completed with chunks of the empty prompt, so that a batch
    (prompt and negative prompt together, say) stacks. Without emphasis, a prompt that fits in
    one chunk gives exactly `text_encoder(tokenizer.encode(prompts, context_length))`: the same
    ids, and no reweighting. `max_chunks` caps n; tokens beyond it are dropped with a warning.
    All chunks of all prompts go through the encoder in one batch, without gradients.
    `token_embeddings` joins the token input embeddings to the (emphasised) states, as a U-Net
    with a token layout bias takes them: (B, n·context_length, 2D).
    """
    check_prompts(prompts, context_length)
    if context_length < 3:
        raise ValueError("context_length must leave room for <bos>, a token and <eos>")
    if max_chunks is not None and max_chunks < 1:
        raise ValueError("max_chunks must be at least 1")
    size, chunked = context_length - 2, []
    for prompt in prompts:  # a loop, not a comprehension: the warning's stacklevel counts frames
        chunked.append(_capped(prompt_chunks(tokenizer, prompt, size), prompt, max_chunks))
    n = max((len(chunks) for chunks in chunked), default=1)
    empty: Chunk = ([], [])
    rows = [chunk for chunks in chunked for chunk in chunks + [empty] * (n - len(chunks))]

    device = next(text_encoder.parameters()).device
    framed = [frame(chunk_ids, context_length, tokenizer) for chunk_ids, _ in rows]
    ids = torch.tensor(framed, dtype=torch.long)
    weights = torch.tensor([[1.0, *w] + [1.0] * (context_length - 1 - len(w)) for _, w in rows])
    with torch.no_grad():
        states = text_encoder(ids.view(len(rows), context_length).to(device))  # (B·n, L, D)
        if (weights != 1).any():
            states = emphasize(states, weights.view(len(rows), context_length).to(device))
        if token_embeddings:
            token_embeds = text_encoder.token_embedding(ids.to(device))
            states = join_token_embeddings(states, token_embeds)
    return states.reshape(len(prompts), n * context_length, states.shape[-1])


def emphasize(states: Tensor, weights: Tensor) -> Tensor:
    """Each token's state times its weight, then each chunk rescaled to its former mean.

    states (N, L, D), weights (N, L). Statistics in float32, whatever the encoder's dtype.
    """
    x = states.float()
    weighted = x * weights[..., None]
    ratio = x.mean(dim=(1, 2), keepdim=True) / weighted.mean(dim=(1, 2), keepdim=True)
    return (weighted * ratio).to(states.dtype)


def _capped(chunks: list[Chunk], prompt: str, max_chunks: int | None) -> list[Chunk]:
    if max_chunks is None or len(chunks) <= max_chunks:
        return chunks
    tokens = sum(len(ids) for ids, _ in chunks)
    kept = sum(len(ids) for ids, _ in chunks[:max_chunks])
    warnings.warn(
        f"prompt of {tokens} tokens truncated to {kept} ({max_chunks} chunk(s)): {prompt!r}",
        stacklevel=3,  # the caller of `encode_prompts`
    )
    return chunks[:max_chunks]

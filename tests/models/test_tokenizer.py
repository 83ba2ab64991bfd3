import itertools
import json
import warnings

import pytest
import torch

from latentdiff.config import PRESETS
from latentdiff.errors import UsageError
from latentdiff.models.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    PromptTokenizer,
    Tokenizer,
    build_world_tokenizer,
    frame,
    train_tokenizer,
)
from latentdiff.world import palette

CAPTIONS = [
    "a red circle on the left",
    "two blue squares",
    "a small yellow triangle above a green circle",
    "an orange square on a gray background",
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_tokenizer(CAPTIONS, vocab_size=32)


@pytest.fixture(scope="module")
def world_tokenizer() -> Tokenizer:
    return build_world_tokenizer(seed=0)


def word_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    ids = tokenizer.encode([text], context_length=32)[0].tolist()
    return ids[1 : ids.index(EOS_ID)]


def test_special_tokens_come_first_and_words_follow(tokenizer):
    words = {word for caption in CAPTIONS for word in caption.split()}
    assert tokenizer.vocab_size == 4 + len(words)
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert PAD_ID == PRESETS["shapes"]().text_encoder.pad_token_id


def test_encode_frames_pads_and_lowercases(tokenizer):
    ids = tokenizer.encode(["A Red CIRCLE", ""], context_length=8)
    red_circle = word_ids(tokenizer, "a red circle")
    assert ids.dtype == torch.long and ids.shape == (2, 8)
    assert ids[0].tolist() == [BOS_ID, *red_circle, EOS_ID, PAD_ID, PAD_ID, PAD_ID]
    assert ids[1].tolist() == [BOS_ID, EOS_ID] + [PAD_ID] * 6
    assert min(red_circle) > EOS_ID


def test_punctuation_is_split_off_and_unknown_words_are_unk(tokenizer):
    assert word_ids(tokenizer, "a red circle, a zebra!") == [
        *word_ids(tokenizer, "a red circle"),
        UNK_ID,
        *word_ids(tokenizer, "a"),
        UNK_ID,
        UNK_ID,
    ]


def test_truncation_keeps_eos_last_and_warns(tokenizer):
    long_prompt = "a small yellow triangle above a green circle"  # 8 words
    with pytest.warns(UserWarning, match="truncated to 6") as record:
        ids = tokenizer.encode([long_prompt, "a red circle"], context_length=6)
    assert record[0].filename == __file__  # the warning points at the caller
    assert ids[0].tolist() == [BOS_ID, *word_ids(tokenizer, long_prompt)[:4], EOS_ID]
    assert ids[1].tolist()[-2:] == [EOS_ID, PAD_ID]


def test_exact_fit_does_not_warn(tokenizer):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids = tokenizer.encode(["a red circle"], context_length=5)
    assert ids[0, -1].item() == EOS_ID


def test_a_single_string_is_refused(tokenizer):
    with pytest.raises(TypeError, match="list"):
        tokenizer.encode("a red circle", context_length=8)


def test_save_load_round_trip(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "tokenizer.json")
    for path in (tmp_path / "tokenizer.json", tmp_path):
        loaded = Tokenizer.load(path)
        assert loaded.vocab_size == tokenizer.vocab_size
        prompts = [*CAPTIONS, "A blue ZEBRA."]
        assert torch.equal(loaded.encode(prompts, 12), tokenizer.encode(prompts, 12))


def test_missing_corrupt_or_foreign_files_are_usage_errors(tokenizer, tmp_path):
    with pytest.raises(UsageError, match="nothing.json"):
        Tokenizer.load(tmp_path / "nothing.json")
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    with pytest.raises(UsageError, match="corrupt.json"):
        Tokenizer.load(corrupt)
    tokenizer.save(tmp_path / "tokenizer.json")
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    data["post_processor"] = None  # no <bos> … <eos> framing
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(data))
    with pytest.raises(UsageError, match="foreign.json.*<bos>"):
        Tokenizer.load(foreign)


def canonical_captions() -> list[str]:
    """Every canonical caption of WORLD.md (images and videos), background phrase or not."""

    def article(phrase: str) -> str:
        return ("an " if phrase[0] in "aeiou" else "a ") + phrase

    colors, shapes = list(palette.OBJECT_COLORS), palette.SHAPES
    objects = [f"{c} {s}" for c, s in itertools.product(colors, shapes)]
    captions = [
        article(f"{size}{obj}") + tail
        for size, obj, tail in itertools.product(
            ["", "small ", "large "], objects, ["", *(f" {p}" for p in palette.POSITIONS)]
        )
    ]
    counts = list(palette.COUNT_WORDS.values())
    captions += [f"{n} {c} {s}s" for n, c, s in itertools.product(counts, colors, shapes)]
    captions += [
        f"{article(a)} {relation} {article(b)}"
        for a, b, relation in itertools.product(objects, objects, palette.RELATIONS)
        if a != b
    ]
    captions += [f"{article(o)} moving {d}" for o in objects for d in palette.MOTION_DIRECTIONS]
    backgrounds = [f" on a {b} background" for b in palette.BACKGROUND_COLORS]
    return captions + [c + b for c in captions for b in backgrounds]


def test_world_tokenizer_covers_every_canonical_caption(world_tokenizer):
    captions = canonical_captions()
    assert len(set(captions)) == 4 * (3 * 18 * 6 + 3 * 18 + 18 * 17 * 4 + 18 * 4)
    ids = world_tokenizer.encode(captions, context_length=24)  # the shapes preset's context
    assert not (ids == UNK_ID).any()
    assert (ids[:, -1] == PAD_ID).all()  # the longest caption leaves room to spare
    assert world_tokenizer.vocab_size <= PRESETS["shapes"]().text_encoder.vocab_size


def test_world_tokenizer_is_deterministic(world_tokenizer, tmp_path):
    world_tokenizer.save(tmp_path)
    again = build_world_tokenizer(seed=0)
    again.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == (tmp_path / "tokenizer.json").read_text()


def test_prompt_tokenizer_members(tokenizer):
    assert isinstance(tokenizer, PromptTokenizer)
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (BOS_ID, EOS_ID, PAD_ID)
    long_prompt = " ".join(CAPTIONS)  # 24 words, more than the context below
    tokens = tokenizer.tokenize(long_prompt)
    assert len(tokens) == 24 and min(tokens) > EOS_ID  # bare ids, never truncated
    assert tokenizer.tokenize("A red, ZEBRA") == [*word_ids(tokenizer, "a red"), UNK_ID, UNK_ID]
    assert tokenizer.tokenize("") == []
    with pytest.warns(UserWarning):
        framed = tokenizer.encode([long_prompt], context_length=10)[0].tolist()
    assert framed == [BOS_ID, *tokens[:8], EOS_ID]


def test_frame_pads_with_the_tokenizers_pad_id(tokenizer):
    assert frame([7, 8], 6, tokenizer) == [BOS_ID, 7, 8, EOS_ID, PAD_ID, PAD_ID]
    assert frame([], 2, tokenizer) == [BOS_ID, EOS_ID]
    with pytest.raises(ValueError, match="3 tokens do not fit a context of 4"):
        frame([7, 8, 9], 4, tokenizer)

import json
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from transformers import CLIPTextConfig, CLIPTextModel

from latentdiff.checkpoints.transformers_layout import (
    text_encoder_to_transformers,
    transformers_clip_text_config,
)
from latentdiff.config import TextEncoderConfig
from latentdiff.errors import UsageError
from latentdiff.models.clip_tokenizer import CLIPTokenizer
from latentdiff.models.text_encoder import TextEncoder
from latentdiff.models.tokenizer import PromptTokenizer
from latentdiff.pipelines.prompts import encode_prompts

EOS = "<|endoftext|>"
BOS_ID, EOS_ID = 512, 513  # conftest's vocabulary: after 256 bytes + 256 word-final bytes
SD1_PAD, SD2_PAD = EOS, "!"

LONG = " ".join(f"word{i}" for i in range(40))  # 200+ byte-level tokens
PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "",
    "  Mixed CASE,   punctuation!!  and\ttabs ",
    "café naïve — 東京 🙂",
    "don't stop: it's <|endoftext|> here",
    LONG,
]


def reference(folder: Path, pad_token: str) -> transformers.CLIPTokenizer:
    return transformers.CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=pad_token
    )


@pytest.fixture(scope="module", params=[SD1_PAD, SD2_PAD], ids=["sd1", "sd2"])
def folder(request, tmp_path_factory, sd_tokenizer_folder) -> Path:
    """conftest's byte-level CLIP tokenizer folder, padded as SD 1.x or as SD 2.x."""
    return sd_tokenizer_folder(tmp_path_factory.mktemp("t") / "tokenizer", request.param)


def test_special_ids_follow_the_folder(folder):
    tokenizer = CLIPTokenizer.load(folder)
    sd2 = json.loads((folder / "tokenizer_config.json").read_text())["pad_token"] == "!"
    assert (tokenizer.bos_id, tokenizer.eos_id) == (BOS_ID, EOS_ID)
    assert tokenizer.pad_id == (0 if sd2 else EOS_ID)
    assert tokenizer.vocab_size == 514
    assert isinstance(tokenizer, PromptTokenizer)


@pytest.mark.parametrize("context_length", [77, 12])
def test_ids_equal_transformers_clip_tokenizer(folder, context_length):
    """diffusers' pipeline feeds `tokenizer(prompt, padding="max_length", max_length=77,
    truncation=True).input_ids` to the text encoder; ours must be the same ids."""
    pad = json.loads((folder / "tokenizer_config.json").read_text())["pad_token"]
    tokenizer = CLIPTokenizer.load(folder)
    with pytest.warns(UserWarning, match="truncated"):
        ours = tokenizer.encode(PROMPTS, context_length)
    for theirs in (reference(folder, pad), transformers.CLIPTokenizer.from_pretrained(folder)):
        expected = theirs(
            PROMPTS, padding="max_length", max_length=context_length, truncation=True
        ).input_ids
        assert ours.tolist() == expected
    assert ours.shape == (len(PROMPTS), context_length)
    assert ours[1, :3].tolist() == [BOS_ID, EOS_ID, tokenizer.pad_id]


def test_tokenize_is_the_bare_ids_and_never_truncates(folder):
    tokenizer = CLIPTokenizer.load(folder)
    theirs = transformers.CLIPTokenizer.from_pretrained(folder)
    for prompt in PROMPTS:
        assert tokenizer.tokenize(prompt) == theirs(prompt, add_special_tokens=False).input_ids
    assert tokenizer.tokenize("a cat") == [320, 66, 64, 339]  # "a</w>", "c", "a", "t</w>"
    assert len(tokenizer.tokenize(LONG)) == 40 * 5 + 30  # word, digit, digit: no merges
    assert tokenizer.tokenize("A  CAT") == tokenizer.tokenize("a cat")


def test_long_prompt_warns_names_it_and_keeps_eos(folder):
    tokenizer = CLIPTokenizer.load(folder)
    with pytest.warns(UserWarning, match="232 tokens truncated to 77: 'word0 word1"):
        ids = tokenizer.encode([LONG], 77)
    assert ids[0].tolist() == [BOS_ID, *tokenizer.tokenize(LONG)[:75], EOS_ID]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenizer.encode(["a" * 75], 77)  # 75 tokens + bos + eos fit exactly


def test_a_folder_saved_by_transformers_loads_too(folder, tmp_path):
    """transformers 5 writes only tokenizer.json + tokenizer_config.json."""
    CLIPTokenizer.load(folder).transformers_tokenizer.save_pretrained(tmp_path)
    assert not (tmp_path / "vocab.json").exists()
    saved, original = CLIPTokenizer.load(tmp_path), CLIPTokenizer.load(folder)
    assert saved.pad_id == original.pad_id
    with pytest.warns(UserWarning):
        assert torch.equal(saved.encode(PROMPTS, 77), original.encode(PROMPTS, 77))


def test_missing_or_broken_folders_are_usage_errors(folder, tmp_path):
    message = r"no CLIP tokenizer at .*nowhere: needs vocab.json and merges.txt"
    with pytest.raises(UsageError, match=message):
        CLIPTokenizer.load(tmp_path / "nowhere")
    half = tmp_path / "half"
    half.mkdir()
    (half / "vocab.json").write_text((folder / "vocab.json").read_text())
    with pytest.raises(UsageError, match="no CLIP tokenizer at .*half"):
        CLIPTokenizer.load(half)
    (half / "merges.txt").write_text("#version: 0.2\n")
    (half / "vocab.json").write_text('{"a": 0,')
    with pytest.raises(UsageError, match=r"cannot read CLIP tokenizer at .*half: ") as error:
        CLIPTokenizer.load(half)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("output_layer", ["last", "penultimate"])
def test_prompts_encode_as_diffusers_does(folder, output_layer):
    """Tokenizer and text encoder together give transformers' CLIPTextModel states on
    transformers' ids: SD 1.x's last layer, SD 2.x's penultimate one."""
    config = TextEncoderConfig(
        vocab_size=514, context_length=77, width=32, layers=3, heads=4, output_layer=output_layer
    )
    torch.manual_seed(0)
    text_encoder = TextEncoder(config).eval()
    kwargs = transformers_clip_text_config(config, bos_token_id=BOS_ID, eos_token_id=EOS_ID)
    clip = CLIPTextModel(CLIPTextConfig(**kwargs)).eval()
    clip.load_state_dict(text_encoder_to_transformers(text_encoder.state_dict(), prefix=""))
    tokenizer = CLIPTokenizer.load(folder)
    theirs = transformers.CLIPTokenizer.from_pretrained(folder)
    prompts = PROMPTS[:4]  # each fits one chunk

    context = encode_prompts(text_encoder, tokenizer, prompts, 77)
    ids = theirs(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        output = clip(input_ids=ids.input_ids, output_hidden_states=True)
        expected = (
            output.last_hidden_state
            if output_layer == "last"
            else clip.final_layer_norm(output.hidden_states[-2])
        )
        assert torch.equal(context, text_encoder(ids.input_ids))
    assert context.shape == (4, 77, 32)
    torch.testing.assert_close(context, expected)

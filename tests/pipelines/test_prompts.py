import warnings

import pytest
import torch

from latentdiff.config import TextEncoderConfig
from latentdiff.models.text_encoder import TextEncoder
from latentdiff.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer, train_tokenizer
from latentdiff.pipelines.prompts import BREAK, encode_prompts, parse_emphasis, prompt_chunks

L = 77  # SD's context: chunks of 75 tokens
WORDS = "a red blue green circle square triangle on the left right above below".split()
UP, DOWN = 1.1, 1 / 1.1


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_tokenizer([" ".join(WORDS)], vocab_size=32)


@pytest.fixture(scope="module")
def text_encoder() -> TextEncoder:
    torch.manual_seed(0)
    config = TextEncoderConfig(vocab_size=32, context_length=L, width=16, layers=2, heads=2)
    model = TextEncoder(config).eval()
    with torch.no_grad():  # random LayerNorms too, so that states are far from zero-mean
        for parameter in model.parameters():
            parameter.normal_(0, 0.3)
    return model


def words(n: int) -> str:
    """A prompt of exactly n tokens for the word-level tokenizer."""
    return " ".join(WORDS[i % len(WORDS)] for i in range(n))


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a red circle", [("a red circle", 1.0)]),
        ("", [("", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", UP), (" word", 1.0)]),
        ("((nested)) [less] [[much less]]", [("nested", UP * UP), (" ", 1.0), ("less", DOWN),
                                             (" ", 1.0), ("much less", DOWN * DOWN)]),
        ("(red:1.5) circle", [("red", 1.5), (" circle", 1.0)]),
        ("a (red: 0.5 ) circle", [("a ", 1.0), ("red", 0.5), (" circle", 1.0)]),
        ("((red:0.5))", [("red", 0.5 * UP)]),
        ("(x:-1)", [("x", -1.0)]),
        ("[red:1.5]", [("red:1.5", DOWN)]),  # a factor only closes round brackets
        ("ratio 16:9, (a:b)", [("ratio 16:9, ", 1.0), ("a:b", UP)]),
        (r"\(literal\] \\ back\slash", [("(literal] \\ backslash", 1.0)]),
        (r"anime_\(character\)", [("anime_(character)", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", UP)]),
        ("(unbalanced", [("unbalanced", UP)]),
        ("[unbalanced (x", [("unbalanced ", DOWN), ("x", UP * DOWN)]),
        ("stray) and] closers", [("stray) and] closers", 1.0)]),
        ("(red:1.5 circle", [("red:1.5 circle", UP)]),
        ("a cat BREAK a dog", [("a cat", 1.0), BREAK, ("a dog", 1.0)]),
        ("BREAK x", [("", 1.0), BREAK, ("x", 1.0)]),
        ("(a BREAK b)", [("a", UP), BREAK, ("b", UP)]),
        ("BREAKFAST break", [("BREAKFAST break", 1.0)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [("a ", 1.0), ("house", 1.3 * UP * UP), (" ", UP), ("on", 1.0), (" a ", UP),
             ("hill", 0.55), (", sun, ", UP), ("sky", UP**4), (".", UP)],
        ),
    ],
)  # fmt: skip
def test_parse_emphasis(prompt, expected):
    parsed = parse_emphasis(prompt)
    assert [text for text, _ in parsed] == [text for text, _ in expected]
    assert [weight for _, weight in parsed] == pytest.approx([weight for _, weight in expected])


def test_equal_weights_merge_exactly(tokenizer):
    """[(x)] is weight 1 again (as floats, too), so it joins its neighbours."""
    assert parse_emphasis("a [(red)] circle") == [("a red circle", 1.0)]


def test_each_token_gets_its_segments_weight(tokenizer):
    ids = tokenizer.encode(["a red circle on the left"], L)[0, 1:7].tolist()
    [(chunk_ids, weights)] = prompt_chunks(tokenizer, "a (red circle:1.5) on [the] left", 75)
    assert chunk_ids == ids
    assert weights == pytest.approx([1.0, 1.5, 1.5, 1.0, DOWN, 1.0])


def test_chunks_are_75_tokens_and_break_ends_one(tokenizer):
    lengths = {
        words(75): [75],  # exactly full: one chunk
        words(76): [75, 1],
        words(100): [75, 25],
        "": [0],
        "a red BREAK circle": [2, 1],
        "BREAK a": [0, 1],  # the web UI's empty first chunk
        "a BREAK": [1],
        "a BREAK BREAK b": [1, 0, 1],
        f"{words(75)} BREAK a": [75, 1],  # a full chunk is not closed twice
    }
    for prompt, expected in lengths.items():
        chunks = prompt_chunks(tokenizer, prompt, 75)
        assert [len(ids) for ids, _ in chunks] == expected, prompt
        assert all(len(ids) == len(weights) for ids, weights in chunks)
    chunks = prompt_chunks(tokenizer, words(100), 75)
    assert chunks[0][0] + chunks[1][0] == tokenizer.tokenize(words(100))


def test_unweighted_prompts_equal_the_plain_encoder_bit_for_bit(text_encoder, tokenizer):
    prompts = ["a red circle", "", words(75), "Blue, square: on the left!"]
    context = encode_prompts(text_encoder, tokenizer, prompts, L)
    with torch.no_grad():
        expected = text_encoder(tokenizer.encode(prompts, L))
    assert context.shape == (4, L, 16)
    assert torch.equal(context, expected)


def test_a_100_token_prompt_is_two_chunks_and_short_ones_are_padded(text_encoder, tokenizer):
    long, short = words(100), "a red circle"
    context = encode_prompts(text_encoder, tokenizer, [long, short], L)
    assert context.shape == (2, 2 * L, 16)
    tokens = tokenizer.tokenize(long)
    with torch.no_grad():
        first = text_encoder(torch.tensor([[BOS_ID, *tokens[:75], EOS_ID]]))
        rest = [BOS_ID, *tokens[75:], EOS_ID]
        second = text_encoder(torch.tensor([rest + [PAD_ID] * (L - len(rest))]))
        alone = text_encoder(tokenizer.encode([short, ""], L))
    torch.testing.assert_close(context[0], torch.cat([first[0], second[0]]))
    torch.testing.assert_close(context[1], torch.cat([alone[0], alone[1]]))  # then the empty prompt
    assert not torch.allclose(context[1, L:], context[1, :L])


def test_emphasis_scales_states_then_restores_each_chunks_mean(text_encoder, tokenizer):
    prompt = "a (red:1.5) [circle] (on the left:0.5)"
    context = encode_prompts(text_encoder, tokenizer, [prompt], L)
    with torch.no_grad():
        z = text_encoder(tokenizer.encode(["a red circle on the left"], L))[0]  # (L, D)
    weights = torch.ones(L)
    weights[2], weights[3], weights[4:7] = 1.5, 1 / 1.1, 0.5  # after bos and "a"
    weighted = z * weights[:, None]
    expected = weighted * (z.mean() / weighted.mean())
    torch.testing.assert_close(context[0], expected)
    torch.testing.assert_close(context[0].mean(), z.mean())
    ratio = (context[0] / z)[:, 0]
    torch.testing.assert_close(ratio[2] / ratio[1], torch.tensor(1.5))
    torch.testing.assert_close(ratio[5] / ratio[0], torch.tensor(0.5))


def test_token_embeddings_follow_the_emphasised_states_of_every_chunk(text_encoder, tokenizer):
    """For a U-Net with a token layout bias: [states | input embeddings], emphasis on the
    states only (the layout bias reads the embeddings as they are)."""
    prompts = [f"{words(80)} (red:1.5)", "a circle"]
    context = encode_prompts(text_encoder, tokenizer, prompts, L, token_embeddings=True)
    states = encode_prompts(text_encoder, tokenizer, prompts, L)
    assert context.shape == (2, 2 * L, 32)
    assert torch.equal(context[..., :16], states)
    tokens = tokenizer.tokenize(words(80))
    with torch.no_grad():
        ids = tokenizer.encode(["a circle"], L)
        torch.testing.assert_close(context[1, :L, 16:], text_encoder.token_embedding(ids)[0])
        first = torch.tensor([BOS_ID, *tokens[:75], EOS_ID])
        torch.testing.assert_close(context[0, :L, 16:], text_encoder.token_embedding(first))


def test_the_mean_is_restored_per_chunk_and_per_prompt(text_encoder, tokenizer):
    """An unweighted chunk stays the plain encoding, beside a weighted chunk or a weighted
    prompt of the same batch."""
    plain, weighted = words(75), "(a red:2) circle"
    context = encode_prompts(text_encoder, tokenizer, [f"{plain} {weighted}", plain], L)
    with torch.no_grad():
        expected = text_encoder(tokenizer.encode([plain], L))[0]
    torch.testing.assert_close(context[0, :L], expected)
    torch.testing.assert_close(context[1, :L], expected)
    alone = encode_prompts(text_encoder, tokenizer, [weighted], L)
    torch.testing.assert_close(context[0, L:], alone[0])


def test_max_chunks_drops_the_rest_with_one_warning(text_encoder, tokenizer):
    long = words(100)
    message = r"100 tokens truncated to 75 \(1 chunk\(s\)\): 'a red"
    with pytest.warns(UserWarning, match=message) as record:
        context = encode_prompts(text_encoder, tokenizer, [long, "a"], L, max_chunks=1)
    assert len(record) == 1 and record[0].filename == __file__
    with pytest.warns(UserWarning, match="truncated"), torch.no_grad():
        truncated = text_encoder(tokenizer.encode([long, "a"], L))
    assert torch.equal(context, truncated)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        two = encode_prompts(text_encoder, tokenizer, [long], L, max_chunks=2)
    assert two.shape == (1, 2 * L, 16)


def test_bad_arguments(text_encoder, tokenizer):
    with pytest.raises(TypeError, match="list"):
        encode_prompts(text_encoder, tokenizer, "a red circle", L)
    with pytest.raises(ValueError, match="max_chunks"):
        encode_prompts(text_encoder, tokenizer, ["a"], L, max_chunks=0)
    with pytest.raises(ValueError, match="context_length"):
        encode_prompts(text_encoder, tokenizer, ["a"], 2)

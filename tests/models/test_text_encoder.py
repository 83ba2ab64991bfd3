import dataclasses

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from latentdiff.checkpoints.transformers_layout import (
    text_encoder_from_transformers,
    text_encoder_to_transformers,
    transformers_clip_text_config,
)
from latentdiff.config import TextEncoderConfig
from latentdiff.errors import UsageError
from latentdiff.models.text_encoder import TextEncoder
from latentdiff.models.tokenizer import BOS_ID, EOS_ID, PAD_ID

TINY = TextEncoderConfig(vocab_size=40, context_length=10, width=32, layers=3, heads=4)


def random_text_encoder(config: TextEncoderConfig) -> TextEncoder:
    """A text encoder whose LayerNorms and biases are random too, so no mapping error hides."""
    torch.manual_seed(0)
    model = TextEncoder(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    return model


def transformers_twin(model: TextEncoder, **tokens) -> CLIPTextModel:
    kwargs = transformers_clip_text_config(model.config, **tokens)
    reference = CLIPTextModel(CLIPTextConfig(**kwargs)).eval()
    reference.load_state_dict(text_encoder_to_transformers(model.state_dict(), prefix=""))
    return reference


def framed_ids(lengths: list[int], config: TextEncoderConfig, eos: int = EOS_ID) -> torch.Tensor:
    """`<bos> words <eos> <pad>…` rows with random word ids above the special tokens."""
    generator = torch.Generator().manual_seed(1)
    rows = []
    for n in lengths:
        words = torch.randint(4, config.vocab_size - 1, (n,), generator=generator).tolist()
        row = [BOS_ID, *words, eos]
        rows.append(row + [PAD_ID] * (config.context_length - len(row)))
    return torch.tensor(rows)


@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
def test_matches_transformers_clip_text_model(activation):
    model = random_text_encoder(dataclasses.replace(TINY, activation=activation))
    reference = transformers_twin(model)
    ids = framed_ids([0, 3, 8], model.config)
    with torch.no_grad():
        expected = reference(input_ids=ids)
        torch.testing.assert_close(model(ids), expected.last_hidden_state)
        torch.testing.assert_close(model.pooled(ids), expected.pooler_output)


def test_pooled_matches_transformers_legacy_argmax_convention():
    """With eos_token_id=2 transformers pools at the highest id, which is eos in OpenAI's vocab."""
    model = random_text_encoder(TINY)
    reference = transformers_twin(model, eos_token_id=2)
    highest = TINY.vocab_size - 1
    ids = framed_ids([1, 5, 8], TINY, eos=highest)
    with torch.no_grad():
        expected = reference(input_ids=ids).pooler_output
        torch.testing.assert_close(model.pooled(ids, eos_token_id=highest), expected)


def test_penultimate_is_final_layer_norm_of_hidden_states_minus_two():
    model = random_text_encoder(dataclasses.replace(TINY, output_layer="penultimate"))
    reference = transformers_twin(model)
    ids = framed_ids([2, 6], TINY)
    with torch.no_grad():
        hidden_states = reference(input_ids=ids, output_hidden_states=True).hidden_states
        expected = reference.final_layer_norm(hidden_states[-2])
        torch.testing.assert_close(model(ids), expected)
        assert not torch.allclose(model(ids), reference(input_ids=ids).last_hidden_state)


def test_key_mapping_round_trips_with_and_without_prefix():
    model = random_text_encoder(TINY)
    state = model.state_dict()
    reference_keys = transformers_twin(model).state_dict().keys()
    for prefix in ("text_model.", ""):
        theirs = text_encoder_to_transformers(state, prefix=prefix)
        assert set(theirs) == {prefix + key for key in reference_keys}
        back = text_encoder_from_transformers(theirs)
        assert back.keys() == state.keys()
        for key in state:
            torch.testing.assert_close(back[key], state[key], rtol=0, atol=0)


def test_standard_layout_is_prefixed_and_old_position_ids_are_dropped():
    state = random_text_encoder(TINY).state_dict()
    theirs = text_encoder_to_transformers(state)
    assert all(key.startswith("text_model.") for key in theirs)
    assert "text_model.encoder.layers.2.self_attn.k_proj.weight" in theirs
    theirs["text_model.embeddings.position_ids"] = torch.arange(TINY.context_length)[None]
    assert text_encoder_from_transformers(theirs).keys() == state.keys()


def test_foreign_or_incomplete_weights_are_usage_errors():
    theirs = text_encoder_to_transformers(random_text_encoder(TINY).state_dict())
    with pytest.raises(UsageError, match="vision_model.post_layernorm.weight"):
        text_encoder_from_transformers(
            theirs | {"vision_model.post_layernorm.weight": torch.ones(1)}
        )
    del theirs["text_model.encoder.layers.1.self_attn.v_proj.bias"]
    with pytest.raises(UsageError, match="layers.1.self_attn.v_proj.bias"):
        text_encoder_from_transformers(theirs)


def test_causal_mask_later_tokens_do_not_change_earlier_states():
    model = random_text_encoder(TINY)
    ids = framed_ids([6], TINY)
    changed = ids.clone()
    changed[0, 5:] = 7
    with torch.no_grad():
        before, after = model(ids), model(changed)
    torch.testing.assert_close(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_shorter_inputs_use_the_first_positions_and_longer_ones_are_refused():
    model = random_text_encoder(TINY)
    ids = framed_ids([4], TINY)
    with torch.no_grad():
        torch.testing.assert_close(model(ids[:, :6]), model(ids)[:, :6])
    with pytest.raises(ValueError, match="context length"):
        model(torch.zeros(1, TINY.context_length + 1, dtype=torch.long))


@pytest.mark.parametrize(
    "preset, expected",
    [("sd15", 123_060_480), ("sd21", None)],  # CLIP ViT-L/14's text model: 123.06 M
)
def test_parameter_count_of_full_size_text_encoders(preset: str, expected: int | None) -> None:
    from latentdiff.config import PRESETS

    config = PRESETS[preset]().text_encoder
    with torch.device("meta"):
        ours = sum(p.numel() for p in TextEncoder(config).parameters())
        reference = CLIPTextModel(CLIPTextConfig(**transformers_clip_text_config(config)))
    assert ours == sum(p.numel() for p in reference.parameters())
    assert expected is None or ours == expected

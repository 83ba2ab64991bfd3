import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from latentdiff.config import (
    PRESETS,
    CLIPConfig,
    ImageEncoderConfig,
    TextEncoderConfig,
    default_clip_config,
    from_dict,
)
from latentdiff.models.clip import CLIP, clip_loss, clip_score
from latentdiff.models.text_encoder import TextEncoder
from latentdiff.models.tokenizer import train_tokenizer

CAPTIONS = [
    "a red circle",
    "a blue square",
    "a green triangle",
    "a yellow circle on the left",
    "a purple square at the top",
    "an orange triangle on the right",
    "two red squares",
    "a blue circle above a green triangle",
]
TINY = CLIPConfig(
    text=TextEncoderConfig(vocab_size=32, context_length=12, width=32, layers=2, heads=2),
    image=ImageEncoderConfig(image_size=16, patch_size=4, width=32, layers=2, heads=2),
    embed_dim=16,
)


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    tokenizer = train_tokenizer(CAPTIONS, vocab_size=TINY.text.vocab_size)
    return tokenizer.encode(CAPTIONS, TINY.text.context_length)


def tiny_clip() -> CLIP:
    torch.manual_seed(0)
    return CLIP(TINY)


def images(n: int, size: int = 16) -> torch.Tensor:
    """n distinct images in [-1, 1]: a bright block on a dark canvas, at n places and colours."""
    x = -torch.ones(n, 3, size, size)
    for k in range(n):
        row, col = divmod(k, 4)
        x[k, k % 3, row * 8 : row * 8 + 8, col * 4 : col * 4 + 4] = 1
    return x


def test_default_config_text_tower_is_the_shapes_text_encoder():
    config = default_clip_config()
    assert config.text == PRESETS["shapes"]().text_encoder
    assert (config.image.image_size, config.image.patch_size, config.image.num_patches) == (
        64,
        8,
        64,
    )
    model = CLIP(config)
    assert isinstance(model.text_encoder, TextEncoder)
    TextEncoder(config.text).load_state_dict(model.text_encoder.state_dict())
    assert model.encode_image(torch.zeros(2, 3, 64, 64)).shape == (2, config.embed_dim)


def test_config_round_trips_through_json_dict():
    assert from_dict(CLIPConfig, dataclasses.asdict(TINY)) == TINY


def test_config_checks():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ImageEncoderConfig(image_size=60, patch_size=8)
    with pytest.raises(ValueError, match="heads"):
        ImageEncoderConfig(width=100, heads=3)
    with pytest.raises(ValueError, match="embed_dim"):
        CLIPConfig(embed_dim=0)


def test_embeddings_are_unit_norm_and_logits_are_scaled_cosines(ids):
    model = tiny_clip()
    text, image = model.encode_text(ids), model.encode_image(images(8))
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(8))
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(8))
    torch.testing.assert_close(model(images(8), ids), (1 / 0.07) * image @ text.T)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    assert model(images(8), ids).abs().max() <= 100.0 + 1e-4  # temperature clamped at 100


def test_image_tower_refuses_other_sizes():
    with pytest.raises(ValueError, match="16×16"):
        tiny_clip().encode_image(torch.zeros(1, 3, 32, 32))


def test_loss_is_smallest_for_matched_pairs_and_gradients_reach_both_towers(ids):
    matched = 20 * torch.eye(8)
    assert clip_loss(matched) < 1e-6
    assert clip_loss(matched[torch.randperm(8)]) > clip_loss(matched) + 10
    model = tiny_clip()
    clip_loss(model(images(8), ids)).backward()
    for name in ("text_encoder.token_embedding.weight", "image_encoder.patch_embedding.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0
    assert model.logit_scale.grad.abs() > 0


def test_repeated_captions_give_the_multi_positive_loss(ids):
    """Identical captions → standard CE equals CE with targets spread over all matches."""
    repeated = ids[[0, 1, 0, 2, 1, 0]]
    model = tiny_clip()
    logits = model(images(6), repeated)
    same = (repeated[:, None] == repeated[None]).all(dim=-1).float()
    targets = same / same.sum(dim=1, keepdim=True)
    multi_positive = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    torch.testing.assert_close(clip_loss(logits), multi_positive)


def test_clip_score_is_in_range_and_resizes(ids):
    model = tiny_clip()
    score = clip_score(model, images(8), ids)
    assert score.shape == (8,) and ((score >= 0) & (score <= 100)).all()
    cosine = (model.encode_image(images(8)) * model.encode_text(ids)).sum(-1)
    torch.testing.assert_close(score, 100 * cosine.clamp(min=0))
    upscaled = images(8).repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)
    torch.testing.assert_close(clip_score(model, upscaled, ids), score)


def test_thirty_steps_overfit_eight_pairs(ids):
    model = tiny_clip()
    x = images(8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    losses = []
    for _ in range(30):
        loss = clip_loss(model(x, ids))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        similarity = model.encode_image(x) @ model.encode_text(ids).T
    matched = similarity.diagonal()
    unmatched = similarity[~torch.eye(8, dtype=torch.bool)].view(8, 7)
    assert losses[-1] < 0.5 * losses[0]
    assert matched.mean() > unmatched.mean() + 0.3
    assert (matched > unmatched.mean(dim=1)).all()

import json
import math
import re

import pytest
import torch
from torch.testing import assert_close

from latentdiff.config import CLIPConfig, ImageEncoderConfig, TextEncoderConfig, TrainConfig
from latentdiff.errors import UsageError
from latentdiff.models.clip import CLIP
from latentdiff.models.tokenizer import BOS_ID, TOKENIZER_FILE, build_world_tokenizer
from latentdiff.training.clip import (
    CLIP_CONFIG_FILE,
    CLIP_WEIGHTS_FILE,
    RenderedPairs,
    clip_objective,
    evaluate_clip,
    load_clip,
    retrieval_accuracy,
    save_clip,
)
from latentdiff.training.loss_log import LossLog
from latentdiff.training.trainer import LOSS_LOG_FILE, Trainer
from latentdiff.world.captions import SHAPE_WORDS
from latentdiff.world.palette import HELD_OUT_PAIRS, OBJECT_COLORS, SHAPES

SIZE = 16
TINY = CLIPConfig(
    text=TextEncoderConfig(vocab_size=80, context_length=24, width=32, layers=1, heads=2),
    image=ImageEncoderConfig(image_size=SIZE, patch_size=4, width=32, layers=1, heads=2),
    embed_dim=16,
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_world_tokenizer()


def pairs_for(tokenizer, batch_size: int = 8, seed: int = 0) -> RenderedPairs:
    return RenderedPairs(batch_size, SIZE, seed, tokenizer, TINY.text.context_length)


def tiny_clip() -> CLIP:
    torch.manual_seed(0)
    return CLIP(TINY)


def test_batches_are_deterministic_and_fresh_per_step_and_shard(tokenizer):
    pairs = pairs_for(tokenizer)
    images, ids = pairs(3, 0, 1)
    assert images.shape == (8, 3, SIZE, SIZE) and ids.shape == (8, TINY.text.context_length)
    assert images.min() >= -1 and images.max() <= 1 and (ids[:, 0] == BOS_ID).all()
    _, scenes = pairs.render(3, 0, 1)
    assert_close(ids, tokenizer.encode([s.caption for s in scenes], TINY.text.context_length))
    again_images, again_ids = pairs(3, 0, 1)
    assert_close(again_images, images)
    assert_close(again_ids, ids)
    assert not torch.equal(pairs(4, 0, 1)[0], images)
    assert not torch.equal(pairs_for(tokenizer, seed=1)(3, 0, 1)[0], images)
    half_0, half_1 = pairs(3, 0, 2)[0], pairs(3, 1, 2)[0]
    assert half_0.shape[0] == half_1.shape[0] == 4
    assert not torch.equal(half_0, half_1)


def test_training_captions_never_name_a_held_out_pair(tokenizer):
    pairs = pairs_for(tokenizer, batch_size=100)
    scenes = [scene for step in range(20) for scene in pairs.render(step, 0, 1)[1]]
    assert len(scenes) == 2000
    held_out_phrases = "|".join(
        f"{color} {word}" for color, shape in HELD_OUT_PAIRS for word in SHAPE_WORDS[shape]
    )
    pattern = re.compile(rf"\b({held_out_phrases})")  # plurals too: "orange balls"
    captions = [scene.caption for scene in scenes]
    assert not [c for c in captions if pattern.search(c)]
    assert not [o for s in scenes for o in s.objects if (o.color, o.shape) in HELD_OUT_PAIRS]
    # The check is not vacuous: every colour and shape occurs, and paraphrases are trained on.
    words = set(" ".join(captions).split())
    assert set(OBJECT_COLORS) | set(SHAPES) <= words
    assert sum(s.caption != s.canonical_caption for s in scenes) > 300


def test_retrieval_accuracy_on_hand_built_embeddings():
    # Captions are the unit axes, so image i's similarities are its own row.
    captions = torch.eye(3)
    images = torch.tensor(
        [
            [0.9, 0.1, 0.0],  # caption 0: retrieves 0, right
            [0.2, 0.8, 0.0],  # caption 0: retrieves 1, wrong
            [0.1, 0.7, 0.3],  # caption 1: retrieves 1, right
            [0.5, 0.0, 0.4],  # caption 2: retrieves 0, wrong
        ]
    )
    labels = torch.tensor([0, 0, 1, 2])
    # Caption 0's best image is image 0 (right); caption 1's image 1 (wrong, it shows caption 0);
    # caption 2's image 3 (right).
    everything = retrieval_accuracy(
        images, captions, labels, torch.ones(4, dtype=torch.bool), torch.ones(3, dtype=torch.bool)
    )
    assert everything == pytest.approx((2 / 4, 2 / 3))
    subset = retrieval_accuracy(
        images,
        captions,
        labels,
        torch.tensor([False, False, True, True]),
        torch.tensor([False, True, True]),
    )
    assert subset == pytest.approx((1 / 2, 1 / 2))


def test_trainer_trains_tiny_clip_and_evaluation_sees_it(tokenizer, tmp_path):
    config = TrainConfig(
        steps=40,
        batch_size=32,
        learning_rate=3e-3,
        warmup_steps=5,
        log_every=10,
        checkpoint_every=40,
    )
    model = tiny_clip()
    before = evaluate_clip(model, tokenizer, n=128)
    trainer = Trainer(
        model, clip_objective, pairs_for(tokenizer, 32), config, tmp_path, "cpu", progress=False
    )
    summary = trainer.fit()
    losses = [record["loss"] for record in LossLog(tmp_path / LOSS_LOG_FILE).read()]
    assert summary.step == 40 and len(losses) == 4 and all(map(math.isfinite, losses))
    assert losses[-1] < losses[0] - 0.2
    after = evaluate_clip(model.eval(), tokenizer, n=128)
    assert after["num_images"] == 128 and after["num_captions"] <= 128
    for key in ("image_to_text_top1", "text_to_image_top1"):
        assert 0 <= after[key] <= 1
    assert 0 <= after["clip_score_shuffled"] < after["clip_score_matched"] <= 100
    gap = after["clip_score_matched"] - after["clip_score_shuffled"]
    assert gap > before["clip_score_matched"] - before["clip_score_shuffled"]


def test_held_out_evaluation_counts_only_held_out_scenes(tokenizer):
    scores = evaluate_clip(tiny_clip(), tokenizer, n=128, include_held_out=True)
    # About a fifth of unrestricted scenes name a held-out pair.
    assert 5 < scores["num_images"] < 64
    assert 0 < scores["num_captions"] <= scores["num_images"]
    assert all(0 <= scores[key] <= 1 for key in ("image_to_text_top1", "text_to_image_top1"))


def test_save_load_round_trip(tokenizer, tmp_path):
    model = tiny_clip().half().float()  # fp16-representable weights survive the fp16 file
    save_clip(tmp_path, model, tokenizer)
    loaded, loaded_tokenizer = load_clip(tmp_path)
    assert loaded.config == TINY and not loaded.training
    captions = ["a red circle on the left", "three blue boxes", "a purple triangle"]
    ids = tokenizer.encode(captions, TINY.text.context_length)
    assert_close(loaded_tokenizer.encode(captions, TINY.text.context_length), ids)
    images = pairs_for(tokenizer, 3)(0, 0, 1)[0]
    with torch.no_grad():
        assert_close(loaded(images, ids), model(images, ids), rtol=0, atol=0)


@pytest.mark.parametrize("name", [CLIP_WEIGHTS_FILE, CLIP_CONFIG_FILE, TOKENIZER_FILE])
def test_missing_or_corrupt_files_are_usage_errors(tokenizer, tmp_path, name):
    save_clip(tmp_path, tiny_clip(), tokenizer)
    (tmp_path / name).write_bytes(b"\x00not what was written")
    with pytest.raises(UsageError, match=name):
        load_clip(tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(UsageError, match=name):
        load_clip(tmp_path)


def test_unknown_config_key_is_a_usage_error(tokenizer, tmp_path):
    save_clip(tmp_path, tiny_clip(), tokenizer)
    config = json.loads((tmp_path / CLIP_CONFIG_FILE).read_text())
    config["image"]["dropout"] = 0.1
    (tmp_path / CLIP_CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(UsageError, match=f"{CLIP_CONFIG_FILE}.*dropout"):
        load_clip(tmp_path)

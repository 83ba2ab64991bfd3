"""Training CLIP contrastively on freshly rendered Shapes World pairs, and measuring it.

Every shard of every step is a new batch of renders with the caption each scene was drawn
for (paraphrases included, so the text tower learns that "a red ball" is "a red circle"),
never naming a held-out colour–shape pair. The measurement asks what CLIP is used for later —
does the right caption score highest? — on renders no step has seen, once on the training
distribution and once on scenes that contain a held-out pair (compositional generalisation:
the model knows "purple" and "triangle", never "purple triangle").
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from latentdiff.config import CLIPConfig, from_dict
from latentdiff.errors import UsageError
from latentdiff.fileio import atomic_write, write_json
from latentdiff.models.clip import CLIP, clip_loss, clip_score
from latentdiff.models.tokenizer import TOKENIZER_FILE, Tokenizer
from latentdiff.pipelines.common import images_to_tensor
from latentdiff.training.checkpoint import (
    load_module_state,
    load_weights,
    save_weights,
)
from latentdiff.training.trainer import derive_seed
from latentdiff.world.captions import parse_caption
from latentdiff.world.render import render_batch
from latentdiff.world.scenes import Scene

_TRAIN_DATA, _EVAL_DATA = 30, 31  # seed-stream tags: evaluation renders are never trained on

CLIP_WEIGHTS_FILE = "clip.safetensors"
CLIP_CONFIG_FILE = "clip_config.json"
EVAL_BATCH = 256  # images encoded at once by `evaluate_clip`, to bound its memory


@dataclass(frozen=True)
class RenderedPairs:
    """`batches(step, shard, num_shards)` for the trainer: (images, token ids), freshly rendered.

    Images are in [-1, 1], (n, 3, size, size); ids are (n, context_length), one row per
    scene's `caption`. `size` must be the image tower's `image_size`.
    """

    batch_size: int
    size: int
    seed: int
    tokenizer: Tokenizer
    context_length: int

    def render(self, step: int, shard: int, num_shards: int) -> tuple[np.ndarray, list[Scene]]:
        """The shard's renders (uint8) and scenes, from a seed of its own (no held-out pair)."""
        seed = derive_seed(_TRAIN_DATA, self.seed, step, shard)
        return render_batch(self.batch_size // num_shards, self.size, seed)

    def __call__(self, step: int, shard: int, num_shards: int) -> tuple[Tensor, Tensor]:
        images, scenes = self.render(step, shard, num_shards)
        ids = self.tokenizer.encode([scene.caption for scene in scenes], self.context_length)
        return images_to_tensor(images), ids


def clip_objective(model: CLIP, batch: tuple[Tensor, Tensor], generator: torch.Generator) -> Tensor:
    """The symmetric contrastive loss; CLIP draws no random numbers, so `generator` is unused."""
    images, ids = batch
    return clip_loss(model(images, ids))  # called, not model.encode_*: DDP syncs on forward


@torch.no_grad()
def evaluate_clip(
    model: CLIP,
    tokenizer: Tokenizer,
    *,
    n: int = 512,
    seed: int = 0,
    include_held_out: bool = False,
) -> dict[str, float]:
    """Retrieval and CLIP scores on `n` unseen renders, all pairs allowed if `include_held_out`.

    The candidates are the batch's distinct canonical captions. `image_to_text_top1`: share of
    images whose most similar candidate is their own caption; `text_to_image_top1`: share of
    candidates whose most similar image was rendered for them. `clip_score_matched` /
    `clip_score_shuffled`: mean `clip_score` of each image with its caption / with the next
    image's. With `include_held_out`, all of them count only the images and captions naming a
    held-out pair, while every caption of the batch stays a candidate, so "a purple square"
    competes with "a purple triangle"; `num_images` and `num_captions` say how many counted.
    Exact-caption retrieval is strict: "a red circle" is also true of a "small red circle"
    image, yet counts as a miss.
    """
    size = model.config.image.image_size
    images, scenes = render_batch(n, size, derive_seed(_EVAL_DATA, seed), include_held_out)
    x = images_to_tensor(images)
    captions = sorted({scene.canonical_caption for scene in scenes})
    index = {caption: i for i, caption in enumerate(captions)}
    labels = torch.tensor([index[scene.canonical_caption] for scene in scenes])
    counted_captions = torch.tensor(
        [parse_caption(caption).held_out or not include_held_out for caption in captions]
    )
    counted_images = counted_captions[labels]
    ids = tokenizer.encode(captions, model.config.text.context_length)
    device = next(model.parameters()).device
    image_to_text, text_to_image = retrieval_accuracy(
        _embed(model.encode_image, x, device),
        _embed(model.encode_text, ids, device),
        labels,
        counted_images,
        counted_captions,
    )
    matched = _clip_scores(model, x, ids[labels], device)
    shuffled = _clip_scores(model, x, ids[labels.roll(1)], device)
    return {
        "image_to_text_top1": image_to_text,
        "text_to_image_top1": text_to_image,
        "clip_score_matched": matched[counted_images].mean().item(),
        "clip_score_shuffled": shuffled[counted_images].mean().item(),
        "num_images": int(counted_images.sum()),
        "num_captions": int(counted_captions.sum()),
    }


def retrieval_accuracy(
    image_embeddings: Tensor,
    caption_embeddings: Tensor,
    labels: Tensor,
    counted_images: Tensor,
    counted_captions: Tensor,
) -> tuple[float, float]:
    """Top-1 (image→text, text→image) accuracy over the counted images and captions.

    Image i's caption is `labels[i]`, an index into the captions (N, D) vs (C, D); a caption's
    retrieval is right when its most similar image is any image rendered for it.
    """
    similarity = image_embeddings @ caption_embeddings.T  # (N, C)
    image_hits = similarity.argmax(dim=1) == labels  # (N,)
    caption_hits = labels[similarity.argmax(dim=0)] == torch.arange(len(caption_embeddings))
    return (
        image_hits[counted_images].float().mean().item(),
        caption_hits[counted_captions].float().mean().item(),
    )


def _embed(encode: Callable[[Tensor], Tensor], inputs: Tensor, device: torch.device) -> Tensor:
    """`encode` over `inputs` in chunks of EVAL_BATCH, gathered in fp32 on the CPU."""
    return torch.cat([encode(chunk.to(device)).float().cpu() for chunk in inputs.split(EVAL_BATCH)])


def _clip_scores(model: CLIP, x: Tensor, ids: Tensor, device: torch.device) -> Tensor:
    pairs = zip(x.split(EVAL_BATCH), ids.split(EVAL_BATCH), strict=True)
    return torch.cat([clip_score(model, xs.to(device), i.to(device)).cpu() for xs, i in pairs])


def save_clip(folder: str | Path, model: CLIP, tokenizer: Tokenizer) -> None:
    """Write `clip.safetensors` (fp16), `clip_config.json` and `tokenizer.json` into `folder`."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create {folder}: {error}") from None
    save_weights(folder / CLIP_WEIGHTS_FILE, model.state_dict(), dtype=torch.float16)
    write_json(folder / CLIP_CONFIG_FILE, dataclasses.asdict(model.config))
    atomic_write(folder / TOKENIZER_FILE, tokenizer.save)


def load_clip(folder: str | Path) -> tuple[CLIP, Tokenizer]:
    """Read what `save_clip` wrote: the model (fp32, eval mode) and its tokenizer."""
    folder = Path(folder)
    model = CLIP(_read_config(folder / CLIP_CONFIG_FILE))
    weights = folder / CLIP_WEIGHTS_FILE
    state, _ = load_weights(weights)
    load_module_state(model, state, weights)
    tokenizer = Tokenizer.load(folder / TOKENIZER_FILE)
    if tokenizer.vocab_size > model.config.text.vocab_size:
        raise UsageError(
            f"{folder / TOKENIZER_FILE} has {tokenizer.vocab_size} tokens, more than the "
            f"model's vocab_size {model.config.text.vocab_size}"
        )
    return model.eval(), tokenizer


def _read_config(path: Path) -> CLIPConfig:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UsageError(f"cannot read CLIP config {path}: {error}") from None
    try:
        return from_dict(CLIPConfig, data)
    except UsageError as error:
        raise UsageError(f"{path}: {error}") from None

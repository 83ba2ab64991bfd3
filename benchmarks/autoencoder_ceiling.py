"""The adherence a model could reach at best through its autoencoder.

Renders one scene for every prompt of the evaluation suite (drawn by the world to satisfy it),
scores the renders, then scores the same renders after an encode → decode round trip through
the model's autoencoder (posterior mode). The first row checks the evaluator (it should be
near 1.0); the second is the ceiling the latent space puts on any U-Net trained in it.

    python benchmarks/autoencoder_ceiling.py --model shapes
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from latentdiff.evaluation.scoring import score
from latentdiff.evaluation.suite import evaluation_suite
from latentdiff.pipelines.common import decode_latents, encode_images, images_to_tensor
from latentdiff.pipelines.pipeline import load_pipeline
from latentdiff.world.captions import parse_caption
from latentdiff.world.render import render_scene
from latentdiff.world.scenes import sample_scene


def suite_renders(prompts: list[str], size: int, seed: int) -> np.ndarray:
    """One render per prompt, a scene the world draws to satisfy it, (N, size, size, 3)."""
    rng = np.random.default_rng(seed)
    return np.stack([render_scene(sample_scene(parse_caption(p), rng), size) for p in prompts])


def round_trip(model: str, images: np.ndarray, device: str, batch_size: int = 50) -> np.ndarray:
    """Images after the model's autoencoder: encode (posterior mode), decode, 8-bit."""
    components = load_pipeline(model, device=device).components
    parameter = next(components.autoencoder.parameters())
    out = []
    for start in range(0, len(images), batch_size):
        x = images_to_tensor(images[start : start + batch_size])
        x = x.to(parameter.device, parameter.dtype)
        with torch.no_grad():
            decoded = decode_latents(components, encode_images(components, x))
        out.extend(np.asarray(image) for image in decoded)
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    prompts = evaluation_suite()
    renders = suite_renders(prompts, args.size, args.seed)
    rows = {
        "renders": renders,
        "autoencoder round trip": round_trip(args.model, renders, args.device),
    }
    for name, images in rows.items():
        report = score(prompts, list(images))
        print(json.dumps({"model": args.model, "images": name} | report.to_dict()))


if __name__ == "__main__":
    main()

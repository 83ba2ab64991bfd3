"""What the token layout bias costs: txt2img with and without it, same weights otherwise.

The peer comparison (`txt2img_vs_diffusers.py`) runs the shapes architecture without the bias,
since diffusers' U-Net has none; this script prices the bias on top. Both pipelines share every
weight; the one with the bias has random layout maps (zero maps would be the same work). Runs
alternate in one process, as in the peer comparison.

    python benchmarks/token_layout_cost.py [--steps 20] [--runs 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from common import alternate, machine_summary, median, random_components

from latentdiff.checkpoints.bundle import build_components
from latentdiff.cli.train import load_init_unet
from latentdiff.config import shapes_config
from latentdiff.pipelines.pipeline import Pipeline

PROMPT = "a red circle on the left"


def with_layout(plain: Pipeline, seed: int = 0) -> Pipeline:
    """`plain`'s components with the shapes preset's layout bias added, its maps random."""
    components = plain.components
    config = dataclasses.replace(components.config, unet=shapes_config().unet)
    layout = build_components(config, components.tokenizer)
    load_init_unet(layout.unet, components.unet.state_dict(), "random shapes-v2 weights")
    layout.text_encoder.load_state_dict(components.text_encoder.state_dict())
    layout.autoencoder.load_state_dict(components.autoencoder.state_dict())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in layout.unet.token_layout.parameters():
            w.copy_(0.01 * torch.randn(w.shape, generator=generator))
    for module in layout.modules().values():
        module.eval().requires_grad_(False)
    return Pipeline(components=layout, name="random-shapes-layout")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each, after warm-up")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    plain = Pipeline(components=random_components(), name="random-shapes")
    layout = with_layout(plain)

    def run(pipe: Pipeline) -> None:
        with torch.inference_mode():
            pipe(PROMPT, num_inference_steps=args.steps, seed=0)

    times = alternate({"plain": lambda: run(plain), "layout": lambda: run(layout)}, args.runs)
    print(machine_summary())
    print(f"txt2img 64×64, {args.steps} steps, the model's defaults, {args.threads} threads")
    for name, values in times.items():
        print(
            f"  {name:<7} median {median(values):.3f} s   runs "
            + " ".join(f"{t:.3f}" for t in values)
        )
    ratios = [a / b for a, b in zip(times["layout"], times["plain"], strict=True)]
    print(f"  with / without the token layout bias: {median(ratios):.3f}")


if __name__ == "__main__":
    main()

"""Prompt adherence across samplers, step counts, guidance scales and training snapshots.

Each row generates the first `--limit` prompts of the evaluation suite (image k with seed k)
and scores them with the Shapes World evaluator. Results are appended to a JSON-lines file, so
an interrupted sweep keeps what it measured; `--plot` draws adherence against steps (or, for a
snapshot sweep, against samples seen).

    python benchmarks/adherence_sweep.py --model shapes --samplers dpmpp_2m,euler,ddim \
        --steps 5,10,20,40 --guidance 3,5,7 --limit 100 --out docs/adherence.jsonl
    python benchmarks/adherence_sweep.py --snapshots /work/runs/unet/snapshots --limit 100 \
        --out docs/learning_curve.jsonl --plot docs/learning_curve.png
    python benchmarks/adherence_sweep.py --out docs/adherence_vs_steps.jsonl --plot-only \
        --plot docs/adherence_vs_steps.png
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

from common import float_list, guidance_fields

from latentdiff.cli.generate import add_guidance_options, guidance_interval
from latentdiff.config import format_interval
from latentdiff.evaluation.adherence import evaluate_adherence
from latentdiff.evaluation.suite import evaluation_suite
from latentdiff.pipelines.pipeline import load_pipeline
from latentdiff.pipelines.request import GenerationRequest


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--snapshots", default=None, help="folder of step_N model folders")
    parser.add_argument("--samples-per-step", type=int, default=64, help="for snapshot sweeps")
    parser.add_argument(
        "--samples-offset",
        type=int,
        default=0,
        help="samples seen before the run's step 0 (a run started with --init-from)",
    )
    parser.add_argument("--label", default=None, help="the run's name in the plot legend")
    parser.add_argument("--samplers", default="dpmpp_2m")
    parser.add_argument("--steps", default="20")
    parser.add_argument(
        "--guidance", type=float_list, default=None, help="scales, e.g. 2,5 (default: the model's)"
    )
    add_guidance_options(parser, scale=False)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", required=True, help="JSON-lines results (appended)")
    parser.add_argument("--plot", default=None, help="PNG of adherence against steps")
    parser.add_argument(
        "--plot-only", action="store_true", help="draw --plot from the rows already in --out"
    )
    args = parser.parse_args()
    if args.plot_only and not args.plot:
        parser.error("--plot-only needs --plot")
    return args


def models(args: argparse.Namespace) -> list[tuple[str, int | None]]:
    """(model folder or name, training step or None) for every model of the sweep."""
    if args.snapshots is None:
        return [(args.model, None)]
    folders = sorted(Path(args.snapshots).glob("step_*"))
    return [(str(f), int(f.name.removeprefix("step_"))) for f in folders]


def main() -> None:
    args = parse_args()
    if args.plot_only:
        plot(Path(args.out), Path(args.plot))
        return
    prompts = evaluation_suite()[: args.limit]
    grid = list(
        itertools.product(
            args.samplers.split(","),
            [int(s) for s in args.steps.split(",")],
            [None] if args.guidance is None else args.guidance,
        )
    )
    out = Path(args.out)
    interval = guidance_interval(args)
    for model, step in models(args):
        pipeline = load_pipeline(model, device=args.device)
        for sampler, steps, guidance in grid:
            request = GenerationRequest(
                prompt=prompts[0],
                num_inference_steps=steps,
                guidance_scale=guidance,
                guidance_rescale=args.guidance_rescale,
                guidance_interval=interval,
                sampler=sampler,
                seed=0,
            ).with_defaults(pipeline.sampling_defaults)  # so that the row names what was used
            start = time.perf_counter()
            report = evaluate_adherence(pipeline, prompts, request)
            row = {
                "model": model,
                "train_step": step,
                "samples_seen": None
                if step is None
                else args.samples_offset + step * args.samples_per_step,
                "label": args.label,
                "sampler": sampler,
                "steps": steps,
                **guidance_fields(request),
                "prompts": len(prompts),
                **{k: None if v is None else round(v, 4) for k, v in report.to_dict().items()},
                "seconds": round(time.perf_counter() - start, 1),
            }
            print(json.dumps(row), flush=True)
            with out.open("a") as file:
                file.write(json.dumps(row) + "\n")
    if args.plot:
        plot(out, Path(args.plot), snapshots=args.snapshots is not None)


def plot(results: Path, png: Path, *, snapshots: bool | None = None) -> None:
    """Adherence against sampling steps, or against samples seen for a snapshot sweep; None
    infers which from the rows (a snapshot sweep's rows all know their samples seen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    if snapshots is None:
        snapshots = all(row.get("samples_seen") for row in rows)
    x_key = "samples_seen" if snapshots else "steps"
    fig, ax = plt.subplots(figsize=(6, 4))

    def group(row: dict) -> tuple[str, str, float, str]:
        interval = row.get("guidance_interval")
        # Rows hold the interval as guidance_fields formatted it.
        every_step = interval in (None, format_interval((0, math.inf)))
        within = "" if every_step else f" in σ {interval}"
        return row.get("label") or "", row["sampler"], row["guidance_scale"], within

    for key in sorted({group(r) for r in rows}):
        label, sampler, guidance, within = key
        line = sorted((r[x_key], r["overall"]) for r in rows if group(r) == key)
        name = f"{label}: " if label else ""
        legend = f"{name}{sampler}, CFG {guidance:g}{within}"
        ax.plot(*zip(*line, strict=True), marker="o", label=legend)
    if snapshots:
        ax.xaxis.set_major_formatter(lambda x, _: f"{x / 1000:g} k")
    ax.set_xlabel("training samples seen" if snapshots else "sampling steps")
    ax.set_ylabel("adherence (overall)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    main()

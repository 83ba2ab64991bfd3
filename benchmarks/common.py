"""What the benchmarks share: random shapes weights, a model folder of them, and timing.

Speed does not depend on the weights' values, so until the bundled model is trained the
benchmarks run on random weights of the `shapes` architecture. LDM's initialisation zeroes the
last layer of every residual branch and the U-Net's output; those are perturbed here so that the
random model's prediction depends on x, t and the prompt, and the two implementations'
images are a meaningful comparison rather than two copies of the same constant.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from latentdiff.checkpoints.bundle import Components, build_components, save_components
from latentdiff.config import shapes_config
from latentdiff.models.tokenizer import build_world_tokenizer
from latentdiff.pipelines.pipeline import Pipeline, load_pipeline

OPENMP_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
"""Settings that change CPU timings a lot on a shared machine (see README.md)."""


@torch.no_grad()
def random_components(seed: int = 0) -> Components:
    """The `shapes` architecture with random weights and no all-zero layers."""
    config = shapes_config()
    torch.manual_seed(seed)
    components = build_components(
        config, build_world_tokenizer(vocab_size=config.text_encoder.vocab_size)
    )
    generator = torch.Generator().manual_seed(seed)
    for module in components.modules().values():
        for parameter in module.parameters():
            if not parameter.any():
                parameter.copy_(0.02 * torch.randn(parameter.shape, generator=generator))
        module.eval().requires_grad_(False)
    return components


def bench_pipeline(model: str | None) -> Pipeline:
    """A model folder's pipeline on the CPU, as users load it; random `shapes` weights if None."""
    if model is None:
        return Pipeline(components=random_components(), name="random-shapes")
    return load_pipeline(model, device="cpu")


def write_random_model(folder: str | os.PathLike) -> Path:
    """A latentdiff model folder of random `shapes` weights (what `--model` takes)."""
    save_components(random_components(), folder)
    return Path(folder)


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(
    contenders: dict[str, Callable[[], object]], runs: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Time each contender `runs` times, interleaved (A, B, A, B, …) after `warmup` rounds.

    Interleaving spreads slow drifts of a shared machine's load over every contender alike,
    so their ratio stays meaningful when absolute times do not.
    """
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(runs):
        for name, fn in contenders.items():
            times[name].append(seconds(fn))
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine_summary(environ: Mapping[str, str] = os.environ) -> str:
    """One line: CPU, cores, torch, OpenMP settings in `environ`, load average (shared machine?)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    openmp = "".join(f", {k}={environ[k]}" for k in OPENMP_VARIABLES if k in environ)
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}{openmp}, load average {load}"

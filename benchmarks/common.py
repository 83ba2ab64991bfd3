"""What the benchmarks share: random weights, a model folder of them, timing and peak memory.

Speed does not depend on the weights' values, so until the bundled model is trained the
benchmarks run on random weights of the `shapes` architecture. LDM's initialisation zeroes the
last layer of every residual branch and the U-Net's output; those are perturbed here so that the
random model's prediction depends on x, t and the prompt, and the two implementations'
images are a meaningful comparison rather than two copies of the same constant.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import torch
from torch import nn

from latentdiff.checkpoints.bundle import Components, build_components, save_components
from latentdiff.config import format_interval, shapes_v2_config
from latentdiff.models.tokenizer import build_world_tokenizer
from latentdiff.pipelines.pipeline import Pipeline, load_pipeline
from latentdiff.pipelines.request import GenerationRequest

T = TypeVar("T")

OPENMP_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
"""Settings that change CPU timings a lot on a shared machine (see README.md)."""


@torch.no_grad()
def random_components(seed: int = 0) -> Components:
    """The `shapes-v2` architecture (`shapes` without the token layout bias, which the peer's
    U-Net lacks; its cost: `benchmarks/token_layout_cost.py`) with random weights and no
    all-zero layers."""
    config = shapes_v2_config()
    torch.manual_seed(seed)
    components = build_components(
        config, build_world_tokenizer(vocab_size=config.text_encoder.vocab_size)
    )
    generator = torch.Generator().manual_seed(seed)
    for module in components.modules().values():
        perturb_zero_parameters(module, generator)
    return components


@torch.no_grad()
def perturb_zero_parameters(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Fill LDM's all-zero layers with N(0, 0.02²) noise; return the module frozen, in eval mode."""
    for parameter in module.parameters():
        if not parameter.any():
            parameter.copy_(0.02 * torch.randn(parameter.shape, generator=generator))
    return module.eval().requires_grad_(False)


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
    contenders: dict[str, Callable[[], object]],
    runs: int,
    warmup: int = 1,
    measure: Callable[[Callable[[], object]], T] = seconds,
) -> dict[str, list[T]]:
    """Time (or `measure`) each contender `runs` times, interleaved (A, B, A, B, …) after
    `warmup` rounds.

    Interleaving spreads slow drifts of a shared machine's load over every contender alike,
    so their ratio stays meaningful when absolute times do not.
    """
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    results: dict[str, list[T]] = {name: [] for name in contenders}
    for _ in range(runs):
        for name, fn in contenders.items():
            results[name].append(measure(fn))
    return results


def median(values: list[float]) -> float:
    return statistics.median(values)


# ── Peak memory ───────────────────────────────────────────────────────────────────────────

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """This process's resident set size now."""
    with open("/proc/self/statm", "rb", buffering=0) as statm:
        return _read_rss(statm)


def _read_rss(statm: BinaryIO) -> int:
    """RSS from an open /proc/self/statm (Linux; field 2, in pages), re-read from the start."""
    statm.seek(0)
    return int(statm.read().split()[1]) * PAGE_SIZE


def release_free_memory() -> None:
    """Collect garbage and hand glibc's free heap pages back, so that the RSS is what is live."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: freed pages may stay counted
        pass


class PeakRSS:
    """Peak RSS above the level at entry, sampled by a background thread every ~`interval` s.

    tracemalloc does not see PyTorch's allocations and `ru_maxrss` is a high-water mark for
    the whole process; sampling the current RSS gives the peak of one call while other,
    larger models stay loaded. Sampling runs while torch's kernels release the GIL; a peak
    shorter than the interval can be missed (the weights-sized buffers of interest live longer).
    """

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.baseline = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRSS:
        release_free_memory()
        self.baseline = self._max = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self._max, rss_bytes()) - self.baseline

    def _sample(self) -> None:
        with open("/proc/self/statm", "rb", buffering=0) as statm:
            while not self._stop.wait(self.interval):
                self._max = max(self._max, _read_rss(statm))


@dataclass(frozen=True)
class Measurement:
    seconds: float
    peak_rss: int
    """Bytes above the RSS before the call."""


def seconds_and_peak_rss(fn: Callable[[], object]) -> Measurement:
    """One call's wall time and its peak RSS above the RSS before it (after a gc)."""
    with PeakRSS() as memory:
        elapsed = seconds(fn)
    return Measurement(elapsed, memory.peak)


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


def float_list(text: str) -> list[float]:
    """ "0.05,0.1" → [0.05, 0.1]."""
    return [float(v) for v in text.split(",")]


def guidance_fields(request: GenerationRequest) -> dict[str, float | str | None]:
    """The guidance a resolved request (`with_defaults`) used, for a JSON row; the interval as
    text, since strict JSON has no infinity for an open top."""
    interval = request.guidance_interval
    return {
        "guidance_scale": request.guidance_scale,
        "guidance_rescale": request.guidance_rescale,
        "guidance_interval": None if interval is None else format_interval(interval),
    }

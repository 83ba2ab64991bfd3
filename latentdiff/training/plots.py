"""The loss curve of a run, drawn from its `loss.jsonl`."""

from __future__ import annotations

import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from latentdiff.fileio import atomic_write
from latentdiff.training.loss_log import LossLog


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Debiased exponential moving average (TensorBoard's smoothing): the first points are not
    pulled towards zero, as a plain EMA started at 0 would be."""
    smoothed, average = [], 0.0
    for n, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        smoothed.append(average / (1 - weight**n))
    return smoothed


def plot_loss_curve(loss_jsonl: str | os.PathLike, png_path: str | os.PathLike) -> None:
    """Write the logged and smoothed loss against step as a PNG; nothing if nothing is logged.

    The y axis is logarithmic (diffusion losses fall over decades) unless some loss is ≤ 0.
    """
    records = LossLog(loss_jsonl).read()
    if not records:
        return
    steps = [record["step"] for record in records]
    losses = [record["loss"] for record in records]
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)  # the Agg canvas: no display, no global pyplot state
    axes = figure.add_subplot()
    axes.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=1, label="logged")
    axes.plot(steps, smooth(losses), color="tab:blue", linewidth=2, label="smoothed")
    axes.set_yscale("log" if min(losses) > 0 else "linear")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.96)  # tight_layout is slow
    atomic_write(png_path, lambda tmp: figure.savefig(tmp, format="png"))

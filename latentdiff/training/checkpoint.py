"""Training checkpoints and weight files, written so that a killed run never leaves half a file.

A checkpoint is one directory, `checkpoints/step_000500/`:

    model.safetensors    the trained module's state dict, as trained (fp32)
    ema.safetensors      its exponential moving average (only when EMA is on)
    optimizer.pt         AdamW's state dict, read back with `torch.load(weights_only=True)`
    trainer_state.json   {"step", "elapsed", "config"}

It is written into a hidden temporary directory and renamed into place; `checkpoints/latest`
(one line: the directory's name) is then replaced the same way. `latest` is written last, so
the checkpoint it names is always complete, whenever the process was killed. (Nothing is
fsync'ed: a power cut may still lose the last checkpoint; a killed session cannot.)

No RNG state is stored: the trainer derives every step's randomness from (seed, step, shard),
so the stream after a resume does not depend on what ran before it (see trainer.py).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from latentdiff.errors import UsageError
from latentdiff.fileio import atomic_folder, atomic_write

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "trainer_state.json"
LATEST_FILE = "latest"
_STEP_DIR = re.compile(r"step_(\d+)")


@dataclass
class Checkpoint:
    """Everything needed to continue a run exactly."""

    step: int
    """Optimizer steps completed."""
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    ema: dict[str, torch.Tensor] | None
    elapsed: float
    """Seconds spent training up to `step`, summed over all sessions."""
    config: dict[str, Any]
    """The run's TrainConfig as a dict, for provenance."""


def save_weights(
    path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write a safetensors file atomically; floating tensors are cast to `dtype` if given."""
    tensors = {
        key: _cast(tensor.detach(), dtype).to("cpu").contiguous()
        for key, tensor in state_dict.items()
    }
    atomic_write(path, lambda tmp: _save_safetensors(tensors, tmp, metadata))


def _save_safetensors(
    tensors: dict[str, torch.Tensor], path: Path, metadata: Mapping[str, str] | None = None
) -> None:
    save_file(tensors, str(path), metadata=dict(metadata or {}))
    # safetensors creates its files private (0600); give them the permissions of any other
    # file. Setting the umask is the only way to read it.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file → (state dict on CPU, metadata); a bad file is a UsageError."""
    try:
        with safe_open(str(path), framework="pt") as file:
            return {key: file.get_tensor(key) for key in file.keys()}, file.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise UsageError(f"cannot read weights {path}: {error}") from None


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def check_state(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Size],
    source: str | os.PathLike | None = None,
) -> None:
    """A UsageError naming the first missing key, else the first unexpected one, else the first
    tensor of the wrong shape (prefixed by `source`, the file or component, if given)."""
    where = f"{source}: " if source else ""
    missing = sorted(set(expected) - set(state))
    if missing:
        raise UsageError(f"{where}missing key {missing[0]} ({len(missing)} missing)")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise UsageError(f"{where}unexpected key {unexpected[0]} ({len(unexpected)} unexpected)")
    for key, tensor in state.items():
        if tensor.shape != expected[key]:
            raise UsageError(
                f"{where}key {key} has shape {tuple(tensor.shape)}, expected {tuple(expected[key])}"
            )


def load_module_state(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str | os.PathLike,
    *,
    assign: bool = False,
    dtype: torch.dtype | None = None,
) -> None:
    """Load every parameter and buffer, or raise a UsageError naming the first bad key.

    Nothing is loaded unless everything fits. Floating tensors are cast to `dtype`, or to the
    module's dtypes (files may be fp16; the module decides what it runs in). `assign=True`
    hands the tensors themselves to the module (one built on the meta device), so no second
    copy of the weights is ever allocated.
    """
    expected = module.state_dict()
    check_state(state, {key: tensor.shape for key, tensor in expected.items()}, source)
    cast = {
        key: tensor.to(dtype or expected[key].dtype) if tensor.is_floating_point() else tensor
        for key, tensor in state.items()
    }
    module.load_state_dict(cast, assign=assign)


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def save_checkpoint(checkpoints_dir: str | os.PathLike, checkpoint: Checkpoint, keep: int) -> Path:
    """Write `checkpoint` as `checkpoints_dir/step_NNNNNN/`, point `latest` at it, prune old ones."""
    root = Path(checkpoints_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(checkpoint.step)
    # overwrite: a step re-run after a resume from an earlier checkpoint replaces its folder.
    atomic_folder(final, lambda tmp: _write_files(tmp, checkpoint), overwrite=True)
    atomic_write(root / LATEST_FILE, lambda p: p.write_text(final.name + "\n"))
    _prune(root, checkpoint.step, keep)
    return final


def _write_files(folder: Path, checkpoint: Checkpoint) -> None:
    _save_safetensors(_cpu(checkpoint.model), folder / MODEL_FILE)
    if checkpoint.ema is not None:
        _save_safetensors(_cpu(checkpoint.ema), folder / EMA_FILE)
    torch.save(checkpoint.optimizer, folder / OPTIMIZER_FILE)
    state = {"step": checkpoint.step, "elapsed": checkpoint.elapsed, "config": checkpoint.config}
    (folder / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def _cpu(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: tensor.detach().to("cpu").contiguous() for key, tensor in state.items()}


def _prune(root: Path, current_step: int, keep: int) -> None:
    """Keep the `keep` newest checkpoints up to `current_step`; drop temporaries of killed writes.

    Checkpoints after `current_step` (left by a run resumed from an earlier one) are kept: they
    are replaced when this run reaches their step.
    """
    older = sorted(step for step in _checkpoint_steps(root) if step <= current_step)
    for step in older[:-keep]:
        shutil.rmtree(root / step_dir_name(step))
    for leftover in root.glob(".step_*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def _checkpoint_steps(root: Path) -> list[int]:
    return [
        int(match.group(1))
        for path in root.iterdir()
        if path.is_dir() and (match := _STEP_DIR.fullmatch(path.name))
    ]


def latest_checkpoint(checkpoints_dir: str | os.PathLike) -> Path | None:
    """The checkpoint `latest` names, or None when the run has not written one yet."""
    pointer = Path(checkpoints_dir) / LATEST_FILE
    if not pointer.exists():
        return None
    name = pointer.read_text().strip()
    folder = pointer.parent / name
    if not _STEP_DIR.fullmatch(name) or not folder.is_dir():
        raise UsageError(f"{pointer} names {name!r}, which is not a checkpoint directory")
    return folder


def load_checkpoint(folder: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint directory; a missing or corrupt file is a UsageError naming it."""
    folder = Path(folder)
    state = _read_state(folder / STATE_FILE)
    model, _ = load_weights(_existing(folder / MODEL_FILE))
    ema = load_weights(folder / EMA_FILE)[0] if (folder / EMA_FILE).exists() else None
    return Checkpoint(
        step=state["step"],
        model=model,
        optimizer=_read_optimizer(_existing(folder / OPTIMIZER_FILE)),
        ema=ema,
        elapsed=state["elapsed"],
        config=state["config"],
    )


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise UsageError(f"checkpoint file {path} is missing")
    return path


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(_existing(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UsageError(f"cannot read {path}: {error}") from None
    if not isinstance(state, dict) or not {"step", "elapsed", "config"} <= state.keys():
        raise UsageError(f"{path} lacks one of step, elapsed, config")
    return state


def _read_optimizer(path: Path) -> dict[str, Any]:
    # weights_only: a checkpoint from elsewhere must not be able to run code when loaded.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        message = " ".join(str(error).split())[:300]
        raise UsageError(f"cannot read optimizer state {path}: {message}") from None


def read_pickled_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A pickled state dict (`.ckpt`, `.bin`), memory-mapped, through torch's weights-only
    unpickler only: a pickle that needs anything beyond tensors and containers is refused, never
    unpickled unsafely. A PyTorch Lightning wrapper's `state_dict` is unwrapped."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols, not for users
            try:
                data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as error:
                if "mmap can only be used" not in str(error):
                    raise
                # Files saved by torch < 1.6 (no zip container) cannot be memory-mapped.
                data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # only torch.load runs above: any failure is a bad file
        raise UsageError(f"{path}: {_pickle_problem(str(error))}") from None
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]  # PyTorch Lightning's checkpoint around the weights
    if not isinstance(data, Mapping):
        raise UsageError(f"{path}: holds a {type(data).__name__}, not a state dict")
    for key, value in data.items():
        if not isinstance(value, torch.Tensor):
            raise UsageError(f"{path}: {key} is a {type(value).__name__}, not a tensor")
    return dict(data)


def _pickle_problem(message: str) -> str:
    """One line from torch.load's error: unsafe content, or simply not a checkpoint."""
    if "Weights only load failed" not in message:
        return "cannot read checkpoint: " + (" ".join(message.split())[:200] or "unknown error")
    detail = message.partition("WeightsUnpickler error:")[2].strip().split("\n")[0]
    if detail.startswith("Unsupported operand"):  # an opcode torch.save never writes
        return f"cannot read checkpoint: not a PyTorch checkpoint ({detail})"
    needed = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    reason = f"it needs {needed[1]}" if needed else detail or "it holds more than tensors"
    return (
        f"this pickle needs unsafe unpickling ({reason}); refusing to load it — "
        "convert it to .safetensors with a tool you trust"
    )

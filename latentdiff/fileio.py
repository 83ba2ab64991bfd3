"""Writing files so that a reader never sees a half-written one (torch-free, for every layer)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from latentdiff.errors import UsageError


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call `write(tmp_path)`, then rename onto `path`: readers see the old or the new file.

    A failed write (no such directory, disk full) becomes a UsageError naming `path`.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        raise_unwritable(path, error)
        raise


def atomic_folder(folder: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call `write(tmp_folder)` on a fresh folder, then rename it onto `folder`, which must be
    absent or empty: a crash leaves either no folder or a complete one."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UsageError(f"{folder} already exists and is not empty; refusing to overwrite it")
    tmp = temporary_name(folder)
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed process with the same pid
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        write(tmp)
        os.replace(tmp, folder)  # onto nothing or an empty folder
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_unwritable(folder, error)
        raise


def raise_unwritable(path: Path, error: BaseException) -> None:
    # safetensors reports its write failures as SafetensorError, not OSError.
    if isinstance(error, OSError | SafetensorError):
        raise UsageError(f"cannot write {path}: {error}") from None


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON, atomically (see `atomic_write`)."""
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def temporary_name(path: Path) -> Path:
    # Hidden, beside the target (os.replace is atomic only within one filesystem), unique per
    # process; created by the writer itself so that it gets the usual umask permissions.
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")

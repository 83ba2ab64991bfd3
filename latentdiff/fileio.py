"""Writing files so that a reader never sees a half-written one (torch-free, for every layer)."""

from __future__ import annotations

import contextlib
import glob
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
    remove_stale_temporaries(path)  # only now: until `path` is new, they may be all there is


def atomic_folder(
    folder: str | os.PathLike, write: Callable[[Path], object], *, overwrite: bool = False
) -> None:
    """Call `write(tmp_folder)` on a fresh folder, then rename it onto `folder`: a crash leaves
    the previous folder (or none), never half of a new one. `folder` must be absent or empty
    unless `overwrite` (e.g. a training run's `model/`, replaced at every checkpoint)."""
    folder = Path(folder)
    if not overwrite and folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UsageError(f"{folder} already exists and is not empty; refusing to overwrite it")
    tmp = temporary_name(folder)
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed process with the same pid
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        write(tmp)
        replace_folder(tmp, folder)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_unwritable(folder, error)
        raise
    remove_stale_temporaries(folder)  # only now: until `folder` is new, they may be all there is


def replace_folder(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`. A folder cannot be renamed onto a non-empty one, so an existing
    `dst` is set aside first and deleted after: a crash in between leaves no `dst`."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = temporary_name(dst.with_name(dst.name + ".old"))
    os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old)


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


def remove_stale_temporaries(path: Path) -> None:
    """Delete `path`'s temporaries (see `temporary_name`) left by processes that no longer run.

    A process killed mid-write leaves its hidden temporary behind (a whole model folder, for
    a killed training run); the next writer of `path` removes it. A temporary of a live process
    (another rank, a parallel writer) is kept, and so is one whose pid cannot be checked.
    """
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        owner = candidate.name[len(path.name) + 2 : -len(".tmp")].removeprefix("old.")
        if owner.isdigit() and (int(owner) == os.getpid() or not process_running(int(owner))):
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):  # best effort: the write itself succeeded
                    candidate.unlink()


def process_running(pid: int) -> bool:
    """Whether process `pid` exists; True where that cannot be asked (not POSIX)."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would send CTRL_C_EVENT on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True

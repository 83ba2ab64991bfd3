import os
import subprocess
import sys
from pathlib import Path

import pytest

from latentdiff.errors import UsageError
from latentdiff.fileio import (
    atomic_folder,
    atomic_write,
    process_running,
    remove_stale_temporaries,
    temporary_name,
)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(child.stdout)


def leftover(path: Path, pid: int, *, old: bool = False, folder: bool = True) -> Path:
    """A temporary of `path` as a process `pid` killed mid-write would leave it."""
    name = f".{path.name}.old.{pid}.tmp" if old else f".{path.name}.{pid}.tmp"
    tmp = path.with_name(name)
    if folder:
        tmp.mkdir()
        (tmp / "model.safetensors").write_bytes(b"half")
    else:
        tmp.write_bytes(b"half")
    return tmp


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    target.write_text("old")
    atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    target.write_text("old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(UsageError, match="cannot write .*config.json.*No space left"):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_atomic_folder_refuses_a_foreign_non_empty_folder_unless_overwriting(
    tmp_path: Path,
) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    with pytest.raises(UsageError, match="already exists and is not empty"):
        atomic_folder(target, lambda tmp: (tmp / "a.txt").write_text("a"))
    assert [p.name for p in target.iterdir()] == ["mine.txt"]
    atomic_folder(target, lambda tmp: (tmp / "a.txt").write_text("a"), overwrite=True)
    assert [p.name for p in target.iterdir()] == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_the_next_writer_removes_temporaries_of_killed_processes(tmp_path: Path) -> None:
    target, pid = tmp_path / "model", dead_pid()
    leftover(target, pid)
    leftover(target, pid, old=True)
    atomic_folder(target, lambda tmp: (tmp / "a.txt").write_text("a"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    file = tmp_path / "loss.png"
    leftover(file, pid, folder=False)
    atomic_write(file, lambda tmp: tmp.write_bytes(b"png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png", "model"]


def test_a_failed_write_keeps_the_temporaries_of_killed_processes(tmp_path: Path) -> None:
    # After a kill between replace_folder's two renames they are all that is left of the folder.
    target = tmp_path / "model"
    old = leftover(target, dead_pid(), old=True)

    def fail(tmp: Path) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(UsageError, match="No space left"):
        atomic_folder(target, fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == [old.name]


def test_temporaries_of_running_processes_and_other_files_are_kept(tmp_path: Path) -> None:
    target = tmp_path / "model"
    alive = leftover(target, os.getppid())  # a parallel writer still at work
    other = leftover(tmp_path / "modelx", dead_pid())  # another target's
    unknown = tmp_path / ".model.notapid.tmp"
    unknown.write_text("someone else's")
    remove_stale_temporaries(target)
    assert alive.exists() and other.exists() and unknown.exists()


def test_own_temporary_is_replaced_not_kept(tmp_path: Path) -> None:
    target = tmp_path / "model"
    leftover(target, os.getpid())  # from an earlier, interrupted write in this process
    assert temporary_name(target).exists()
    atomic_folder(target, lambda tmp: (tmp / "a.txt").write_text("a"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert (target / "a.txt").read_text() == "a"


@pytest.mark.skipif(os.name != "posix", reason="pids are checked on POSIX only")
def test_process_running() -> None:
    assert process_running(os.getpid())
    assert not process_running(dead_pid())

"""`loss.jsonl`: one JSON object per logged step, appended as training goes.

Each record has at least `step` and `loss`. On resume the file is cut back to the resumed
checkpoint's step, so a run killed after logging past its last checkpoint has no duplicate
steps once it has caught up again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from latentdiff.errors import UsageError
from latentdiff.fileio import atomic_write


class LossLog:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def read(self) -> list[dict[str, Any]]:
        """All records; a torn last line (the process was killed while writing it) is skipped."""
        if not self.path.exists():
            return []
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        records = []
        for number, line in enumerate(lines, start=1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if number < len(lines):
                    raise UsageError(f"{self.path}: line {number} is not JSON") from None
        return records

    def truncate(self, step: int) -> None:
        """Keep only the records up to and including `step`."""
        kept = [record for record in self.read() if record["step"] <= step]
        text = "".join(json.dumps(record) + "\n" for record in kept)
        atomic_write(self.path, lambda tmp: tmp.write_text(text))

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")

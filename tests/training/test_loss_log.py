import json

import pytest

from latentdiff.errors import UsageError
from latentdiff.training.loss_log import LossLog


def test_append_read_truncate(tmp_path):
    log = LossLog(tmp_path / "loss.jsonl")
    assert log.read() == []
    for step in (1, 2, 3):
        log.append({"step": step, "loss": 1.0 / step})
    log.truncate(2)
    assert log.read() == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]
    assert list(tmp_path.iterdir()) == [tmp_path / "loss.jsonl"]  # no temporary left


def test_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "loss.jsonl"
    path.write_text(json.dumps({"step": 1, "loss": 0.5}) + '\n{"step": 2, "lo')
    assert LossLog(path).read() == [{"step": 1, "loss": 0.5}]
    LossLog(path).truncate(5)
    assert path.read_text() == '{"step": 1, "loss": 0.5}\n'


def test_corrupt_middle_line_is_a_usage_error(tmp_path):
    path = tmp_path / "loss.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\nnot json\n{"step": 3, "loss": 0.1}\n')
    with pytest.raises(UsageError, match="line 2"):
        LossLog(path).read()

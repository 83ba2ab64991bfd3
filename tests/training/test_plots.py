import pytest

from latentdiff.training.loss_log import LossLog
from latentdiff.training.plots import plot_loss_curve, smooth

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_smooth_is_debiased():
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    # Second point: (0.9·0.1·1 + 0.1·3) / (1 − 0.81) = 0.39 / 0.19.
    assert smooth([1.0, 3.0]) == pytest.approx([1.0, 0.39 / 0.19])


@pytest.mark.parametrize("losses", [[1.0, 0.5, 0.25], [0.3, -0.2, -0.5]])
def test_plot_writes_a_png(tmp_path, losses):
    log = LossLog(tmp_path / "loss.jsonl")
    for step, loss in enumerate(losses, start=1):
        log.append({"step": step, "loss": loss})
    plot_loss_curve(log.path, tmp_path / "loss.png")
    data = (tmp_path / "loss.png").read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5000


def test_nothing_logged_writes_nothing(tmp_path):
    plot_loss_curve(tmp_path / "loss.jsonl", tmp_path / "loss.png")
    assert not (tmp_path / "loss.png").exists()

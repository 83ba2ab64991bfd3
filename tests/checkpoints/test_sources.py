from pathlib import Path

import pytest

from latentdiff.checkpoints.sources import LoadOptions, read_model
from latentdiff.errors import UsageError


@pytest.mark.parametrize(
    "options, message",
    [
        (LoadOptions(version="sd1"), "--version applies to single files only"),
        (LoadOptions(use_ema=True), "--ema applies to single files only"),
        (LoadOptions(inpainting=True), "the U-Net takes 4 input channels: not an inpainting model"),
    ],
)
def test_options_a_folder_contradicts_or_cannot_use_are_refused(
    tiny_model_dir: Path, options: LoadOptions, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        read_model(tiny_model_dir, options)


def test_an_inpainting_assertion_the_folder_agrees_with_loads(tiny_model_dir: Path) -> None:
    weights = read_model(tiny_model_dir, LoadOptions(inpainting=False))
    assert not weights.config.is_inpainting

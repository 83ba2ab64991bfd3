import os

import pytest
import torch
from torch import nn

from latentdiff.errors import UsageError
from latentdiff.training.checkpoint import (
    EMA_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    Checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_module_state,
    load_weights,
    save_checkpoint,
    save_weights,
)


def make_checkpoint(step: int) -> Checkpoint:
    torch.manual_seed(step)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return Checkpoint(
        step=step,
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        ema={key: value + 1 for key, value in model.state_dict().items()},
        elapsed=12.5,
        config={"steps": 100, "betas": [0.9, 0.999]},
    )


def test_weights_round_trip_with_metadata_and_dtype(tmp_path):
    state = {"weight": torch.randn(2, 3), "index": torch.arange(4)}
    save_weights(tmp_path / "w.safetensors", state, {"config": "{}"}, dtype=torch.float16)
    loaded, metadata = load_weights(tmp_path / "w.safetensors")
    assert metadata == {"config": "{}"}
    assert loaded["weight"].dtype == torch.float16 and loaded["index"].dtype == torch.int64
    assert torch.equal(loaded["weight"], state["weight"].half())
    assert torch.equal(loaded["index"], state["index"])
    assert os.listdir(tmp_path) == ["w.safetensors"]  # the temporary was renamed


def test_weight_files_get_ordinary_permissions(tmp_path):
    save_weights(tmp_path / "w.safetensors", {"x": torch.zeros(1)})
    (tmp_path / "plain").write_bytes(b"")
    assert (tmp_path / "w.safetensors").stat().st_mode == (tmp_path / "plain").stat().st_mode


@pytest.mark.parametrize("content", [None, b"not a safetensors file"])
def test_unreadable_weights_are_a_usage_error(tmp_path, content):
    path = tmp_path / "w.safetensors"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UsageError, match="w.safetensors"):
        load_weights(path)


def test_unwritable_destination_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="missing"):
        save_weights(tmp_path / "missing" / "w.safetensors", {"x": torch.zeros(1)})


def test_checkpoint_round_trip(tmp_path):
    written = make_checkpoint(step=7)
    folder = save_checkpoint(tmp_path, written, keep=2)
    assert folder == tmp_path / "step_000007" == latest_checkpoint(tmp_path)
    read = load_checkpoint(folder)
    assert (read.step, read.elapsed, read.config) == (7, 12.5, written.config)
    for key in written.model:
        assert torch.equal(read.model[key], written.model[key])
        assert torch.equal(read.ema[key], written.ema[key])
    assert read.optimizer["param_groups"] == written.optimizer["param_groups"]
    for index, state in written.optimizer["state"].items():
        assert torch.equal(read.optimizer["state"][index]["exp_avg"], state["exp_avg"])
    assert sorted(os.listdir(tmp_path)) == ["latest", "step_000007"]


def test_without_ema_there_is_no_ema_file(tmp_path):
    checkpoint = make_checkpoint(step=1)
    checkpoint.ema = None
    folder = save_checkpoint(tmp_path, checkpoint, keep=1)
    assert not (folder / EMA_FILE).exists()
    assert load_checkpoint(folder).ema is None


def test_pruning_keeps_the_newest_and_later_ones(tmp_path):
    for step in (2, 4, 6, 8):
        save_checkpoint(tmp_path, make_checkpoint(step), keep=2)
    assert sorted(os.listdir(tmp_path)) == ["latest", "step_000006", "step_000008"]
    # Resumed from 6 and re-saving 6: checkpoint 8 (ahead of the run) stays until replaced.
    (tmp_path / ".step_000003.999.tmp").mkdir()  # left by a killed writer
    save_checkpoint(tmp_path, make_checkpoint(6), keep=1)
    assert sorted(os.listdir(tmp_path)) == ["latest", "step_000006", "step_000008"]
    assert (tmp_path / "latest").read_text() == "step_000006\n"


def test_saving_a_step_again_replaces_it(tmp_path):
    save_checkpoint(tmp_path, make_checkpoint(3), keep=2)
    replacement = make_checkpoint(3)
    replacement.elapsed = 99.0
    save_checkpoint(tmp_path, replacement, keep=2)
    assert load_checkpoint(tmp_path / "step_000003").elapsed == 99.0
    assert sorted(os.listdir(tmp_path)) == ["latest", "step_000003"]


def test_no_latest_means_no_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "missing") is None


def test_latest_naming_a_missing_directory_is_a_usage_error(tmp_path):
    (tmp_path / "latest").write_text("step_000100\n")
    with pytest.raises(UsageError, match="latest"):
        latest_checkpoint(tmp_path)


@pytest.mark.parametrize("name", [MODEL_FILE, EMA_FILE, OPTIMIZER_FILE, STATE_FILE])
@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_files_are_usage_errors_naming_them(tmp_path, name, damage):
    folder = save_checkpoint(tmp_path, make_checkpoint(5), keep=1)
    if damage == "delete" and name == EMA_FILE:
        pytest.skip("a checkpoint without EMA is valid")
    if damage == "delete":
        (folder / name).unlink()
    else:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match=name):
        load_checkpoint(folder)


executed = []


class Payload:
    def __reduce__(self):
        return executed.append, ("code ran",)


def test_optimizer_state_is_loaded_without_running_code(tmp_path):
    folder = save_checkpoint(tmp_path, make_checkpoint(1), keep=1)
    torch.save({"state": Payload()}, folder / OPTIMIZER_FILE)
    with pytest.raises(UsageError, match=OPTIMIZER_FILE):
        load_checkpoint(folder)
    assert executed == []


def test_load_module_state_mismatch_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="model.safetensors: (missing|unexpected) key") as error:
        load_module_state(nn.Linear(3, 2), {"weight": torch.zeros(2, 3)}, "model.safetensors")
    assert "\n" not in str(error.value)

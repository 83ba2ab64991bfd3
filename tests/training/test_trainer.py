import json
import math
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from latentdiff.config import TrainConfig
from latentdiff.errors import UsageError
from latentdiff.training.trainer import (
    Trainer,
    check_shards,
    learning_rate_at,
    move_to,
    shard_indices,
)

NUM_SAMPLES = 48
_data_rng = torch.Generator().manual_seed(0)
X = torch.randn(NUM_SAMPLES, 4, generator=_data_rng)
Y = X @ torch.randn(4, 2, generator=_data_rng)
CONFIG = TrainConfig(
    steps=20, batch_size=8, learning_rate=1e-2, checkpoint_every=5, log_every=2, keep_checkpoints=2
)


def make_model(dropout: float = 0.0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.Dropout(dropout), nn.ReLU(), nn.Linear(16, 2))


def batches_for(config: TrainConfig):
    def batches(step: int, shard: int, num_shards: int):
        index = shard_indices(
            step,
            shard,
            num_shards,
            batch_size=config.batch_size,
            num_samples=NUM_SAMPLES,
            seed=config.seed,
        )
        return {"x": X[index], "y": Y[index]}

    return batches


def regression_loss(model, batch, generator):
    return ((model(batch["x"]) - batch["y"]) ** 2).mean()


def noisy_loss(model, batch, generator):
    noise = torch.randn(batch["x"].shape, generator=generator)
    return ((model(batch["x"] + 0.1 * noise) - batch["y"]) ** 2).mean()


def make_trainer(tmp_path, config=CONFIG, *, loss_fn=regression_loss, model=None, **kwargs):
    return Trainer(
        model if model is not None else make_model(),
        loss_fn,
        kwargs.pop("batches", batches_for(config)),
        config,
        tmp_path,
        "cpu",
        progress=False,
        **kwargs,
    )


def log_records(output_dir) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "loss.jsonl").read_text().splitlines()]


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class Interrupted(Exception):
    pass


def test_resume_continues_exactly(tmp_path):
    # Dropout (global RNG), input noise (generator), EMA, accumulation, warm-up and cosine.
    config = replace(
        CONFIG,
        ema_decay=0.9,
        grad_accum_steps=2,
        warmup_steps=3,
        lr_schedule="cosine",
        log_every=3,
        checkpoint_every=10,
    )
    uninterrupted = make_trainer(
        tmp_path / "full", config, loss_fn=noisy_loss, model=make_model(dropout=0.3)
    )
    uninterrupted.fit()

    def killed_at_step_13(step, shard, num_shards):
        if step == 13:
            raise Interrupted
        return batches_for(config)(step, shard, num_shards)

    first = make_trainer(
        tmp_path / "resumed",
        config,
        loss_fn=noisy_loss,
        model=make_model(dropout=0.3),
        batches=killed_at_step_13,
    )
    with pytest.raises(Interrupted):
        first.fit()
    assert log_records(tmp_path / "resumed")[-1]["step"] == 12  # logged past checkpoint 10

    torch.manual_seed(1234)  # the global RNG state at resume must not matter
    second = make_trainer(
        tmp_path / "resumed", config, loss_fn=noisy_loss, model=make_model(dropout=0.3, seed=7)
    )
    assert second.step == 10
    summary = second.fit()

    assert summary.resumed_from == 10 and summary.step == 20
    assert_same_tensors(second.model.state_dict(), uninterrupted.model.state_dict())
    assert_same_tensors(second.ema.state_dict(), uninterrupted.ema.state_dict())
    resumed_log, full_log = log_records(tmp_path / "resumed"), log_records(tmp_path / "full")
    assert [r["step"] for r in full_log] == [3, 6, 9, 10, 12, 15, 18, 20]
    for key in ("step", "loss", "lr"):
        assert [r[key] for r in resumed_log] == [r[key] for r in full_log]
    assert summary.final_loss == full_log[-1]["loss"]


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    config = replace(CONFIG, steps=6, checkpoint_every=6)
    whole = make_trainer(tmp_path / "whole", config)
    whole.fit()
    accumulated = make_trainer(tmp_path / "accumulated", replace(config, grad_accum_steps=4))
    accumulated.fit()
    assert_close(accumulated.model.state_dict(), whole.model.state_dict(), atol=1e-6, rtol=1e-5)
    before = make_model().state_dict()
    assert not torch.allclose(whole.model.state_dict()["0.weight"], before["0.weight"])


@pytest.mark.parametrize(
    ("schedule", "step", "expected"),
    [
        ("constant", 0, 0.1),  # warm-up: (step + 1) / warmup_steps
        ("constant", 4, 0.5),
        ("constant", 9, 1.0),
        ("constant", 50, 1.0),
        ("cosine", 9, 1.0),
        ("cosine", 10, 1.0),  # cosine starts at the peak after warm-up ...
        ("cosine", 60, 0.5),  # ... is at half way through the remaining 100 steps ...
        ("cosine", 109, 0.5 * (1 + math.cos(math.pi * 0.99))),  # ... and ends near 0
    ],
)
def test_learning_rate_schedule(schedule, step, expected):
    config = TrainConfig(steps=110, learning_rate=1.0, warmup_steps=10, lr_schedule=schedule)
    assert learning_rate_at(step, config) == pytest.approx(expected)


@pytest.mark.parametrize(
    "step, expected",
    [
        (9, 1.0),  # warm-up as before ...
        (59, 1.0),  # ... then the peak held up to cosine_from ...
        (60, 1.0),  # ... where the cosine starts, without a jump ...
        (85, 0.5),  # ... half way through the 50 steps left ...
        (109, 0.5 * (1 + math.cos(math.pi * 49 / 50))),  # ... ending near 0
    ],
)
def test_cosine_from_holds_the_peak_then_decays_over_the_steps_left(step, expected):
    config = TrainConfig(
        steps=110, learning_rate=1.0, warmup_steps=10, lr_schedule="cosine", cosine_from=60
    )
    assert learning_rate_at(step, config) == pytest.approx(expected)


def test_logged_learning_rate_is_the_schedule(tmp_path):
    config = replace(CONFIG, steps=8, warmup_steps=4, lr_schedule="cosine", log_every=1)
    trainer = make_trainer(tmp_path, config)
    trainer.fit()
    for record in log_records(tmp_path):
        assert record["lr"] == pytest.approx(learning_rate_at(record["step"] - 1, config))
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(learning_rate_at(7, config))


def test_gradient_clipping_bounds_the_first_adam_moment(tmp_path):
    def huge_loss(model, batch, generator):
        return 1e4 * regression_loss(model, batch, generator)

    config = replace(CONFIG, steps=1, grad_clip=0.5)
    trainer = make_trainer(tmp_path, config, loss_fn=huge_loss)
    trainer.fit()
    # After one step Adam's first moment is (1 - β1)·g, g the clipped gradient.
    moments = [state["exp_avg"] for state in trainer.optimizer.state.values()]
    norm = torch.linalg.vector_norm(torch.stack([m.norm() for m in moments]))
    assert_close(norm, torch.tensor((1 - config.betas[0]) * config.grad_clip))


@pytest.mark.parametrize(("precision", "dtype"), [("no", torch.float32), ("bf16", torch.bfloat16)])
def test_mixed_precision_autocasts_the_forward_pass(tmp_path, precision, dtype):
    seen = []

    def loss_fn(model, batch, generator):
        prediction = model(batch["x"])
        seen.append(prediction.dtype)
        return ((prediction.float() - batch["y"]) ** 2).mean()

    config = replace(CONFIG, steps=2, mixed_precision=precision)
    trainer = make_trainer(tmp_path, config, loss_fn=loss_fn)
    trainer.fit()
    assert seen == [dtype, dtype]
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert math.isfinite(log_records(tmp_path)[-1]["loss"])


def test_checkpoints_hook_and_pruning(tmp_path):
    calls = []

    def on_checkpoint(trainer, path):
        calls.append((trainer.step, path.name))
        trainer.model.eval()
        torch.rand(100)  # consuming the global RNG must not change training

    config = replace(CONFIG, steps=12, checkpoint_every=4)
    hooked = make_trainer(
        tmp_path / "hooked", config, model=make_model(dropout=0.3), on_checkpoint=on_checkpoint
    )
    hooked.fit()
    plain = make_trainer(tmp_path / "plain", config, model=make_model(dropout=0.3))
    plain.fit()

    assert calls == [(4, "step_000004"), (8, "step_000008"), (12, "step_000012")]
    checkpoints = tmp_path / "hooked" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_000008", "step_000012"]
    assert (checkpoints / "latest").read_text() == "step_000012\n"
    assert (tmp_path / "hooked" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_same_tensors(hooked.model.state_dict(), plain.model.state_dict())


def test_finished_run_resumes_to_nothing_and_can_be_extended(tmp_path):
    make_trainer(tmp_path, replace(CONFIG, steps=4)).fit()
    again = make_trainer(tmp_path, replace(CONFIG, steps=4)).fit()
    assert (again.step, again.resumed_from, again.final_loss) == (4, 4, None)
    extended = make_trainer(tmp_path, replace(CONFIG, steps=6)).fit()
    assert (extended.step, extended.resumed_from) == (6, 4)
    assert [r["step"] for r in log_records(tmp_path)] == [2, 4, 5, 6]  # 5: a checkpoint


def test_final_state_dict_is_the_ema(tmp_path):
    trainer = make_trainer(tmp_path, replace(CONFIG, steps=3, ema_decay=0.5))
    trainer.fit()
    assert_same_tensors(trainer.final_state_dict(), trainer.ema.module.state_dict())
    assert not torch.equal(trainer.final_state_dict()["0.weight"], trainer.model[0].weight)


def test_resume_into_a_different_model_names_the_file(tmp_path):
    make_trainer(tmp_path, replace(CONFIG, steps=2)).fit()
    with pytest.raises(UsageError, match="model.safetensors"):
        make_trainer(tmp_path, model=nn.Linear(4, 2))


def test_batch_must_split_into_equal_shards(tmp_path):
    with pytest.raises(UsageError, match="equal shards"):
        make_trainer(tmp_path, replace(CONFIG, batch_size=6, grad_accum_steps=4))


def test_shards_count_processes_and_micro_batches():
    assert check_shards(replace(CONFIG, batch_size=8, grad_accum_steps=2), world_size=2) == 4
    with pytest.raises(UsageError, match=r"into 3 equal shards \(3 processes × 1 micro"):
        check_shards(CONFIG, world_size=3)


def test_non_finite_loss_stops_training(tmp_path):
    def nan_loss(model, batch, generator):
        return model(batch["x"]).sum() * float("nan")

    with pytest.raises(FloatingPointError, match="step 2"):
        make_trainer(tmp_path, loss_fn=nan_loss).fit()


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    """A NaN gradient under a finite loss: the step's checkpoint is refused, the last kept."""

    def nan_gradient_loss(model, batch, generator):
        out = model(batch["x"])
        return ((out - batch["y"]) ** 2).mean() + torch.sqrt(0 * out.sum())  # d√u/du = ∞ at 0

    config = replace(CONFIG, steps=2, checkpoint_every=1)
    make_trainer(tmp_path, config).fit()
    good = (tmp_path / "checkpoints" / "step_000002" / "model.safetensors").read_bytes()
    trainer = make_trainer(tmp_path, replace(config, steps=4), loss_fn=nan_gradient_loss)
    with pytest.raises(FloatingPointError, match="weights are not finite after step 3"):
        trainer.fit()
    assert [r["step"] for r in log_records(tmp_path)] == [1, 2, 3]  # step 3's loss was finite
    checkpoints = tmp_path / "checkpoints"
    assert (checkpoints / "latest").read_text() == "step_000002\n"
    assert not (checkpoints / "step_000003").exists()
    assert (checkpoints / "step_000002" / "model.safetensors").read_bytes() == good


@pytest.mark.parametrize(
    "overrides",
    [
        {"steps": 0},
        {"grad_accum_steps": 0},
        {"ema_decay": 1.0},
        {"grad_clip": 0.0},
        {"mixed_precision": "fp16"},
        {"lr_schedule": "linear"},
        {"cosine_from": 5},  # constant schedule
        {"steps": 20, "lr_schedule": "cosine", "cosine_from": 20},  # not before the last step
        {"lr_schedule": "cosine", "warmup_steps": 5, "cosine_from": 4},  # inside warm-up
        {"betas": (0.9, 1.0)},
        {"seed": -1},
    ],
)
def test_train_config_rejects_bad_values(overrides):
    with pytest.raises(ValueError):
        TrainConfig(**overrides)


def test_shard_indices_cover_each_epoch_once_and_split_the_global_batch():
    common = {"batch_size": 8, "num_samples": 12, "seed": 3}
    stream = torch.cat([shard_indices(step, 0, 1, **common) for step in range(6)])  # 4 epochs
    for epoch in stream.reshape(4, 12):
        assert sorted(epoch.tolist()) == list(range(12))
    assert not torch.equal(stream[:12], stream[12:24])  # each epoch reshuffled
    for step in range(6):
        shards = [shard_indices(step, k, 4, **common) for k in range(4)]
        assert torch.equal(torch.cat(shards), shard_indices(step, 0, 1, **common))


def test_move_to_moves_nested_tensors():
    batch = {"x": torch.ones(2), "pair": (torch.zeros(1), "caption"), "list": [torch.ones(1)]}
    moved = move_to(batch, torch.device("meta"))
    assert moved["x"].device.type == "meta" and moved["list"][0].device.type == "meta"
    assert moved["pair"][0].device.type == "meta" and moved["pair"][1] == "caption"
    assert isinstance(moved["pair"], tuple) and isinstance(moved["list"], list)

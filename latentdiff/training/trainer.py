"""The one training loop behind every `latentdiff train …`: resumable exactly, DDP-aware.

A task (autoencoder, text encoder, U-Net) supplies three things:

    model     an nn.Module holding every trained parameter. The loss must run it by calling
              it, `model(...)`: under DDP that call is what synchronises the gradients, so
              jointly trained sub-modules belong behind one `forward`.
    loss_fn   `loss_fn(model, batch, generator) -> Tensor`, a scalar mean over the batch, with
              every random draw (noise, timesteps, caption dropout) taken from `generator`.
    batches   `batches(step, shard, num_shards) -> batch`: shard `shard` of step `step`'s
              global batch, `batch_size // num_shards` samples (tensors, tuples, lists or dicts
              of them; moved to the device here). `shard_indices` does this for in-memory data.

Shards rather than (rank, world_size): gradient accumulation and data parallelism are the same
thing, "split the global batch into equal shards and average their gradients". With
shard = rank · grad_accum_steps + micro-step, two processes and one process accumulating two
micro-batches see the same shards, draw the same random numbers and take the same step.

Exact resume: the data is a pure function of the step, and each micro-step draws its
randomness from seeds derived from (seed, step, shard): the loss's `generator`, and torch's
global RNG (for dropout), which is seeded for the micro-step and restored after it. No random
state is carried from step to step, so a resumed run equals an uninterrupted one bit for bit,
and work done between steps (a preview at a checkpoint) cannot change the training stream.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from latentdiff.config import TrainConfig
from latentdiff.devices import resolve_device
from latentdiff.errors import UsageError
from latentdiff.training.checkpoint import (
    EMA_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    Checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_module_state,
    save_checkpoint,
)
from latentdiff.training.distributed import all_reduce_mean, barrier, init_distributed, wrap_model
from latentdiff.training.ema import EMA
from latentdiff.training.loss_log import LossLog
from latentdiff.training.plots import plot_loss_curve

Batch = Any
LossFn = Callable[[nn.Module, Batch, torch.Generator], torch.Tensor]
BatchFn = Callable[[int, int, int], Batch]

CHECKPOINTS_DIR = "checkpoints"
LOSS_LOG_FILE = "loss.jsonl"
LOSS_PLOT_FILE = "loss.png"

# First element of every derived-seed key, so that no two streams can share a seed.
_LOSS_GENERATOR, _GLOBAL_RNG, _DATA_ORDER = 0, 1, 2


@dataclass(frozen=True)
class TrainSummary:
    """What `Trainer.fit` reports."""

    step: int
    """Steps completed (config.steps unless interrupted)."""
    final_loss: float | None
    """The last loss logged in this session; None if the session ran no step."""
    samples_per_s: float
    """Training throughput of this session, checkpoint writing included."""
    elapsed: float
    """Seconds of training over all sessions of the run."""
    resumed_from: int
    """The step this session started from (0 for a fresh run)."""


def learning_rate_at(step: int, config: TrainConfig) -> float:
    """The learning rate of the update after `step` steps: linear warm-up, then constant, or
    cosine (held at the peak up to `cosine_from` if set)."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    decay_start = config.warmup_steps if config.cosine_from is None else config.cosine_from
    if config.lr_schedule == "constant" or step < decay_start:
        return config.learning_rate
    progress = (step - decay_start) / max(1, config.steps - decay_start)
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def derive_seed(*key: int) -> int:
    """A 64-bit seed from non-negative ints; different keys give independent streams.

    NumPy's SeedSequence hashes the key, so neighbouring steps do not get correlated seeds.
    It ignores trailing zeros, which is why every key starts with a distinct stream tag
    (0–2 are the trainer's own; tasks pick others).
    """
    return int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint64)[0])


def shard_indices(
    step: int, shard: int, num_shards: int, *, batch_size: int, num_samples: int, seed: int
) -> torch.Tensor:
    """Dataset indices for `batches(step, shard, num_shards)` over `num_samples` in-memory samples.

    The data is read as a stream of epochs, each a seeded permutation of all samples; step s
    takes positions [s·B, (s + 1)·B) of the stream and shard k its k-th slice of B / num_shards.
    """
    per_shard = batch_size // num_shards
    start = step * batch_size + shard * per_shard
    positions = torch.arange(start, start + per_shard)
    indices = torch.empty_like(positions)
    for epoch in (positions // num_samples).unique().tolist():
        generator = torch.Generator().manual_seed(derive_seed(_DATA_ORDER, seed, epoch))
        permutation = torch.randperm(num_samples, generator=generator)
        in_epoch = positions // num_samples == epoch
        indices[in_epoch] = permutation[positions[in_epoch] % num_samples]
    return indices


def check_shards(config: TrainConfig, world_size: int) -> int:
    """The number of shards a step's batch is split into: one per micro-batch per process.

    A UsageError if they cannot be equal; the CLI calls this before it writes anything.
    """
    num_shards = world_size * config.grad_accum_steps
    if config.batch_size % num_shards:
        raise UsageError(
            f"batch_size {config.batch_size} does not split into {num_shards} equal shards "
            f"({world_size} processes × {config.grad_accum_steps} micro-batches)"
        )
    return num_shards


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG (CPU and this CUDA device) inside the block; restore it after."""
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else [], device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed(seed)  # the current device, set by init_distributed
        yield


def move_to(batch: Batch, device: torch.device) -> Batch:
    """`batch` with every tensor inside (nested tuples, lists, dicts) moved to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {key: move_to(value, device) for key, value in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(move_to(value, device) for value in batch)
    return batch


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and kernels (ndim ≥ 2) only, not on biases or norm scales."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=config.betas)


@dataclass
class _Window:
    """The steps since the last log line."""

    loss_sum: torch.Tensor
    steps: int = 0
    start: float = field(default_factory=time.perf_counter)


class Trainer:
    """Trains `model` with AdamW up to `config.steps`, continuing from `output_dir` if a
    checkpoint is there.

    `output_dir` receives `checkpoints/` (see checkpoint.py), `loss.jsonl` and `loss.png`.
    `on_checkpoint(trainer, checkpoint_dir)` runs on rank 0 after each checkpoint (e.g. to
    sample previews or evaluate); it may use any RNG without changing the training stream.
    Under torchrun, each process builds the same Trainer; rank 0 alone writes files.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: BatchFn,
        config: TrainConfig,
        output_dir: str | Path,
        device: str | torch.device = "auto",
        *,
        progress: bool = True,
        on_checkpoint: Callable[[Trainer, Path], None] | None = None,
    ) -> None:
        self.dist, self.device = init_distributed(resolve_device(device))
        self.num_shards = check_shards(config, self.dist.world_size)
        self.config, self.loss_fn, self.batches = config, loss_fn, batches
        self.progress, self.on_checkpoint = progress, on_checkpoint
        self.output_dir = _make_dir(Path(output_dir))
        self.loss_log = LossLog(self.output_dir / LOSS_LOG_FILE)
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(self.model, config)
        self.ema = EMA(self.model, config.ema_decay) if config.ema_decay is not None else None
        self.step, self.elapsed = 0, 0.0
        self._resume()
        # What the loss calls: the DDP wrapper under torchrun, else the model itself.
        self.wrapped_model = wrap_model(self.model, self.dist, self.device)

    @property
    def checkpoints_dir(self) -> Path:
        return self.output_dir / CHECKPOINTS_DIR

    def final_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights to ship: the EMA's when EMA is on, else the trained module's."""
        return (self.ema.module if self.ema is not None else self.model).state_dict()

    def fit(self) -> TrainSummary:
        """Train from the current step to `config.steps`, logging and checkpointing on the way."""
        self.model.train()
        start_step, start_time, elapsed_before = self.step, time.perf_counter(), self.elapsed
        window, final_loss = self._new_window(), None
        with self._progress_bar() as bar:
            while self.step < self.config.steps:
                window.loss_sum += self._train_step()
                window.steps += 1
                self.step += 1
                self.elapsed = elapsed_before + time.perf_counter() - start_time
                if self._is_checkpoint_step() or self.step % self.config.log_every == 0:
                    final_loss = self._log(window, bar)
                    if self._is_checkpoint_step():
                        self._save_checkpoint()
                    window = self._new_window()
                bar.update()
        seconds = time.perf_counter() - start_time
        samples = (self.step - start_step) * self.config.batch_size
        return TrainSummary(
            step=self.step,
            final_loss=final_loss,
            samples_per_s=samples / seconds if samples else 0.0,
            elapsed=self.elapsed,
            resumed_from=start_step,
        )

    # ── one step ──────────────────────────────────────────────────────────────────────────

    def _train_step(self) -> torch.Tensor:
        """One optimizer update over this process's micro-batches; returns their mean loss."""
        config = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate_at(self.step, config)
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(config.grad_accum_steps):
            shard = self.dist.rank * config.grad_accum_steps + micro
            with self._gradient_sync(micro == config.grad_accum_steps - 1):
                loss_sum += self._micro_step(shard)
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, self.step)
        return loss_sum / config.grad_accum_steps

    def _micro_step(self, shard: int) -> torch.Tensor:
        """Forward, loss and backward of one shard; its randomness comes from (seed, step, shard)."""
        key = (self.config.seed, self.step, shard)
        generator = torch.Generator(self.device).manual_seed(derive_seed(_LOSS_GENERATOR, *key))
        bf16 = self.config.mixed_precision == "bf16"
        with seeded_global_rng(derive_seed(_GLOBAL_RNG, *key), self.device):
            batch = move_to(self.batches(self.step, shard, self.num_shards), self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = self.loss_fn(self.wrapped_model, batch, generator)
            # Each micro-batch's loss is a mean over its shard; dividing by their number
            # makes the accumulated gradient that of the mean over the whole batch.
            (loss / self.config.grad_accum_steps).backward()
        return loss.detach().float()

    def _gradient_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        """DDP averages gradients over processes only on the last micro-batch of a step."""
        if sync or not self.dist.enabled:
            return contextlib.nullcontext()
        return self.wrapped_model.no_sync()

    # ── logging and checkpoints ───────────────────────────────────────────────────────────

    def _is_checkpoint_step(self) -> bool:
        return self.step % self.config.checkpoint_every == 0 or self.step == self.config.steps

    def _new_window(self) -> _Window:
        return _Window(loss_sum=torch.zeros((), device=self.device))

    def _log(self, window: _Window, bar: tqdm) -> float:
        """Append the window's mean loss (over all processes) to loss.jsonl; return it."""
        loss = all_reduce_mean(window.loss_sum / window.steps, self.dist).item()
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {self.step}")
        lr = learning_rate_at(self.step - 1, self.config)
        samples_per_s = window.steps * self.config.batch_size / (time.perf_counter() - window.start)
        if self.dist.is_main:
            self.loss_log.append(
                {
                    "step": self.step,
                    "loss": loss,
                    "lr": lr,
                    "samples_per_s": round(samples_per_s, 2),
                    "elapsed": round(self.elapsed, 2),
                }
            )
            bar.set_postfix(loss=f"{loss:.4g}", samples_s=f"{samples_per_s:.1f}", lr=f"{lr:.2e}")
        return loss

    def _progress_bar(self) -> tqdm:
        # disable=None: tqdm turns itself off when stderr is not a terminal.
        enabled = self.progress and self.dist.is_main
        return tqdm(
            total=self.config.steps,
            initial=self.step,
            unit="step",
            dynamic_ncols=True,
            disable=None if enabled else True,
        )

    def _save_checkpoint(self) -> None:
        # A finite loss does not prove finite weights (its step's update comes after it); a
        # checkpoint of NaN weights would make every resume diverge again.
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise FloatingPointError(f"the weights are not finite after step {self.step}")
        if self.dist.is_main:
            checkpoint = Checkpoint(
                step=self.step,
                model=self.model.state_dict(),
                optimizer=self.optimizer.state_dict(),
                ema=self.ema.state_dict() if self.ema is not None else None,
                elapsed=self.elapsed,
                config=dataclasses.asdict(self.config),
            )
            path = save_checkpoint(self.checkpoints_dir, checkpoint, self.config.keep_checkpoints)
            plot_loss_curve(self.loss_log.path, self.output_dir / LOSS_PLOT_FILE)
            if self.on_checkpoint is not None:
                self.on_checkpoint(self, path)
                self.model.train()
        barrier(self.dist)

    def _resume(self) -> None:
        """Continue from the latest checkpoint, if any; cut the loss log back to its step."""
        path = latest_checkpoint(self.checkpoints_dir)
        if path is not None:
            self._load(load_checkpoint(path), path)
        if self.dist.is_main:
            self.loss_log.truncate(self.step)

    def _load(self, checkpoint: Checkpoint, path: Path) -> None:
        load_module_state(self.model, checkpoint.model, path / MODEL_FILE)
        if self.ema is not None:
            # A run that turns EMA on at resume starts averaging from the current weights.
            ema_state = checkpoint.model if checkpoint.ema is None else checkpoint.ema
            load_module_state(self.ema.module, ema_state, path / EMA_FILE)
        try:
            self.optimizer.load_state_dict(checkpoint.optimizer)
        except (ValueError, KeyError) as error:
            message = f"{path / OPTIMIZER_FILE} does not fit this model: {error}"
            raise UsageError(message) from None
        self.step, self.elapsed = checkpoint.step, checkpoint.elapsed


def _make_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create output directory {path}: {error}") from None
    return path

"""A tiny training task, run by test_distributed.py under torchrun and in-process as reference.

Usage: `python -m torch.distributed.run --nproc_per_node=2 --standalone ddp_worker.py OUT_DIR`
trains every case of CASES into OUT_DIR/<case>/.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from latentdiff.config import TrainConfig
from latentdiff.training.distributed import shutdown_distributed
from latentdiff.training.trainer import Trainer, shard_indices

BATCH_SIZE = 8
NUM_SAMPLES = 40
_data_rng = torch.Generator().manual_seed(0)
X = torch.randn(NUM_SAMPLES, 4, generator=_data_rng)
Y = X @ torch.randn(4, 2, generator=_data_rng)
CONFIG = TrainConfig(
    steps=4,
    batch_size=BATCH_SIZE,
    learning_rate=1e-2,
    ema_decay=0.9,
    checkpoint_every=4,
    log_every=1,
)


def batches(step: int, shard: int, num_shards: int) -> tuple[torch.Tensor, torch.Tensor]:
    index = shard_indices(
        step, shard, num_shards, batch_size=BATCH_SIZE, num_samples=NUM_SAMPLES, seed=0
    )
    return X[index], Y[index]


def regression_loss(model: nn.Module, batch, generator: torch.Generator) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def noisy_loss(model: nn.Module, batch, generator: torch.Generator) -> torch.Tensor:
    """Randomness from the generator (input noise) and from the global RNG (dropout)."""
    x, y = batch
    noise = torch.randn(x.shape, generator=generator)
    return ((model(x + 0.1 * noise) - y) ** 2).mean()


CASES = {"regression": (regression_loss, 0.0), "noisy": (noisy_loss, 0.3)}


def make_trainer(case: str, output_dir: Path, grad_accum_steps: int = 1) -> Trainer:
    loss_fn, dropout = CASES[case]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(dropout), nn.ReLU(), nn.Linear(16, 2))
    config = replace(CONFIG, grad_accum_steps=grad_accum_steps)
    return Trainer(model, loss_fn, batches, config, output_dir, "cpu", progress=False)


if __name__ == "__main__":
    for name in CASES:
        make_trainer(name, Path(sys.argv[1]) / name).fit()
    shutdown_distributed()

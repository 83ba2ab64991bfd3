import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn
from torch.testing import assert_close

from latentdiff.training.checkpoint import EMA_FILE, MODEL_FILE, load_weights
from latentdiff.training.distributed import (
    Distributed,
    all_reduce_mean,
    init_distributed,
    wrap_model,
)

WORKER = Path(__file__).with_name("ddp_worker.py")
REPO = Path(__file__).resolve().parents[2]


def load_worker():
    spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def final_weights(output_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return load_weights(output_dir / "checkpoints" / "step_000004" / name)[0]


def logged(output_dir: Path) -> list[tuple[int, float]]:
    lines = (output_dir / "loss.jsonl").read_text().splitlines()
    return [(record["step"], record["loss"]) for record in map(json.loads, lines)]


def test_single_process_without_torchrun(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    context, device = init_distributed(torch.device("cpu"))
    assert context == Distributed(rank=0, world_size=1, local_rank=0)
    assert context.is_main and not context.enabled
    assert device == torch.device("cpu")
    model = nn.Linear(2, 2)
    assert wrap_model(model, context, device) is model
    assert_close(all_reduce_mean(torch.tensor(3.0), context), torch.tensor(3.0))


def test_two_processes_equal_one_process_on_the_same_global_batch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    command += ["--standalone", str(WORKER), str(tmp_path / "ddp")]
    ddp = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)

    worker = load_worker()  # the references train while the two processes run
    # A mean loss over two equal shards, averaged by DDP, is the full-batch loss's gradient.
    worker.make_trainer("regression", tmp_path / "single").fit()
    # With noise and dropout, two processes draw what one process draws for two micro-batches.
    worker.make_trainer("noisy", tmp_path / "accumulated", grad_accum_steps=2).fit()
    _, stderr = ddp.communicate(timeout=300)
    assert ddp.returncode == 0, stderr[-3000:]

    for case, reference in (("regression", "single"), ("noisy", "accumulated")):
        ddp_dir, reference_dir = tmp_path / "ddp" / case, tmp_path / reference
        for name in (MODEL_FILE, EMA_FILE):
            assert_close(
                final_weights(ddp_dir, name),
                final_weights(reference_dir, name),
                atol=1e-5,
                rtol=1e-5,
            )
        ddp_log, reference_log = logged(ddp_dir), logged(reference_dir)
        assert [step for step, _ in ddp_log] == [1, 2, 3, 4]  # rank 0 alone wrote the log
        assert_close(
            [loss for _, loss in ddp_log], [loss for _, loss in reference_log], atol=1e-5, rtol=1e-5
        )
    # The cases differ, so the comparison above is not vacuous.
    regression = final_weights(tmp_path / "single", MODEL_FILE)
    noisy = final_weights(tmp_path / "accumulated", MODEL_FILE)
    assert not torch.allclose(regression["0.weight"], noisy["0.weight"])

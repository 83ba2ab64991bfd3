"""`evaluate_adherence` and `latentdiff evaluate model`: generate the suite with a model, score it."""

import json
from pathlib import Path

import numpy as np
import pytest

from latentdiff.cli import main
from latentdiff.evaluation.adherence import evaluate_adherence, generate_for_prompts
from latentdiff.evaluation.scoring import CATEGORIES
from latentdiff.evaluation.suite import evaluation_suite
from latentdiff.pipelines.pipeline import load_pipeline
from latentdiff.pipelines.request import GenerationRequest

PROMPTS = evaluation_suite()[:5]
REQUEST = GenerationRequest(prompt="", num_inference_steps=2, sampler="ddim", seed=3)


def test_image_k_is_the_lone_run_with_seed_plus_k(tiny_model_dir: Path) -> None:
    pipe = load_pipeline(tiny_model_dir, device="cpu")
    images = generate_for_prompts(pipe, PROMPTS, REQUEST, batch_size=2)
    assert len(images) == len(PROMPTS)
    for k in (0, 3, 4):
        alone = pipe(PROMPTS[k], num_inference_steps=2, sampler="ddim", seed=3 + k)[0]
        # Batched convolutions round differently from a batch of one by ~1e-6.
        assert np.abs(images[k].astype(int) - np.asarray(alone).astype(int)).max() <= 1


def test_report_counts_every_prompt_in_its_categories(tiny_model_dir: Path) -> None:
    pipe = load_pipeline(tiny_model_dir, device="cpu")
    seen: list[int] = []
    report = evaluate_adherence(pipe, PROMPTS, REQUEST, batch_size=2, on_batch=seen.append)
    assert seen == [2, 2, 1]
    assert len(report.results) == len(PROMPTS)
    assert report.bad_prompts == ()
    assert sum(report.total.values()) >= len(PROMPTS)  # each prompt is in ≥ 1 category


def test_cli_prints_the_six_categories_and_overall(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["evaluate", "model", "--model", str(tiny_model_dir), "--limit", "3"]
    status = main([*args, "--steps", "1", "--sampler", "euler", "--device", "cpu", "--json"])
    assert status == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {*CATEGORIES, "overall"}
    assert all(v is None or 0.0 <= v <= 1.0 for v in result.values())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--limit", "0"], "--limit"),
        (["--steps", "0"], "steps"),
        (["--sampler", "plms"], "unknown sampler"),
        (["--model", "/nonexistent/model"], "no model folder"),
    ],
)
def test_cli_bad_input_is_one_line_and_status_2(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture, flags: list[str], message: str
) -> None:
    status = main(["evaluate", "model", "--model", str(tiny_model_dir), *flags])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and message in err

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
    args += ["--width", "48", "--height", "48"]  # the tiny model's own 16 px are refused
    status = main([*args, "--steps", "1", "--sampler", "euler", "--device", "cpu", "--json"])
    assert status == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    result = json.loads(captured.out)
    assert set(result) == {*CATEGORIES, "overall"}
    assert all(v is None or 0.0 <= v <= 1.0 for v in result.values())


def test_cli_table_names_the_sampling_it_used_the_models_defaults_unless_given(
    tiny_model_with_defaults_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["evaluate", "model", "--model", str(tiny_model_with_defaults_dir), "--limit", "2"]
    args += ["--width", "48", "--height", "48", "--steps", "1", "--sampler", "euler"]
    assert main([*args, "--device", "cpu"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "2 prompts, euler 1 steps, guidance 3, rescale 0.5, guided at σ in (0.5, inf]"
    assert (
        main([*args, "--device", "cpu", "--guidance-scale", "4", "--guidance-interval", "0", "inf"])
        == 0
    )
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "2 prompts, euler 1 steps, guidance 4, rescale 0.5, guided at σ in (0, inf]"


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


FAST = ["--steps", "1", "--sampler", "euler", "--device", "cpu", "--json"]


@pytest.mark.parametrize(
    ("size_flags", "shown"),
    [([], "model {model}'s size is 16×16 px"), (["--width", "64", "--height", "32"], "64×32")],
)
def test_cli_refuses_a_size_too_small_to_judge_before_generating(
    tiny_model_dir: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    size_flags: list[str],
    shown: str,
) -> None:
    import latentdiff.evaluation.adherence

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("generated images it cannot judge")

    monkeypatch.setattr(latentdiff.evaluation.adherence, "generate_for_prompts", must_not_run)
    status = main(["evaluate", "model", "--model", str(tiny_model_dir), *size_flags, *FAST])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert shown.format(model=tiny_model_dir) in err and "at least 40 px per side" in err


def test_cli_warns_once_near_the_detectors_limit(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["evaluate", "model", "--model", str(tiny_model_dir), "--limit", "2"]
    assert main([*args, "--width", "40", "--height", "40", *FAST]) == 0
    captured = capsys.readouterr()
    assert (
        captured.err.count("\n") == 1 and "warning: --width × --height is 40×40 px" in captured.err
    )
    assert set(json.loads(captured.out)) == {*CATEGORIES, "overall"}


def test_cli_warns_per_unparseable_prompt_and_counts_it_wrong(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na pink circle\n")
    args = ["evaluate", "model", "--model", str(tiny_model_dir), "--prompts", str(prompts)]
    assert main([*args, "--width", "48", "--height", "48", *FAST]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1
    assert "warning: prompt 2 counted wrong" in captured.err and "pink" in captured.err
    result = json.loads(captured.out)
    # The bad prompt is in every category, wrong; the good one only in `single`.
    assert result["counting"] == result["two_object"] == result["held_out"] == 0.0


def test_cli_refuses_a_prompts_file_where_none_parses_before_loading_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello world\na pink circle\n")
    status = main(["evaluate", "model", "--model", "/nonexistent/model", "--prompts", str(prompts)])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "no prompt in the file parses" in err and "hello" in err

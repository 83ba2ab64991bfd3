import contextlib
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentdiff.cli import main
from latentdiff.config import (
    AutoencoderConfig,
    CLIPConfig,
    ImageEncoderConfig,
    TextEncoderConfig,
    from_dict,
    tiny_config,
)
from latentdiff.models.clip import CLIP
from latentdiff.models.tokenizer import build_world_tokenizer
from latentdiff.pipelines.pipeline import load_pipeline
from latentdiff.training.checkpoint import load_weights, save_weights
from latentdiff.training.clip import save_clip
from latentdiff.training.unet import LatentCache

COMMON = ["--preset", "tiny", "--batch-size", "4", "--checkpoint-every", "2", "--no-progress"]
COMMON += ["--device", "cpu"]


def train(*args: str) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = main(["train", *args])
    return status, stdout.getvalue()


def loss_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "loss.jsonl").read_text().splitlines()]


@dataclass
class AutoencoderRun:
    folder: Path
    first_records: list[dict]
    outputs: list[tuple[int, str]]


@pytest.fixture(scope="module")
def autoencoder_run(tmp_path_factory: pytest.TempPathFactory) -> AutoencoderRun:
    """`train autoencoder` for 3 steps, then the same command with --steps 5 (a resume)."""
    folder = tmp_path_factory.mktemp("autoencoder_run")
    args = ["autoencoder", *COMMON, "--size", "16", "--output-dir", str(folder)]
    first = train(*args, "--steps", "3")
    first_records = loss_records(folder)
    second = train(*args, "--steps", "5")
    return AutoencoderRun(folder, first_records, [first, second])


@pytest.fixture(scope="module")
def unet_run(autoencoder_run: AutoencoderRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("unet_run")
    status, _ = train(
        "unet", *COMMON, "--autoencoder", str(autoencoder_run.folder), "--cache-size", "32",
        "--steps", "3", "--output-dir", str(folder),
    )  # fmt: skip
    assert status == 0
    return folder


def test_train_autoencoder_writes_weights_config_and_loss_log(
    autoencoder_run: AutoencoderRun,
) -> None:
    folder = autoencoder_run.folder
    assert [status for status, _ in autoencoder_run.outputs] == [0, 0]
    assert autoencoder_run.outputs[0][1].startswith("autoencoder: step 3, loss ")
    assert "PSNR" in autoencoder_run.outputs[0][1]
    config = json.loads((folder / "autoencoder_config.json").read_text())
    assert from_dict(AutoencoderConfig, config) == tiny_config().autoencoder
    weights, _ = load_weights(folder / "autoencoder.safetensors")
    assert "quant_conv.weight" in weights
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert [r["step"] for r in autoencoder_run.first_records] == [2, 3]


def test_rerun_with_more_steps_resumes_without_duplicate_steps(
    autoencoder_run: AutoencoderRun,
) -> None:
    records = loss_records(autoencoder_run.folder)
    assert [r["step"] for r in records] == [2, 3, 4, 5]
    # Resumed, not restarted: the first session's records are kept as they were written.
    assert records[:2] == autoencoder_run.first_records
    assert autoencoder_run.outputs[1][1].startswith("autoencoder: step 5, loss ")
    latest = (autoencoder_run.folder / "checkpoints" / "latest").read_text().strip()
    assert latest == "step_000005"


def test_train_unet_writes_cache_tokenizer_and_a_loadable_model(
    autoencoder_run: AutoencoderRun, unet_run: Path
) -> None:
    cache = LatentCache.load(unet_run / "latents.safetensors")
    assert cache.latents.shape == (32, 4, 8, 8)  # tiny: 16 px, f = 2
    assert cache.input_ids.shape == (32, tiny_config().text_encoder.context_length)
    assert (unet_run / "tokenizer.json").read_text() == (
        unet_run / "model" / "tokenizer.json"
    ).read_text()
    pipe = load_pipeline(unet_run / "model", device="cpu")
    autoencoder_config = pipe.components.config.autoencoder
    assert autoencoder_config.latents_mean == cache.latents_mean
    assert autoencoder_config.latents_std == cache.latents_std
    (image,) = pipe("a red circle", num_inference_steps=2, seed=0)
    assert image.size == (16, 16)
    assert np.array(image).std() > 0
    assert [r["step"] for r in loss_records(unet_run)] == [2, 3]


def test_exported_model_holds_the_trained_weights(
    autoencoder_run: AutoencoderRun, unet_run: Path
) -> None:
    bundle, _ = load_weights(unet_run / "model" / "model.safetensors")
    ema, _ = load_weights(unet_run / "checkpoints" / "step_000003" / "ema.safetensors")
    autoencoder, _ = load_weights(autoencoder_run.folder / "autoencoder.safetensors")
    assert set(ema) == {k for k in bundle if not k.startswith("autoencoder.")}
    for key, tensor in ema.items():
        assert torch.equal(bundle[key], tensor.half()), key
    for key, tensor in autoencoder.items():
        assert torch.equal(bundle[f"autoencoder.{key}"], tensor.half()), key


def test_finetune_decoder_keeps_the_encoder_and_bakes_into_a_model_folder(
    autoencoder_run: AutoencoderRun, unet_run: Path, tmp_path: Path, capsys,
    assert_autoencoder_baked_in,
) -> None:  # fmt: skip
    """A decoder fine-tune leaves the latent space alone, so any model trained on it can take
    the new decoder: with --vae at load time, or baked in by `convert --to latentdiff`."""
    folder = tmp_path / "decoder"
    status, out = train(
        "autoencoder", *COMMON, "--size", "16", "--steps", "2", "--lr", "1e-2", "--warmup", "1",
        "--edge-weight", "5", "--finetune-decoder", str(autoencoder_run.folder),
        "--output-dir", str(folder),
    )  # fmt: skip
    assert status == 0 and out.startswith("autoencoder: step 2")
    base, _ = load_weights(autoencoder_run.folder / "autoencoder.safetensors")
    tuned, _ = load_weights(folder / "autoencoder.safetensors")
    frozen = [k for k in base if k.startswith(("encoder.", "quant_conv."))]
    assert frozen and all(torch.equal(tuned[k], base[k]) for k in frozen)
    trained = [k for k in base if k.startswith(("decoder.", "post_quant_conv."))]
    assert all(not torch.equal(tuned[k], base[k]) for k in trained)

    baked = tmp_path / "baked"
    model = unet_run / "model"
    assert (
        main(["convert", str(model), str(baked), "--to", "latentdiff", "--vae", str(folder)]) == 0
    )
    assert_autoencoder_baked_in(model, baked, tuned)

    def image(*args: str) -> np.ndarray:
        out = tmp_path / "x.png"
        assert main(["generate", "a red circle", "--steps", "2", "--seed", "3", "--device",
                     "cpu", "--output", str(out), *args]) == 0  # fmt: skip
        return np.array(Image.open(out).convert("RGB"))

    with_vae = image("--model", str(model), "--vae", str(folder)).astype(int)
    assert np.abs(image("--model", str(baked)) - with_vae).max() <= 1  # baked in fp16
    assert np.abs(image("--model", str(model)) - with_vae).mean() > 5
    capsys.readouterr()


def test_init_from_trains_every_weight_of_a_run_into_a_new_latent_space(
    autoencoder_run: AutoencoderRun, tmp_path: Path
) -> None:
    # A run whose weights no initialisation would give: every weight of a finished run + 0.5.
    start = tmp_path / "start"
    start.mkdir()
    shutil.copy(autoencoder_run.folder / "autoencoder_config.json", start)
    trained, _ = load_weights(autoencoder_run.folder / "autoencoder.safetensors")
    base = {k: v + 0.5 for k, v in trained.items()}
    save_weights(start / "autoencoder.safetensors", base)
    folder = tmp_path / "robust"
    status, out = train(
        "autoencoder", *COMMON, "--size", "16", "--steps", "2", "--lr", "1e-2", "--warmup", "1",
        "--hinge-weight", "10", "--latent-noise", "0.3", "--init-from", str(start),
        "--output-dir", str(folder),
    )  # fmt: skip
    assert status == 0 and out.startswith("autoencoder: step 2")
    tuned, _ = load_weights(folder / "autoencoder.safetensors")
    assert tuned.keys() == base.keys()
    # Started from the run's weights (two steps at 1e-2 move none by more than a few 1e-2)
    # and trained all of them, encoder and decoder.
    assert all((tuned[k] - base[k]).abs().max() < 0.1 for k in base)
    assert all(not torch.equal(tuned[k], base[k]) for k in base if k.endswith("conv_in.weight"))
    config = json.loads((folder / "autoencoder_config.json").read_text())
    assert config["latents_mean"] is None and config["latents_std"] is None


@pytest.fixture
def broken_autoencoder(autoencoder_run: AutoencoderRun, tmp_path: Path) -> Path:
    folder = tmp_path / "broken"
    folder.mkdir()
    shutil.copy(autoencoder_run.folder / "autoencoder.safetensors", folder)
    (folder / "autoencoder_config.json").write_text("{ not json")
    return folder


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["autoencoder", "--preset", "huge"], "unknown preset 'huge'"),
        (["autoencoder", "--batch-size", "6", "--grad-accum", "4"], "does not split into 4"),
        (["autoencoder", "--steps", "0"], "steps must be at least 1"),
        (["autoencoder", "--size", "15"], "--size must be"),
        (["autoencoder", "--finetune-decoder", "{tmp}/none"], "holds no finished autoencoder"),
        (["autoencoder", "--edge-weight", "-1"], "--edge-weight must be ≥ 0"),
        (["autoencoder", "--hinge-weight", "nan"], "--hinge-weight must be ≥ 0"),
        (["autoencoder", "--latent-noise", "-0.1"], "--latent-noise must be ≥ 0"),
        (["autoencoder", "--init-from", "{tmp}/none"], "holds no finished autoencoder"),
        (
            ["autoencoder", "--init-from", "{good}", "--finetune-decoder", "{good}"],
            "exclude each other",
        ),
        (["unet", "--autoencoder", "{tmp}/no-such-run"], "holds no finished autoencoder run"),
        (["unet", "--autoencoder", "{broken}"], "cannot read"),
        (["unet", "--autoencoder", "{good}", "--cache-size", "0"], "--cache-size must be"),
        (["unet", "--autoencoder", "{good}", "--cond-drop", "5"], "--cond-drop must be"),
        (["unet", "--autoencoder", "{good}", "--text-encoder", "{tmp}/no-clip"], "no-clip"),
        (
            ["unet", "--preset", "shapes-v1", "--autoencoder", "{good}", "--zero-terminal-snr"],
            "needs prediction_type v",
        ),
        (  # the shapes preset is v-prediction at zero terminal SNR
            [
                "unet",
                "--preset",
                "shapes",
                "--autoencoder",
                "{good}",
                "--prediction-type",
                "epsilon",
            ],
            "needs prediction_type v",
        ),
        (
            ["unet", "--preset", "shapes", "--autoencoder", "{good}", "--weighting", "min_snr"],
            "add --weighting none",
        ),
        (["unet", "--autoencoder", "{good}", "--init-from", "{tmp}/nothing"], "nothing"),
        (["unet", "--autoencoder", "{good}", "--init-from", "{good}"], "model folder"),
        (
            ["unet", "--autoencoder", "{good}", "--batch-size", "6", "--grad-accum", "4"],
            "does not split into 4",
        ),
        (["autoencoder", "--cosine-from", "1"], "cosine_from needs the cosine schedule"),
        (["unet", "--autoencoder", "{good}", "--high-noise-share", "1.5"], "a probability"),
        (["unet", "--autoencoder", "{good}", "--high-noise-from", "1000"], "timestep of 0–999"),
        (["unet", "--autoencoder", "{good}", "--scene-mix", "single=a"], "not KIND=WEIGHT"),
        (["unet", "--autoencoder", "{good}", "--scene-mix", "pair=1"], "unknown prompt kind"),
        (["unet", "--autoencoder", "{good}", "--scene-mix", "single=-1"], "finite and ≥ 0"),
        (["unet", "--autoencoder", "{good}", "--scene-mix", "single=0"], "a positive weight"),
        (["unet", "--autoencoder", "{good}", "--repa-weight", "-1"], "a finite λ ≥ 0"),
        (["unet", "--autoencoder", "{good}", "--repa-weight", "nan"], "a finite λ ≥ 0"),
        (["unet", "--autoencoder", "{good}", "--repa-encoder", "{tmp}"], "needs --repa-weight"),
        (
            ["unet", "--autoencoder", "{good}", "--repa-weight", "1", "--repa-encoder", "{tmp}"],
            "cannot read CLIP config",
        ),
        (  # the bundled CLIP sees 64² renders; the tiny model's are 16²
            ["unet", "--autoencoder", "{good}", "--repa-weight", "1"],
            "image tower takes 64² images; the tiny model's renders are 16²",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(
    args: list[str],
    message: str,
    broken_autoencoder: Path,
    autoencoder_run: AutoencoderRun,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    args = [
        arg.format(tmp=tmp_path, broken=broken_autoencoder, good=autoencoder_run.folder)
        for arg in args
    ]
    base = ["--preset", "tiny", "--no-progress", "--device", "cpu"]
    status = main(["train", args[0], *base, *args[1:], "--output-dir", str(tmp_path / "run")])
    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("latentdiff train: error: "), err
    assert message in err
    assert not (tmp_path / "run" / "loss.jsonl").exists()
    if args[0] == "unet":  # checked before the run folder is made
        assert not (tmp_path / "run").exists()


def test_batch_that_does_not_split_over_the_torchrun_processes_is_refused_first(
    autoencoder_run: AutoencoderRun,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")  # as torchrun sets it; checked before joining a group
    status, _ = train(
        "unet", *COMMON, "--autoencoder", str(autoencoder_run.folder),
        "--output-dir", str(tmp_path / "run"),
    )  # fmt: skip
    assert status == 2
    assert "batch_size 4 does not split into 3 equal shards (3 processes" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def unet_rerun(autoencoder_run: AutoencoderRun, folder: Path, *args: str) -> tuple[int, str]:
    """`unet_run`'s command again, in `folder`."""
    return train(
        "unet", *COMMON, "--autoencoder", str(autoencoder_run.folder), "--cache-size", "32",
        "--steps", "3", "--output-dir", str(folder), *args,
    )  # fmt: skip


def test_rerun_of_a_run_killed_before_its_final_export_exports_it(
    autoencoder_run: AutoencoderRun, unet_run: Path, tmp_path: Path
) -> None:
    """Killed after the last checkpoint, before its export: model/ is the step-2 one and
    snapshots/step_000003 is missing. The rerun trains no step, yet exports step 3."""
    folder = tmp_path / "run"
    shutil.copytree(unet_run, folder)
    shutil.rmtree(folder / "model")
    shutil.copytree(folder / "snapshots" / "step_000002", folder / "model")
    shutil.rmtree(folder / "snapshots" / "step_000003")

    status, out = unet_rerun(autoencoder_run, folder)
    assert status == 0 and out.startswith("unet: step 3, loss None"), out
    ema, _ = load_weights(folder / "checkpoints" / "step_000003" / "ema.safetensors")
    for exported in (folder / "model", folder / "snapshots" / "step_000003"):
        bundle, _ = load_weights(exported / "model.safetensors")
        for key, tensor in ema.items():
            assert torch.equal(bundle[key], tensor.half()), (exported, key)
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


def test_an_export_cut_short_leaves_the_previous_model_folder(
    autoencoder_run: AutoencoderRun,
    unet_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "run"
    shutil.copytree(unet_run, folder)
    before = {p.name: p.read_bytes() for p in (folder / "model").iterdir()}

    def killed_midway(components, model_folder: Path) -> None:
        (model_folder / "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr("latentdiff.training.unet.save_components", killed_midway)
    assert unet_rerun(autoencoder_run, folder)[0] == 130
    assert "interrupted" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (folder / "model").iterdir()} == before
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


def test_divergence_is_one_line_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "run"
    args = ["autoencoder", *COMMON, "--size", "16", "--output-dir", str(folder)]
    assert train(*args, "--steps", "2")[0] == 0
    checkpoint = folder / "checkpoints" / "step_000002"
    good = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
    capsys.readouterr()

    # Step 3's update at lr 1e30 blows the weights up; step 4's loss is NaN.
    status, _ = train(*args, "--steps", "4", "--lr", "1e30", "--warmup", "0")
    assert status == 2
    err = capsys.readouterr().err
    assert err == (
        "latentdiff train: error: training diverged: loss is nan at step 4; rerun with a lower "
        "--lr than 1e+30 to continue from the last checkpoint\n"
    )
    assert (folder / "checkpoints" / "latest").read_text() == "step_000002\n"
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir()} == good
    assert [r["step"] for r in loss_records(folder)] == [2]


def test_train_leaves_the_process_group_it_was_in(tmp_path: Path, capsys) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        status = main(["train", "autoencoder", "--size", "15", "--output-dir", str(tmp_path)])
        assert status == 2  # it failed, and still left the group
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    capsys.readouterr()


def test_init_from_fine_tunes_a_model_with_a_zero_terminal_snr_v_objective(
    autoencoder_run: AutoencoderRun, unet_run: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "v_run"
    status, _ = train(
        "unet", *COMMON, "--autoencoder", str(autoencoder_run.folder), "--cache-size", "32",
        "--steps", "1", "--lr", "1e-30", "--warmup", "0", "--ema-decay", "0",
        "--prediction-type", "v_prediction", "--zero-terminal-snr", "--weighting", "none",
        "--init-from", str(unet_run / "model"), "--output-dir", str(folder),
    )  # fmt: skip
    assert status == 0
    start, _ = load_weights(unet_run / "model" / "model.safetensors")
    tuned, _ = load_weights(folder / "model" / "model.safetensors")
    # One step at a vanishing learning rate: the run began from the given weights.
    for key in [k for k in start if k.startswith(("unet.", "text_encoder."))]:
        torch.testing.assert_close(tuned[key], start[key], rtol=0, atol=1e-3, msg=key)
    pipe = load_pipeline(folder / "model", device="cpu")
    diffusion = pipe.components.config.diffusion
    assert (diffusion.prediction_type, diffusion.rescale_betas_zero_snr) == ("v_prediction", True)
    assert pipe.scheduler.spacing == "trailing"
    (image,) = pipe("a red circle", num_inference_steps=2, seed=0)
    assert np.isfinite(np.array(image, dtype=float)).all()


def test_the_high_noise_range_defaults_to_the_losses_constant() -> None:
    from latentdiff.cli import build_parser
    from latentdiff.training.losses import HIGH_NOISE_FROM

    args = build_parser().parse_args(["train", "unet", "--autoencoder", "a", "--output-dir", "o"])
    assert (args.high_noise_share, args.high_noise_from) == (0.0, HIGH_NOISE_FROM)


def test_the_scene_mix_is_normalised_and_names_every_kind() -> None:
    from latentdiff.cli.train import parse_scene_mix

    mix = parse_scene_mix("two_object=3, single=1")
    assert mix == {"single": 0.25, "counting": 0.0, "two_object": 0.75}


def test_init_from_keeps_the_models_latent_normalisation_on_another_scene_mix(
    autoencoder_run: AutoencoderRun, unet_run: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "mix_run"
    args = [
        "unet", *COMMON, "--autoencoder", str(autoencoder_run.folder), "--cache-size", "16",
        "--steps", "1", "--init-from", str(unet_run / "model"), "--output-dir", str(folder),
    ]  # fmt: skip
    status, _ = train(*args, "--scene-mix", "two_object=1")
    assert status == 0
    cache = LatentCache.load(folder / "latents.safetensors")
    init = json.loads((unet_run / "model" / "config.json").read_text())["autoencoder"]
    assert list(cache.latents_mean) == init["latents_mean"]
    assert list(cache.latents_std) == init["latents_std"]
    tuned = json.loads((folder / "model" / "config.json").read_text())["autoencoder"]
    assert tuned["latents_mean"] == init["latents_mean"]
    # The same run folder with the world's mix is another cache: refused, not reused.
    status, _ = train(*args)
    assert status == 2


def test_init_from_a_unet_without_the_presets_token_layout_starts_its_maps_at_zero(
    unet_run: Path,
) -> None:
    from latentdiff.cli.train import load_init_unet, read_init_model
    from latentdiff.errors import UsageError
    from latentdiff.models.unet import UNet

    config = tiny_config()
    layout = dataclasses.replace(config, unet=dataclasses.replace(config.unet, token_layout_size=8))
    init = read_init_model(str(unet_run / "model"), layout)
    unet = UNet(layout.unet)
    load_init_unet(unet, init.states["unet"], "init")
    state = unet.state_dict()
    for key, value in init.states["unet"].items():
        torch.testing.assert_close(state[key], value.to(state[key].dtype), msg=key)
    maps = [k for k in state if k.startswith("token_layout.")]
    assert maps == ["token_layout.maps.1"] and (state[maps[0]] == 0).all()
    wider = dataclasses.replace(layout.unet, block_channels=(32, 32))
    with pytest.raises(UsageError, match="differs from the preset"):
        read_init_model(str(unet_run / "model"), dataclasses.replace(layout, unet=wider))


def test_torchrun_encodes_the_latent_cache_once(
    autoencoder_run: AutoencoderRun, unet_run: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "ddp_run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", "-m", "latentdiff", "train", "unet", *COMMON]
    command += ["--autoencoder", str(autoencoder_run.folder), "--cache-size", "32"]
    command += ["--steps", "2", "--output-dir", str(folder)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("latent cache: 32 scenes") == 1, done.stdout
    # The same flags make the same cache as the single-process run's.
    ddp_cache = LatentCache.load(folder / "latents.safetensors")
    assert torch.equal(
        ddp_cache.latents, LatentCache.load(unet_run / "latents.safetensors").latents
    )
    assert [r["step"] for r in loss_records(folder)] == [2]


def test_resume_refuses_a_cache_built_from_other_flags(
    autoencoder_run: AutoencoderRun, unet_run: Path, capsys: pytest.CaptureFixture
) -> None:
    base = ["train", "unet", "--preset", "tiny", "--no-progress", "--device", "cpu"]
    status = main([
        *base, "--autoencoder", str(autoencoder_run.folder), "--output-dir", str(unet_run),
        "--cache-size", "33", "--steps", "3", "--batch-size", "4",
    ])  # fmt: skip
    assert status == 2
    assert "was built from" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `train clip` folder whose 16×16 ViT has 4×4 patches: the tiny U-Net's level 1."""
    folder = tmp_path_factory.mktemp("clip")
    text = TextEncoderConfig(vocab_size=80, context_length=24, width=16, layers=1, heads=2)
    image = ImageEncoderConfig(image_size=16, patch_size=4, width=8, layers=1, heads=2)
    torch.manual_seed(0)
    save_clip(folder, CLIP(CLIPConfig(text, image, embed_dim=8)), build_world_tokenizer())
    return folder


def test_train_unet_with_repa_caches_targets_and_exports_only_the_model(
    autoencoder_run: AutoencoderRun, tiny_clip_dir: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    args = ["unet", *COMMON, "--autoencoder", str(autoencoder_run.folder), "--cache-size", "8"]
    args += ["--output-dir", str(run), "--repa-weight", "0.5"]
    status, _ = train(*args, "--repa-encoder", str(tiny_clip_dir), "--steps", "2")
    assert status == 0
    cache = LatentCache.load(run / "latents.safetensors")
    assert cache.targets.shape == (8, 16, 8)  # 4×4 patches of 8-wide states
    _, metadata = load_weights(run / "latents.safetensors")
    assert json.loads(metadata["provenance"])["repa_encoder"] == str(tiny_clip_dir.resolve())
    checkpoint, _ = load_weights(run / "checkpoints" / "step_000002" / "model.safetensors")
    assert any(key.startswith("alignment.mlp.") for key in checkpoint)
    bundle, _ = load_weights(run / "model" / "model.safetensors")
    assert not any(key.startswith("alignment.") for key in bundle)
    (image,) = load_pipeline(run / "model", device="cpu")("a red circle", num_inference_steps=2)
    assert image.size == (16, 16)
    # Resuming without alignment would train on a cache built for it: refused.
    assert main(["train", *args[:-2], "--steps", "3"]) == 2
    assert "was built from" in capsys.readouterr().err

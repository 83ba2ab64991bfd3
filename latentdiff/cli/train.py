"""`latentdiff train autoencoder|clip|unet`: every component trained by the one shared Trainer.

Each run lives in its `--output-dir` (checkpoints, loss.jsonl, loss.png) and resumes from it
when started again with the same command; `--steps` may be raised to train further.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from latentdiff.errors import UsageError

if TYPE_CHECKING:  # the CLI imports torch-heavy modules only when a command runs
    import torch

    from latentdiff.config import DiffusionConfig, ModelConfig, UNetConfig
    from latentdiff.models.clip import ImageEncoder
    from latentdiff.models.unet import UNet
    from latentdiff.training.alignment import Projector


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a model component")
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)

    ae = tasks.add_parser("autoencoder", help="train the KL autoencoder on rendered images")
    add_common_arguments(ae, steps=4000, batch_size=32, lr=5e-4)
    ae.add_argument("--size", type=int, default=64, help="training image side in pixels")
    ae.add_argument(
        "--finetune-decoder",
        metavar="AE_RUN",
        help="start from this `train autoencoder` run and train only its decoder: the encoder, "
        "and so every latent and U-Net made with it, stays valid (as SD's fine-tuned VAEs)",
    )
    ae.add_argument(
        "--init-from",
        metavar="AE_RUN",
        help="start from this `train autoencoder` run's weights and train all of them (a new "
        "latent space: latents and U-Nets made with the run's do not carry over)",
    )
    ae.add_argument(
        "--edge-weight",
        type=float,
        default=0.0,
        help="extra loss weight of pixels at colour edges (0: plain per-pixel loss)",
    )
    ae.add_argument(
        "--hinge-weight",
        type=float,
        default=0.0,
        help="weight of a hinge on each pixel's colour error beyond 25 of 255 levels "
        "(squared), for the few pixels drawn far off, such as a square's corners",
    )
    ae.add_argument(
        "--latent-noise",
        type=float,
        default=0.0,
        help="decode latents plus noise of s·(each channel's std), s ~ U[0, this] per image: "
        "a latent space robust to a U-Net's small errors",
    )
    ae.set_defaults(func=leaving_process_group(run_train_autoencoder))

    clip = tasks.add_parser("clip", help="train the CLIP model contrastively on rendered pairs")
    add_common_arguments(clip, steps=3000, batch_size=128, lr=5e-4)
    clip.set_defaults(func=leaving_process_group(run_train_clip))

    unet = tasks.add_parser("unet", help="train the text-conditional U-Net on cached latents")
    add_common_arguments(unet, steps=20000, batch_size=64, lr=3e-4)
    unet.add_argument("--autoencoder", required=True, help="output dir of `train autoencoder`")
    unet.add_argument("--cache-size", type=int, default=40_000, help="scenes in the latent cache")
    unet.add_argument("--cond-drop", type=float, default=0.1, help="empty-caption probability")
    unet.add_argument(
        "--text-encoder",
        default="joint",
        help='"joint" (trained with the U-Net, as in LDM) or a `train clip` folder whose text '
        "tower is frozen (as Stable Diffusion freezes CLIP)",
    )
    unet.add_argument(
        "--weighting",
        choices=("none", "min_snr"),
        help="loss weighting (default: min_snr, or none on a zero-terminal-SNR schedule)",
    )
    unet.add_argument(
        "--prediction-type",
        choices=("epsilon", "v_prediction"),
        help="what the U-Net predicts (default: the preset's)",
    )
    unet.add_argument(
        "--zero-terminal-snr",
        action="store_true",
        help="rescale the noise schedule to pure noise at t = T (Lin et al. 2024); needs "
        "--prediction-type v_prediction, and samples with trailing timesteps",
    )
    unet.add_argument(
        "--high-noise-share",
        type=float,
        default=0.0,
        metavar="P",
        help="draw this share of the timesteps from --high-noise-from up instead of from all "
        "(where an image's layout is decided; docs/MODEL.md)",
    )
    unet.add_argument(
        # The literal is losses.HIGH_NOISE_FROM: the CLI imports no torch module to register.
        "--high-noise-from",
        type=int,
        default=850,
        metavar="T",
        help="see --high-noise-share",
    )
    unet.add_argument(
        "--scene-mix",
        default=None,
        metavar="KIND=W,...",
        help="relative shares of the prompt kinds in the latent cache, e.g. "
        "single=0.3,counting=0.2,two_object=0.5; kinds left out get none "
        "(default: the world's mix, single=0.5,counting=0.2,two_object=0.3)",
    )
    unet.add_argument(
        "--init-from",
        metavar="MODEL",
        help="start a new run from this model folder's U-Net (and jointly trained text "
        "encoder) weights, e.g. to fine-tune with another objective; ignored when resuming",
    )
    unet.add_argument(
        "--repa-weight",
        type=float,
        default=0.0,
        metavar="λ",
        help="representation alignment (REPA, Yu et al. 2025): add λ·(1 − cos) between an MLP "
        "of the U-Net's features and --repa-encoder's patch states of the clean render "
        "(default 0: off; docs/MODEL.md)",
    )
    unet.add_argument(
        "--repa-encoder",
        default=None,
        metavar="CLIP",
        help="a `train clip` folder whose image tower gives the REPA targets (default: the "
        "bundled CLIP)",
    )
    unet.set_defaults(func=leaving_process_group(run_train_unet))


def parse_scene_mix(text: str) -> dict[str, float]:
    """`single=0.3,two_object=0.7` → {kind: share}, shares normalised to sum to 1."""
    from latentdiff.world.scenes import KIND_WEIGHTS

    mix = dict.fromkeys(KIND_WEIGHTS, 0.0)
    for item in text.split(","):
        kind, _, weight = item.partition("=")
        kind = kind.strip()
        if kind not in mix:
            raise UsageError(
                f"--scene-mix: unknown prompt kind {kind!r}; choose from {', '.join(KIND_WEIGHTS)}"
            )
        try:
            mix[kind] = float(weight)
        except ValueError:
            raise UsageError(f"--scene-mix: {item!r} is not KIND=WEIGHT") from None
        if not math.isfinite(mix[kind]) or mix[kind] < 0:
            raise UsageError(f"--scene-mix: {kind}'s weight must be finite and ≥ 0")
    total = sum(mix.values())
    if total == 0:
        raise UsageError("--scene-mix needs a positive weight")
    return {kind: weight / total for kind, weight in mix.items()}


def leaving_process_group(
    run: Callable[[argparse.Namespace], None],
) -> Callable[[argparse.Namespace], None]:
    """`run(args)`, then leave torchrun's process group (joined by the Trainer), however it ended."""

    @functools.wraps(run)
    def run_and_shut_down(args: argparse.Namespace) -> None:
        try:
            run(args)
        finally:
            from latentdiff.training.distributed import shutdown_distributed

            shutdown_distributed()

    return run_and_shut_down


def add_common_arguments(
    parser: argparse.ArgumentParser, *, steps: int, batch_size: int, lr: float
):
    parser.add_argument("--output-dir", required=True, help="run folder (resumed if it exists)")
    parser.add_argument(
        "--preset", default="shapes", help="model preset (latentdiff.config.PRESETS)"
    )
    parser.add_argument("--steps", type=int, default=steps, help="optimizer steps in total")
    parser.add_argument("--batch-size", type=int, default=batch_size, help="global batch size")
    parser.add_argument("--lr", type=float, default=lr, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up steps")
    parser.add_argument("--lr-schedule", default="constant", choices=("constant", "cosine"))
    parser.add_argument(
        "--cosine-from", type=int, default=None, metavar="STEP",
        help="with --lr-schedule cosine: hold the peak rate to STEP, then decay to --steps",
    )  # fmt: skip
    parser.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay (0 disables)")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    parser.add_argument(
        "--mixed-precision",
        default="no",
        choices=("no", "bf16"),
        help="bf16 autocast pays only on CPUs with bf16 units (AVX512-BF16, AMX) and GPUs",
    )
    parser.add_argument("--checkpoint-every", type=int, default=500, help="steps per checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="seed of data order and noise")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def train_config(args: argparse.Namespace):
    """The TrainConfig of the flags, checked as the Trainer will check it, before anything is
    written (`train unet` encodes its latent cache long before the Trainer starts)."""
    from latentdiff.config import TrainConfig
    from latentdiff.training.distributed import launched_world_size
    from latentdiff.training.trainer import check_shards

    try:
        config = TrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            warmup_steps=args.warmup,
            lr_schedule=args.lr_schedule,
            cosine_from=args.cosine_from,
            grad_accum_steps=args.grad_accum,
            ema_decay=args.ema_decay or None,
            mixed_precision=args.mixed_precision,
            seed=args.seed,
            checkpoint_every=args.checkpoint_every,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    check_shards(config, launched_world_size())
    return config


def make_trainer(args: argparse.Namespace, config, model, loss_fn, batches, on_checkpoint=None):
    """The shared Trainer for `model` in `--output-dir`, resumed from its latest checkpoint."""
    from latentdiff.training.trainer import Trainer

    return Trainer(
        model,
        loss_fn,
        batches,
        config,
        args.output_dir,
        args.device,
        progress=not args.no_progress,
        on_checkpoint=on_checkpoint,
    )


def fit(args: argparse.Namespace, trainer):
    """`trainer.fit()`; a diverged run is the user's hyper-parameters, so one line, no traceback.

    The Trainer stops before it checkpoints non-finite values, so a rerun resumes from the last
    good checkpoint.
    """
    try:
        return trainer.fit()
    except FloatingPointError as error:
        raise UsageError(
            f"training diverged: {error}; rerun with a lower --lr than {args.lr:g} to continue "
            "from the last checkpoint"
        ) from None


def preset(name: str):
    from latentdiff.config import PRESETS

    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


def run_train_autoencoder(args: argparse.Namespace) -> None:
    from latentdiff.checkpoints.bundle import (
        AUTOENCODER_CONFIG_FILE,
        AUTOENCODER_FILE,
        load_autoencoder_run,
    )
    from latentdiff.fileio import write_json
    from latentdiff.models.autoencoder import Autoencoder
    from latentdiff.training.autoencoder import (
        RenderedImages,
        autoencoder_loss,
        freeze_encoder,
        reconstruction_psnr,
    )
    from latentdiff.training.checkpoint import save_weights

    config = train_config(args)
    for flag in ("edge_weight", "hinge_weight", "latent_noise"):
        value = getattr(args, flag)
        if not value >= 0:  # also catches nan
            raise UsageError(f"--{flag.replace('_', '-')} must be ≥ 0, got {value}")
    if args.finetune_decoder and args.init_from:
        raise UsageError("--finetune-decoder and --init-from exclude each other")
    if args.finetune_decoder:
        model = freeze_encoder(load_autoencoder_run(args.finetune_decoder).train())
    elif args.init_from:
        initial = load_autoencoder_run(args.init_from)
        # A new latent space: the run's normalisation no longer describes it (`train unet`
        # measures its own on the cache).
        model = Autoencoder(
            dataclasses.replace(initial.config, latents_mean=None, latents_std=None)
        )
        model.load_state_dict(initial.state_dict())
    else:
        model = Autoencoder(preset(args.preset).autoencoder)
    ae_config = model.config
    if args.size < 16 or args.size % ae_config.downsample_factor:
        raise UsageError(f"--size must be ≥ 16 and a multiple of {ae_config.downsample_factor}")
    batches = RenderedImages(config.batch_size, args.size, config.seed)
    loss = functools.partial(
        autoencoder_loss,
        edge_weight=args.edge_weight,
        hinge_weight=args.hinge_weight,
        latent_noise=args.latent_noise,
    )
    trainer = make_trainer(args, config, model, loss, batches)
    summary = fit(args, trainer)
    if not trainer.dist.is_main:
        return
    output = Path(args.output_dir)
    save_weights(output / AUTOENCODER_FILE, trainer.final_state_dict())
    write_json(output / AUTOENCODER_CONFIG_FILE, dataclasses.asdict(ae_config))
    model.load_state_dict(trainer.final_state_dict())
    psnr = reconstruction_psnr(model.eval(), size=args.size)
    print(
        f"autoencoder: step {summary.step}, loss {summary.final_loss}, "
        f"{summary.samples_per_s:.1f} samples/s, PSNR {psnr:.2f} dB on unseen renders"
    )


def run_train_clip(args: argparse.Namespace) -> None:
    from latentdiff.config import default_clip_config
    from latentdiff.fileio import write_json
    from latentdiff.models.clip import CLIP
    from latentdiff.models.tokenizer import build_world_tokenizer
    from latentdiff.training.clip import RenderedPairs, clip_objective, evaluate_clip, save_clip

    config = train_config(args)
    # The text tower is the preset's text encoder, so it can later condition that U-Net.
    clip_config = dataclasses.replace(default_clip_config(), text=preset(args.preset).text_encoder)
    tokenizer = build_world_tokenizer(vocab_size=clip_config.text.vocab_size)
    model = CLIP(clip_config)
    batches = RenderedPairs(
        config.batch_size,
        clip_config.image.image_size,
        config.seed,
        tokenizer,
        clip_config.text.context_length,
    )
    trainer = make_trainer(args, config, model, clip_objective, batches)
    summary = fit(args, trainer)
    if not trainer.dist.is_main:
        return
    model.load_state_dict(trainer.final_state_dict())
    save_clip(args.output_dir, model.eval(), tokenizer)
    metrics = {
        "train_distribution": evaluate_clip(model, tokenizer),
        "held_out_pairs": evaluate_clip(model, tokenizer, include_held_out=True),
    }
    write_json(Path(args.output_dir) / "clip_metrics.json", metrics)
    print(
        f"clip: step {summary.step}, {summary.samples_per_s:.1f} samples/s; {json.dumps(metrics)}"
    )


def run_train_unet(args: argparse.Namespace) -> None:
    from latentdiff.checkpoints.bundle import load_autoencoder_run
    from latentdiff.devices import resolve_device
    from latentdiff.models.tokenizer import Tokenizer, build_world_tokenizer
    from latentdiff.models.unet import UNet
    from latentdiff.training.checkpoint import load_module_state
    from latentdiff.training.distributed import barrier, init_distributed
    from latentdiff.training.trainer import Trainer
    from latentdiff.training.unet import (
        DiffusionObjective,
        LatentCache,
        LatentDiffusionModel,
        export_bundle,
    )

    # Every input is checked before the run folder is touched, so bad input leaves nothing.
    config = train_config(args)
    if args.cache_size < 1:
        raise UsageError(f"--cache-size must be at least 1, got {args.cache_size}")
    if not 0 <= args.cond_drop <= 1:
        raise UsageError(f"--cond-drop must be a probability, got {args.cond_drop}")
    if not 0 <= args.high_noise_share <= 1:
        raise UsageError(f"--high-noise-share must be a probability, got {args.high_noise_share}")
    scene_mix = parse_scene_mix(args.scene_mix) if args.scene_mix is not None else None
    model_config = with_objective(preset(args.preset), args)
    if not 0 <= args.high_noise_from < model_config.diffusion.num_train_timesteps:
        raise UsageError(
            f"--high-noise-from must be a timestep of 0–"
            f"{model_config.diffusion.num_train_timesteps - 1}, got {args.high_noise_from}"
        )
    init = read_init_model(args.init_from, model_config) if args.init_from else None
    # A fine-tune keeps the latent normalisation its weights learned, even on another mix.
    normalization = None
    if init is not None and init.config.autoencoder.latents_mean is not None:
        init_ae = init.config.autoencoder
        normalization = (tuple(init_ae.latents_mean), tuple(init_ae.latents_std))
    autoencoder = load_autoencoder_run(args.autoencoder)
    if autoencoder.config.latent_channels != model_config.unet.in_channels:
        raise UsageError(
            f"the autoencoder makes {autoencoder.config.latent_channels}-channel latents; "
            f"the {args.preset} U-Net takes {model_config.unet.in_channels}"
        )
    text_encoder, joint, clip_tokenizer = load_text_encoder(args.text_encoder, model_config)
    alignment = read_alignment(args, model_config, autoencoder.config.downsample_factor)
    output = Path(args.output_dir)
    tokenizer_path = output / "tokenizer.json"
    cache_path = output / "latents.safetensors"
    provenance = {
        "autoencoder": str(Path(args.autoencoder).resolve()),
        "num_samples": args.cache_size,
        "size": model_config.sample_size,
        "seed": config.seed,
    }
    if scene_mix is not None:  # runs on the world's mix keep their caches valid
        provenance["scene_mix"] = scene_mix
    if alignment is not None:
        provenance["repa_encoder"] = str(alignment.folder)
    # Under torchrun, rank 0 alone writes the tokenizer and encodes the cache; the others wait.
    context, device = init_distributed(resolve_device(args.device))
    if context.is_main:
        output.mkdir(parents=True, exist_ok=True)
        if clip_tokenizer is not None:  # a frozen tower keeps the tokenizer it learned with
            clip_tokenizer.save(tokenizer_path)
        elif init is not None and not tokenizer_path.exists():  # the ids its weights learned
            init.tokenizer.save(tokenizer_path)
        elif not tokenizer_path.exists():
            vocab_size = model_config.text_encoder.vocab_size
            build_world_tokenizer(vocab_size=vocab_size).save(tokenizer_path)
        if not cache_path.exists():
            encode_latent_cache(
                cache_path,
                Tokenizer.load(tokenizer_path),
                autoencoder.to(device),
                model_config.text_encoder.context_length,
                provenance,
                progress=not args.no_progress,
                normalization=normalization,
                target_encoder=None if alignment is None else alignment.encoder.to(device),
            )
    barrier(context)
    tokenizer = Tokenizer.load(tokenizer_path)
    cache = LatentCache.load(cache_path, expected=provenance)
    if normalization is not None and (cache.latents_mean, cache.latents_std) != normalization:
        raise UsageError(
            f"{cache_path} is normalised otherwise than --init-from {args.init_from}'s latents: "
            "use a new --output-dir"
        )
    model = LatentDiffusionModel(
        UNet(model_config.unet),
        text_encoder,
        train_text_encoder=joint,
        alignment=None if alignment is None else alignment.projector(model_config.unet),
    )
    if init is not None:  # a resumed run's checkpoint replaces these in the Trainer
        load_init_unet(model.unet, init.states["unet"], args.init_from)
        if joint:
            load_module_state(model.text_encoder, init.states["text_encoder"], args.init_from)
    empty_ids = tokenizer.encode([""], model_config.text_encoder.context_length)
    objective = DiffusionObjective(
        model_config.diffusion,
        empty_ids,
        args.cond_drop,
        weighting=args.weighting or default_weighting(model_config.diffusion),
        high_noise_share=args.high_noise_share,
        high_noise_from=args.high_noise_from,
        alignment_weight=args.repa_weight,
    )
    model_config = dataclasses.replace(
        model_config,
        autoencoder=cache.autoencoder_config(autoencoder.config),
    )

    def export(trainer: Trainer, _: Path | None = None) -> None:
        # model/ is the latest; snapshots/ keep one per checkpoint for the learning curve.
        for folder in (output / "model", output / "snapshots" / f"step_{trainer.step:06d}"):
            export_bundle(trainer, model_config, autoencoder, tokenizer, folder)

    batches = cache.batches(config.batch_size, config.seed)
    trainer = make_trainer(args, config, model, objective, batches, on_checkpoint=export)
    if trainer.dist.is_main and trainer.step > 0:
        # A kill between a checkpoint and its export left model/ stale or missing: export the
        # checkpoint resumed from again (a finished run's rerun trains no step to export it).
        export(trainer)
    summary = fit(args, trainer)
    if trainer.dist.is_main:
        print(
            f"unet: step {summary.step}, loss {summary.final_loss}, "
            f"{summary.samples_per_s:.1f} samples/s; model in {output / 'model'}"
        )


def encode_latent_cache(
    path: Path,
    tokenizer,
    autoencoder,
    context_length: int,
    provenance: dict,
    progress: bool,
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    target_encoder: ImageEncoder | None = None,
) -> None:
    """Render and encode a run's latent cache once into `path`, as `provenance` describes it
    (normalised by `normalization` if given, else by its own statistics; with REPA targets
    from `target_encoder`, an ImageEncoder)."""
    import time

    from latentdiff.training.unet import build_latent_cache
    from latentdiff.world.scenes import KIND_WEIGHTS

    start = time.perf_counter()
    cache = build_latent_cache(
        autoencoder,
        tokenizer,
        num_samples=provenance["num_samples"],
        size=provenance["size"],
        context_length=context_length,
        seed=provenance["seed"],
        progress=progress,
        kind_weights=provenance.get("scene_mix", KIND_WEIGHTS),
        normalization=normalization,
        target_encoder=target_encoder,
    )
    cache.save(path, provenance)
    seconds = time.perf_counter() - start
    print(f"latent cache: {provenance['num_samples']} scenes in {seconds:.0f} s")


def with_objective(model_config, args: argparse.Namespace):
    """The preset with --prediction-type / --zero-terminal-snr applied."""
    diffusion = model_config.diffusion
    try:
        diffusion = dataclasses.replace(
            diffusion,
            prediction_type=args.prediction_type or diffusion.prediction_type,
            rescale_betas_zero_snr=args.zero_terminal_snr or diffusion.rescale_betas_zero_snr,
        )
    except ValueError as error:
        # The preset may bring zero terminal SNR itself (shapes does), so name both options.
        raise UsageError(f"--prediction-type/--zero-terminal-snr: {error}") from None
    if diffusion.rescale_betas_zero_snr and args.weighting == "min_snr":
        # min(SNR, γ)/(SNR + 1) is 0 at SNR = 0: t = T, the step zero SNR exists for, unlearned.
        raise UsageError("zero terminal SNR: min-SNR weights t = T by 0; add --weighting none")
    return dataclasses.replace(model_config, diffusion=diffusion)


def default_weighting(diffusion: DiffusionConfig) -> str:
    """min-SNR-γ (Hang et al. 2023), except at zero terminal SNR, where it would weight t = T by 0."""
    return "none" if diffusion.rescale_betas_zero_snr else "min_snr"


def read_init_model(path: str, model_config):
    """The weights of the model folder `--init-from` names, if its U-Net is the preset's.

    A U-Net without the preset's token layout bias qualifies too: the bias starts at zero,
    where the model computes what the folder's U-Net computes.
    """
    from latentdiff.checkpoints.sources import read_model

    weights = read_model(path)
    if weights.format != "latentdiff":
        raise UsageError(f"--init-from {path}: not a latentdiff model folder")
    unet = weights.config.unet
    if unet.token_layout_size is None:
        unet = dataclasses.replace(unet, token_layout_size=model_config.unet.token_layout_size)
    if unet != model_config.unet:
        raise UsageError(f"--init-from {path}: its U-Net config differs from the preset's")
    return weights


def load_init_unet(unet: UNet, state: dict[str, torch.Tensor], source: str) -> None:
    """`--init-from`'s U-Net weights into `unet`; token layout maps it lacks keep their zeros."""
    from latentdiff.training.checkpoint import load_module_state

    fresh = {k: v for k, v in unet.state_dict().items() if k.startswith("token_layout.")}
    load_module_state(unet, {**fresh, **state}, source)


@dataclasses.dataclass(frozen=True)
class Alignment:
    """What `--repa-weight` aligns to: the encoder (an ImageEncoder), its folder, and the
    U-Net level whose features match its patch grid."""

    encoder: ImageEncoder
    folder: Path
    level: int

    def projector(self, unet_config: UNetConfig) -> Projector:
        """A fresh h_φ from the U-Net's features at `level` to the encoder's patch states."""
        from latentdiff.training.alignment import Projector

        return Projector.for_unet(unet_config, self.level, self.encoder.config.width)


def read_alignment(
    args: argparse.Namespace, model_config: ModelConfig, downsample_factor: int
) -> Alignment | None:
    """The REPA setting of the flags, or None without --repa-weight; bad flags are one line."""
    if not math.isfinite(args.repa_weight) or args.repa_weight < 0:
        raise UsageError(f"--repa-weight must be a finite λ ≥ 0, got {args.repa_weight}")
    if args.repa_weight == 0:
        if args.repa_encoder is not None:
            raise UsageError("--repa-encoder needs --repa-weight above 0")
        return None
    from latentdiff.checkpoints.bundle import ASSETS
    from latentdiff.training.alignment import alignment_level
    from latentdiff.training.clip import load_clip

    folder = Path(args.repa_encoder) if args.repa_encoder else ASSETS / "clip"
    encoder = load_clip(folder)[0].image_encoder
    size = model_config.sample_size
    if encoder.config.image_size != size:
        raise UsageError(
            f"{folder}'s image tower takes {encoder.config.image_size}² images; the "
            f"{args.preset} model's renders are {size}²"
        )
    grid = encoder.config.grid_size
    level = alignment_level(model_config.unet, size // downsample_factor, grid)
    return Alignment(encoder, folder.resolve(), level)


def load_text_encoder(choice: str, model_config):
    """(text encoder, trained jointly?, its tokenizer or None): a fresh encoder, or a `train
    clip` run's text tower with the tokenizer it was trained with."""
    from latentdiff.models.text_encoder import TextEncoder

    if choice == "joint":
        return TextEncoder(model_config.text_encoder), True, None
    from latentdiff.training.clip import load_clip

    clip, tokenizer = load_clip(Path(choice))
    if clip.config.text != model_config.text_encoder:
        raise UsageError(
            f"the CLIP text tower in {choice} does not match the preset's text encoder config"
        )
    return clip.text_encoder, False, tokenizer

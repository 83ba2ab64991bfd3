"""Every checkpoint a user may hold → one in-memory form → running modules.

Three on-disk formats carry a latent diffusion model: latentdiff's own folder (bundle.py), a
diffusers folder (diffusers_folder.py) and an original single file in the CompVis layout
(single_file.py). Each reader returns a `ModelWeights`: the config, the weights in latentdiff's
key layout per component, how to discretise the sampler (the checkpoint's own scheduler config)
and where its tokenizer is. Everything downstream — building modules, `latentdiff info`,
`latentdiff convert` — works on that one form.

Modules are built on the "meta" device and the file's tensors are assigned into them, cast to the
run dtype one tensor at a time: the weights are never held twice, so peak RAM stays near their
own size (an fp16 file costs its fp32 copy plus the fp16 tensors not yet cast).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch

from latentdiff.checkpoints.bundle import (
    COMPONENT_CLASSES,
    CONFIG_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    Components,
    build_modules,
    empty_modules,
    resolve_model_path,
    take_prefix,
    write_model_folder,
)
from latentdiff.config import ModelConfig, load_model_config
from latentdiff.diffusion.schedules import SchedulerSettings, default_scheduler_settings
from latentdiff.errors import UsageError
from latentdiff.fileio import atomic_folder
from latentdiff.models.tokenizer import PromptTokenizer, Tokenizer
from latentdiff.training.checkpoint import load_module_state, load_weights

Format = Literal["latentdiff", "diffusers", "single-file"]
COMPONENTS = tuple(COMPONENT_CLASSES)
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")


@dataclass(frozen=True)
class LoadOptions:
    """What a user may tell the loader that a checkpoint cannot say about itself."""

    tokenizer: str | os.PathLike | None = None
    """A CLIP tokenizer folder (vocab.json + merges.txt) for single files, which hold none;
    stored as a `Path`."""
    version: Literal["sd1", "sd2"] | None = None
    """Override the detected Stable Diffusion version of a single file."""
    prediction_type: Literal["epsilon", "v_prediction"] | None = None
    """Override the detected (single file) or configured prediction type."""
    inpainting: bool | None = None
    """Assert that a single file is (or is not) an inpainting model; its U-Net's input channels
    decide (9 = inpainting), so a contradicting value is an error rather than an override."""
    use_ema: bool = False
    """Take the EMA copy of a full single-file checkpoint's U-Net instead of the trained weights."""
    variant: str | None = None
    """A diffusers weight variant, e.g. "fp16" for `*.fp16.safetensors`."""
    vae: str | os.PathLike | None = None
    """An autoencoder to use instead of the checkpoint's (vae_sources.py): a `latentdiff train
    autoencoder` run folder (e.g. `--finetune-decoder`), a diffusers AutoencoderKL folder (e.g.
    sd-vae-ft-mse, or an SD folder's `vae/`; `variant` where it has one) or a VAE single file
    in the CompVis or diffusers layout (e.g. vae-ft-mse-840000-ema-pruned.safetensors). Its
    architecture must be the checkpoint's; the checkpoint's latent normalisation is kept.
    Stored as a `Path`."""

    def __post_init__(self) -> None:
        for name in ("tokenizer", "vae"):  # a str from the command line or a Python caller
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))


@dataclass
class ModelWeights:
    """A checkpoint in memory: config, weights (latentdiff keys), scheduler, tokenizer."""

    config: ModelConfig
    states: dict[str, dict[str, torch.Tensor]]
    """Component name → its weights in latentdiff's key layout, in the file's dtypes."""
    scheduler: SchedulerSettings
    tokenizer: Tokenizer | Path | None
    """latentdiff's own tokenizer, a CLIP tokenizer folder, or None (a single file alone)."""
    format: Format
    path: Path
    notes: list[str] = field(default_factory=list)
    """What was detected or assumed, for `latentdiff info`."""

    def parameter_counts(self) -> dict[str, int]:
        return {name: sum(t.numel() for t in state.values()) for name, state in self.states.items()}

    def dtypes(self) -> list[str]:
        """The floating dtypes the weights are stored in."""
        found = {
            str(t.dtype).removeprefix("torch.")
            for state in self.states.values()
            for t in state.values()
            if t.is_floating_point()
        }
        return sorted(found)


def detect_format(path: str | os.PathLike) -> Format:
    """Which of the three formats `path` is, from the files it holds."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
            return "single-file"
        raise UsageError(
            f"{path}: not a checkpoint file (expected one of {', '.join(SINGLE_FILE_SUFFIXES)})"
        )
    if path.is_dir():
        if (path / "model_index.json").is_file() or (path / "unet" / "config.json").is_file():
            return "diffusers"
        return "latentdiff"  # its reader names any file it lacks
    raise UsageError(f"no checkpoint at {path}")


def read_model(name_or_path: str | os.PathLike, options: LoadOptions | None = None) -> ModelWeights:
    """Read any supported checkpoint (or a bundled model by name) into memory."""
    options = options or LoadOptions()
    path = resolve_checkpoint_path(name_or_path)
    kind = detect_format(path)
    if kind == "single-file":
        weights = _read_single_file(path, options)
    else:
        _check_folder_options(options)
        weights = (_read_latentdiff if kind == "latentdiff" else _read_diffusers)(path, options)
        from latentdiff.checkpoints.single_file import check_inpainting

        check_inpainting(weights.config, options.inpainting, where=str(path))
    if options.vae is not None:
        _replace_autoencoder(weights, options.vae, options.variant)
    return weights


def _check_folder_options(options: LoadOptions) -> None:
    """A folder's config states its version and holds no EMA copy: options that only choose
    among a single file's readings are refused rather than silently ignored."""
    for given, name in ((options.version is not None, "version"), (options.use_ema, "ema")):
        if given:
            raise UsageError(f"--{name} applies to single files only; folders say it themselves")


def _replace_autoencoder(weights: ModelWeights, vae: Path, variant: str | None) -> None:
    """Swap in another autoencoder of the same architecture (vae_sources.py), keeping the
    checkpoint's latent normalisation, which its U-Net was trained with."""
    from latentdiff.checkpoints.vae_sources import read_vae

    state, kind = read_vae(vae, weights.config.autoencoder, variant=variant, model=weights.path)
    weights.states["autoencoder"] = state
    weights.notes.append(f"autoencoder weights from {vae} ({kind})")


def resolve_checkpoint_path(name_or_path: str | os.PathLike) -> Path:
    """A bundled model's name, a folder or a single file → its path."""
    if Path(name_or_path).is_file():
        return Path(name_or_path)
    return resolve_model_path(name_or_path)


def components_from_weights(
    weights: ModelWeights, device: torch.device, dtype: torch.dtype = torch.float32
) -> Components:
    """Modules built on the meta device, then given the checkpoint's tensors (cast to `dtype`).

    Every key and shape is checked before anything is assigned (a bad file never half-loads);
    each component's tensors are released as soon as they are in their module.
    """
    with empty_modules():
        modules = build_modules(weights.config)
    source = str(weights.path)
    for name, module in modules.items():
        state = weights.states.get(name)
        if state is None:
            raise UsageError(f"{source}: no {name} weights")
        for key, tensor in state.items():  # one tensor at a time: its original is freed at once
            if tensor.is_floating_point():
                state[key] = tensor.to(dtype)
        load_module_state(module, state, f"{source} [{name}]", assign=True, dtype=dtype)
        weights.states[name] = {}  # the module owns the tensors now
        module.to(device).eval().requires_grad_(False)
    return Components(config=weights.config, tokenizer=load_tokenizer(weights), **modules)


def load_tokenizer(weights: ModelWeights) -> PromptTokenizer:
    """The checkpoint's tokenizer, ready to use."""
    if isinstance(weights.tokenizer, Tokenizer):
        return weights.tokenizer
    if weights.tokenizer is None:
        raise UsageError(
            f"{weights.path} holds no tokenizer: pass --tokenizer FOLDER (a CLIP tokenizer folder "
            "with vocab.json and merges.txt, e.g. the tokenizer/ of a diffusers SD folder)"
        )
    from latentdiff.models.clip_tokenizer import CLIPTokenizer

    return CLIPTokenizer.load(weights.tokenizer)


def load_model(
    name_or_path: str | os.PathLike,
    device: torch.device,
    options: LoadOptions | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Components, SchedulerSettings]:
    """Read a checkpoint of any format and build its modules on `device`."""
    weights = read_model(name_or_path, options)
    return components_from_weights(weights, device, dtype), weights.scheduler


def _read_latentdiff(folder: Path, options: LoadOptions) -> ModelWeights:
    for name in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE):
        if not (folder / name).is_file():
            raise UsageError(f"model folder {folder} has no {name}")
    config = _with_prediction_type(load_model_config(folder / CONFIG_FILE), options)
    tokenizer = Tokenizer.load(folder / TOKENIZER_FILE)
    if tokenizer.vocab_size > config.text_encoder.vocab_size:
        raise UsageError(
            f"{folder / TOKENIZER_FILE} has {tokenizer.vocab_size} tokens; the text encoder "
            f"embeds only {config.text_encoder.vocab_size}"
        )
    state, _ = load_weights(folder / WEIGHTS_FILE)
    strays = sorted(k for k in state if k.split(".", 1)[0] not in COMPONENTS)
    if strays:  # a key under no component's prefix would otherwise be silently dropped
        raise UsageError(
            f"{folder / WEIGHTS_FILE}: unexpected key {strays[0]} ({len(strays)} unexpected)"
        )
    states = {name: take_prefix(state, name + ".") for name in COMPONENTS}
    scheduler = default_scheduler_settings(config.diffusion)
    return ModelWeights(config, states, scheduler, tokenizer, "latentdiff", folder)


def _read_diffusers(folder: Path, options: LoadOptions) -> ModelWeights:
    from latentdiff.checkpoints.diffusers_folder import read_diffusers_folder

    model = read_diffusers_folder(folder, variant=options.variant)
    tokenizer = options.tokenizer or model.tokenizer_dir
    return ModelWeights(
        _with_prediction_type(model.config, options),
        model.states,
        model.scheduler,
        tokenizer,
        "diffusers",
        folder,
    )


def _read_single_file(path: Path, options: LoadOptions) -> ModelWeights:
    from latentdiff.checkpoints.single_file import read_single_file, records_config

    config, states = read_single_file(
        path,
        version=options.version,
        prediction_type=options.prediction_type,
        inpainting=options.inpainting,
        use_ema=options.use_ema,
    )
    notes = []
    guessed = not options.prediction_type and not records_config(path)
    if config.unet.context_dim == 1024 and guessed:
        notes.append(
            "SD 2 single files do not record ε or v prediction: 768-px v-prediction assumed "
            "(512-px base and inpainting models: --prediction-type epsilon)"
        )
    return ModelWeights(
        config, states, SchedulerSettings(), options.tokenizer, "single-file", path, notes=notes
    )


def _with_prediction_type(config: ModelConfig, options: LoadOptions) -> ModelConfig:
    if options.prediction_type is None:
        return config
    diffusion = replace(config.diffusion, prediction_type=options.prediction_type)
    return replace(config, diffusion=diffusion)


def write_model(
    weights: ModelWeights,
    output: str | os.PathLike,
    *,
    to: Literal["diffusers", "single-file", "latentdiff"],
    dtype: torch.dtype | None = None,
) -> None:
    """Write `weights` as a diffusers folder, an original single file or (from a latentdiff
    folder) a latentdiff folder; `dtype` casts."""
    if to == "latentdiff":
        if not isinstance(weights.tokenizer, Tokenizer):
            raise UsageError(f"{weights.path}: only latentdiff models are written as latentdiff")
        # "keep" keeps the U-Net's dtype for every component (a --vae run's may differ).
        keep = next(t.dtype for t in weights.states["unet"].values() if t.is_floating_point())
        tokenizer, config, states = weights.tokenizer, weights.config, weights.states
        atomic_folder(
            output, lambda tmp: write_model_folder(tmp, config, states, tokenizer, dtype or keep)
        )
        return
    if to == "single-file":
        from latentdiff.checkpoints.single_file import write_single_file

        if Path(output).suffix.lower() != ".safetensors":
            raise UsageError(f"{output}: single files are written as .safetensors only")
        write_single_file(output, weights.config, weights.states, dtype=dtype)
        return
    from latentdiff.checkpoints.diffusers_folder import write_diffusers_folder

    if not isinstance(weights.tokenizer, Path):
        raise UsageError(
            f"{weights.path} holds no CLIP tokenizer, which a diffusers folder needs: pass "
            "--tokenizer FOLDER (vocab.json and merges.txt)"
        )
    write_diffusers_folder(
        output,
        weights.config,
        weights.states,
        scheduler=weights.scheduler,
        tokenizer_dir=weights.tokenizer,
        dtype=dtype,
    )


def sd_version(config: ModelConfig) -> str:
    """The Stable Diffusion family a config belongs to, by its text-context width."""
    family = {768: "SD 1.x", 1024: "SD 2.x"}.get(config.unet.context_dim, "latentdiff")
    return f"{family} inpainting" if config.is_inpainting else family


def describe(weights: ModelWeights) -> list[str]:
    """What `latentdiff info` prints: one fact per line."""
    config = weights.config
    counts = weights.parameter_counts()
    tokenizer = weights.tokenizer
    return [
        f"path: {weights.path}",
        f"format: {weights.format}",
        f"version: {sd_version(config)}",
        f"prediction type: {config.diffusion.prediction_type}",
        f"sample size: {config.sample_size} px (latent factor {config.autoencoder.downsample_factor})",
        *(f"parameters {name}: {counts[name]:,}" for name in COMPONENTS if name in counts),
        f"parameters total: {sum(counts.values()):,}",
        f"dtype: {', '.join(weights.dtypes())}",
        f"text encoder: {config.text_encoder.layers} layers, width {config.text_encoder.width}, "
        f"output {config.text_encoder.output_layer}",
        f"scheduler: {weights.scheduler}",
        f"sampling defaults: {config.sampling}",
        "tokenizer: "
        + ("latentdiff word-level" if isinstance(tokenizer, Tokenizer) else str(tokenizer)),
        *(f"note: {note}" for note in weights.notes),
    ]

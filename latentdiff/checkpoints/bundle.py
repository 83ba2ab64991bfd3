"""latentdiff's own model format: a folder with `config.json`, `model.safetensors`, `tokenizer.json`.

The weights file holds every component under a prefix (`autoencoder.`, `unet.`,
`text_encoder.`); the config is `ModelConfig.to_dict()`. sources.py reads it (and every other
checkpoint format), checking every key and shape, so a bad file never half-loads.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from latentdiff.config import AutoencoderConfig, ModelConfig, from_dict
from latentdiff.errors import UsageError
from latentdiff.fileio import atomic_write, write_json
from latentdiff.models.autoencoder import Autoencoder
from latentdiff.models.text_encoder import TextEncoder
from latentdiff.models.tokenizer import PromptTokenizer
from latentdiff.models.unet import UNet
from latentdiff.training.checkpoint import load_module_state, load_weights, save_weights

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
AUTOENCODER_FILE = "autoencoder.safetensors"
AUTOENCODER_CONFIG_FILE = "autoencoder_config.json"
"""What a `latentdiff train autoencoder` run folder holds besides its checkpoints."""
ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLED_MODELS = {"shapes": ASSETS / "shapes"}
BUNDLED_CLIP = ASSETS / "clip"  # the Shapes World CLIP (`training.clip.load_clip` reads it)


@dataclass
class Components:
    """The parts of a latent diffusion model, ready to run."""

    config: ModelConfig
    autoencoder: Autoencoder
    unet: UNet
    text_encoder: TextEncoder
    tokenizer: PromptTokenizer
    """latentdiff's own tokenizer, or SD's CLIP tokenizer for real checkpoints."""

    def modules(self) -> dict[str, nn.Module]:
        return {
            "autoencoder": self.autoencoder,
            "unet": self.unet,
            "text_encoder": self.text_encoder,
        }


COMPONENT_CLASSES: dict[str, type[nn.Module]] = {
    "autoencoder": Autoencoder,
    "unet": UNet,
    "text_encoder": TextEncoder,
}
"""Each component's name — its `ModelConfig` field, `Components` field and weights prefix — and
its module class."""


# In-place initialisers that torch's modules and ours call while being built.
INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_",
    "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_", "orthogonal_",
)  # fmt: skip


@contextlib.contextmanager
def empty_modules() -> Iterator[None]:
    """Build modules on the meta device (no memory) and skip their random initialisation.

    For modules about to be given a checkpoint's tensors, the initialisation is wasted work; on
    meta tensors it is worse: torch runs it through its Python reference kernels, whose first
    call imports torch._dynamo, 1.4 s of a 5 s cold start on this machine. So, like
    transformers' `no_init_weights`, the `torch.nn.init` functions do nothing meanwhile, but only
    in this thread (as `torch.device` is per thread): another thread building modules at the
    same time still initialises them.
    """
    _install_skippable_init()
    _skip.depth = getattr(_skip, "depth", 0) + 1
    try:
        with torch.device("meta"):
            yield
    finally:
        _skip.depth -= 1


_skip = threading.local()
_install_lock = threading.Lock()


def _install_skippable_init() -> None:
    """Wrap each `torch.nn.init` function, once per process, to return its tensor untouched
    while this thread is inside `empty_modules`; outside, the wrapper calls the original."""
    with _install_lock:
        for name in INIT_FUNCTIONS:
            init = getattr(nn.init, name)
            if not getattr(init, "skippable", False):
                setattr(nn.init, name, _skippable(init))


def _skippable(init: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    @functools.wraps(init)
    def wrapper(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if getattr(_skip, "depth", 0):
            return tensor
        return init(tensor, *args, **kwargs)

    wrapper.skippable = True  # type: ignore[attr-defined]
    return wrapper


def build_modules(config: ModelConfig) -> dict[str, nn.Module]:
    """Randomly initialised modules of every component, on torch's default device (under
    `empty_modules()` they cost no memory, ready to be given a checkpoint's tensors)."""
    return {name: module(getattr(config, name)) for name, module in COMPONENT_CLASSES.items()}


def build_components(config: ModelConfig, tokenizer: PromptTokenizer) -> Components:
    """Randomly initialised components for `config`."""
    return Components(config=config, tokenizer=tokenizer, **build_modules(config))


def random_weights(
    config: ModelConfig, seed: int = 0, noise: float | None = None
) -> dict[str, dict[str, torch.Tensor]]:
    """Random weights for every component of `config`, in latentdiff's key layout.

    `noise=None`: N(0, 1) everywhere, so that no zero-initialised layer or repeated value can
    hide a swapped key (checks of key layouts). Otherwise each module's own initialisation plus
    `noise`·N(0, 1): a random model whose activations stay in range and whose output depends
    on the prompt (end-to-end runs).
    """
    generator = torch.Generator().manual_seed(seed)
    states = {}
    for name, module_class in COMPONENT_CLASSES.items():
        if noise is None:
            with empty_modules():
                shapes = module_class(getattr(config, name)).state_dict()
            states[name] = {k: torch.randn(v.shape, generator=generator) for k, v in shapes.items()}
        else:
            torch.manual_seed(seed)
            state = module_class(getattr(config, name)).state_dict()
            states[name] = {
                k: v + noise * torch.randn(v.shape, generator=generator) for k, v in state.items()
            }
    return states


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A bundled model's name or a folder path → the folder."""
    if str(name_or_path) in BUNDLED_MODELS:
        return BUNDLED_MODELS[str(name_or_path)]
    path = Path(name_or_path)
    if not path.is_dir():
        names = ", ".join(BUNDLED_MODELS)
        raise UsageError(f"no model folder at {path} (bundled models: {names})")
    return path


def save_components(
    components: Components, folder: str | os.PathLike, dtype: torch.dtype = torch.float16
) -> None:
    """Write a model folder from modules (see `write_model_folder`)."""
    states = {name: module.state_dict() for name, module in components.modules().items()}
    write_model_folder(folder, components.config, states, components.tokenizer, dtype)


def write_model_folder(
    folder: str | os.PathLike,
    config: ModelConfig,
    states: Mapping[str, Mapping[str, torch.Tensor]],
    tokenizer: PromptTokenizer,
    dtype: torch.dtype | None = torch.float16,
) -> None:
    """Write a model folder: config, weights (each component's under its prefix, floating
    tensors cast to `dtype` if given) and tokenizer; each file is written to a temporary
    name, then renamed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {f"{prefix}.{key}": t for prefix, sub in states.items() for key, t in sub.items()}
    save_weights(folder / WEIGHTS_FILE, state, dtype=dtype)
    write_json(folder / CONFIG_FILE, config.to_dict())
    atomic_write(folder / TOKENIZER_FILE, tokenizer.save)


def take_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def read_autoencoder_run(folder: str | os.PathLike) -> tuple[AutoencoderConfig, dict]:
    """The config and (EMA) weights a finished `latentdiff train autoencoder` run wrote."""
    folder = Path(folder)
    config_path, weights_path = folder / AUTOENCODER_CONFIG_FILE, folder / AUTOENCODER_FILE
    if not weights_path.is_file() or not config_path.is_file():
        raise UsageError(f"{folder} holds no finished autoencoder run ({AUTOENCODER_FILE})")
    try:
        config = from_dict(AutoencoderConfig, json.loads(config_path.read_text()))
    except (OSError, ValueError) as error:  # ValueError: bad JSON or bad UTF-8
        raise UsageError(f"cannot read {config_path}: {error}") from None
    state, _ = load_weights(weights_path)
    return config, state


def load_autoencoder_run(folder: str | os.PathLike) -> Autoencoder:
    """The autoencoder a finished `train autoencoder` run wrote, as a frozen module (EMA weights)."""
    config, state = read_autoencoder_run(folder)
    model = Autoencoder(config)
    load_module_state(model, state, Path(folder))
    return model.eval().requires_grad_(False)

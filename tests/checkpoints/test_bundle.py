import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from latentdiff.checkpoints.bundle import (
    CONFIG_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    Components,
    build_components,
    empty_modules,
    save_components,
)
from latentdiff.checkpoints.sources import load_model
from latentdiff.config import ModelConfig, tiny_config
from latentdiff.errors import UsageError
from latentdiff.models.tokenizer import Tokenizer
from latentdiff.training.checkpoint import load_module_state, load_weights, save_weights

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def original(tiny_model_dir: Path) -> Components:
    """Fresh random components (fp32) with the fixture model's tokenizer."""
    torch.manual_seed(1)
    components = build_components(tiny_config(), Tokenizer.load(tiny_model_dir / TOKENIZER_FILE))
    with torch.no_grad():  # non-zero everywhere, so that every weight matters
        for module in components.modules().values():
            for parameter in module.parameters():
                parameter.add_(0.1 * torch.randn_like(parameter))
    return components


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def fp16_rounded(module: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.half().float() if v.is_floating_point() else v for k, v in module.state_dict().items()
    }


def test_round_trip_stores_fp16_weights_loaded_back_as_fp32(
    original: Components, tmp_path: Path
) -> None:
    save_components(original, tmp_path)
    loaded = load_model(tmp_path, CPU)[0]
    assert loaded.config == original.config
    for name, module in loaded.modules().items():
        expected = fp16_rounded(original.modules()[name])
        state = module.state_dict()
        assert state.keys() == expected.keys()
        for key, tensor in state.items():
            assert tensor.dtype == expected[key].dtype, key
            assert torch.equal(tensor, expected[key]), key
        assert not module.training and not any(p.requires_grad for p in module.parameters())


def test_round_trip_gives_the_same_module_outputs(original: Components, tmp_path: Path) -> None:
    save_components(original, tmp_path)
    loaded = load_model(tmp_path, CPU)[0]
    rounded = build_components(original.config, original.tokenizer)
    for name, module in rounded.modules().items():
        module.load_state_dict(fp16_rounded(original.modules()[name]))
        module.eval()
    text = original.config.text_encoder
    ids = loaded.tokenizer.encode(["a red circle", "two blue squares"], text.context_length)
    assert torch.equal(ids, original.tokenizer.encode(["a red circle", "two blue squares"], 16))
    x, t, images = torch.randn(2, 4, 4, 4), torch.tensor([10.0, 900.0]), torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        context = loaded.text_encoder(ids)
        assert torch.equal(context, rounded.text_encoder(ids))
        assert torch.equal(loaded.unet(x, t, context), rounded.unet(x, t, context))
        assert torch.equal(loaded.autoencoder(images)[0], rounded.autoencoder(images)[0])


def test_float32_storage_is_exact(original: Components, tmp_path: Path) -> None:
    save_components(original, tmp_path, dtype=torch.float32)
    loaded = load_model(tmp_path, CPU)[0]
    for name, module in loaded.modules().items():
        for key, tensor in original.modules()[name].state_dict().items():
            assert torch.equal(module.state_dict()[key], tensor), f"{name}.{key}"


def test_saved_folder_holds_the_three_files_and_prefixed_keys(
    original: Components, tmp_path: Path
) -> None:
    save_components(original, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE]
    )
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert ModelConfig.from_dict(config) == original.config
    state, _ = load_weights(tmp_path / WEIGHTS_FILE)
    assert {key.split(".")[0] for key in state} == {"autoencoder", "unet", "text_encoder"}
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert len(state) == sum(len(m.state_dict()) for m in original.modules().values())


@pytest.mark.parametrize("missing", [CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE])
def test_missing_file_is_a_usage_error_naming_it(model_copy: Path, missing: str) -> None:
    (model_copy / missing).unlink()
    with pytest.raises(UsageError, match=f"has no {missing}"):
        load_model(model_copy, CPU)[0]


def test_truncated_weights_file_is_a_usage_error_naming_it(model_copy: Path) -> None:
    weights = model_copy / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(UsageError, match=f"cannot read weights .*{WEIGHTS_FILE}"):
        load_model(model_copy, CPU)[0]


def test_garbage_weights_file_is_a_usage_error(model_copy: Path) -> None:
    (model_copy / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(UsageError, match=WEIGHTS_FILE):
        load_model(model_copy, CPU)[0]


def test_corrupt_config_is_a_usage_error(model_copy: Path) -> None:
    (model_copy / CONFIG_FILE).write_text("{ not json")
    with pytest.raises(UsageError, match=CONFIG_FILE):
        load_model(model_copy, CPU)[0]


def edit_weights(folder: Path, edit) -> None:
    state, metadata = load_weights(folder / WEIGHTS_FILE)
    edit(state)
    save_weights(folder / WEIGHTS_FILE, state, metadata)


def test_missing_key_is_a_usage_error_naming_it(model_copy: Path) -> None:
    edit_weights(model_copy, lambda state: state.pop("unet.conv_out.weight"))
    with pytest.raises(UsageError, match=r"\[unet\]: missing key conv_out\.weight"):
        load_model(model_copy, CPU)[0]


def test_unexpected_key_is_a_usage_error_naming_it(model_copy: Path) -> None:
    edit_weights(model_copy, lambda state: state.update({"text_encoder.extra": torch.ones(2)}))
    with pytest.raises(UsageError, match=r"\[text_encoder\]: unexpected key extra"):
        load_model(model_copy, CPU)[0]


def test_key_of_no_component_is_a_usage_error_naming_it(model_copy: Path) -> None:
    edit_weights(model_copy, lambda state: state.update({"vae.decoder.weight": torch.ones(2)}))
    with pytest.raises(UsageError, match=r"unexpected key vae\.decoder\.weight"):
        load_model(model_copy, CPU)[0]


def test_wrong_shape_is_a_usage_error_naming_key_and_shapes(model_copy: Path) -> None:
    def widen(state: dict[str, torch.Tensor]) -> None:
        state["autoencoder.quant_conv.bias"] = torch.zeros(99, dtype=torch.float16)

    edit_weights(model_copy, widen)
    with pytest.raises(UsageError, match=r"key quant_conv\.bias has shape \(99,\), expected"):
        load_model(model_copy, CPU)[0]


def test_load_module_state_changes_nothing_when_a_later_key_is_bad() -> None:
    module = nn.Linear(3, 2)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    bad = {"weight": torch.zeros(2, 3), "bias": torch.zeros(5)}
    with pytest.raises(UsageError, match="linear: key bias has shape"):
        load_module_state(module, bad, "linear")
    assert all(torch.equal(module.state_dict()[k], v) for k, v in before.items())


def test_load_module_state_casts_to_the_module_dtype() -> None:
    module = nn.Linear(3, 2)
    state = {"weight": torch.ones(2, 3, dtype=torch.float16), "bias": torch.ones(2).half()}
    load_module_state(module, state, "linear")
    assert module.weight.dtype == torch.float32
    assert torch.equal(module.weight, torch.ones(2, 3))


def test_a_file_that_is_no_checkpoint_is_a_usage_error(model_copy: Path) -> None:
    with pytest.raises(UsageError, match="not a checkpoint file"):
        load_model(model_copy / CONFIG_FILE, CPU)


def test_a_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no model folder"):
        load_model(tmp_path / "nowhere", CPU)


def test_empty_modules_are_on_meta_and_skip_initialisation_only_inside() -> None:
    with empty_modules():
        layer = nn.Linear(3, 4)
        assert layer.weight.device.type == "meta"
        ones = torch.ones(3, device="cpu")
        assert torch.equal(nn.init.zeros_(ones), torch.ones(3, device="cpu"))  # a no-op inside
    assert torch.equal(nn.init.zeros_(torch.ones(3)), torch.zeros(3))
    with pytest.raises(RuntimeError, match="inside"), empty_modules():
        raise RuntimeError("inside")
    assert torch.equal(nn.init.ones_(torch.zeros(2)), torch.ones(2))  # restored after a raise
    assert nn.Linear(3, 4).weight.device.type == "cpu"


def test_empty_modules_in_one_thread_leave_other_threads_initialising() -> None:
    inside, checked = threading.Event(), threading.Event()

    def load() -> None:
        with empty_modules():
            inside.set()
            checked.wait(10)

    loader = threading.Thread(target=load)
    loader.start()
    inside.wait(10)
    try:
        # Meanwhile, in this thread: real initialisation on the CPU.
        assert torch.equal(nn.init.ones_(torch.zeros(2)), torch.ones(2))
        assert nn.Linear(3, 4).weight.device.type == "cpu"
    finally:
        checked.set()
        loader.join()
    # Overlapping uses in two threads leave no no-op behind.
    first, second = threading.Barrier(2), threading.Barrier(2)

    def overlap() -> None:
        with empty_modules():
            first.wait(10)
        second.wait(10)

    threads = [threading.Thread(target=overlap) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert torch.equal(nn.init.ones_(torch.zeros(2)), torch.ones(2))


def test_loading_a_model_does_not_import_torch_dynamo(tiny_model_dir: Path) -> None:
    # Initialising meta tensors imports torch._dynamo (1.4 s of a cold start); loads skip it.
    code = (
        "import sys, latentdiff; "
        f"latentdiff.load_pipeline({str(tiny_model_dir)!r}, device='cpu'); "
        "print('torch._dynamo' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"

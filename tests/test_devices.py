import pytest
import torch

from latentdiff.cli.checkpoints import DTYPE_NAMES
from latentdiff.devices import DTYPES, resolve_device, resolve_dtype
from latentdiff.errors import UsageError


def test_auto_prefers_cuda():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == torch.device(expected)


@pytest.mark.parametrize("name", ["cpu", torch.device("cpu")])
def test_cpu(name):
    assert resolve_device(name) == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "CPU", "mps", "cuda:99", ""])
def test_unknown_or_unavailable_is_a_usage_error(name):
    with pytest.raises(UsageError, match="device"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_usage_error():
    with pytest.raises(UsageError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    "name, dtype",
    [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)]
    + [(dtype, dtype) for dtype in (torch.float32, torch.float16, torch.bfloat16)],
)
def test_resolve_dtype(name, dtype):
    assert resolve_dtype(name) is dtype


@pytest.mark.parametrize("name", ["float8", "FP16", "", torch.float64, torch.int8])
def test_unknown_or_unsupported_dtype_is_a_usage_error(name):
    with pytest.raises(UsageError, match="dtype"):
        resolve_dtype(name)


def test_the_cli_offers_exactly_the_known_dtypes():
    assert DTYPE_NAMES == tuple(DTYPES)

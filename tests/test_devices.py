import pytest
import torch

from latentdiff.devices import resolve_device
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

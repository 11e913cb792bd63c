"""Device choice: auto/explicit requests, CPU fallback with a reason, MPS opt-in, missing torch.

Most tests run against a fake ``torch`` module (put into ``sys.modules``) so the CUDA and MPS paths
are exercised on a CPU-only machine; one test uses the real torch when it is installed.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types

import pytest
from CochleaCommonLib.devices import (
    DeviceChoice,
    describe_devices,
    normalise_device_request,
    require_torch,
    resolve_device,
    torch_installed,
)
from CochleaCommonLib.errors import InvalidInputError, MissingDependencyError


def fake_torch(*, gpus: int = 0, cuda_build: bool = True, mps: bool = False) -> types.ModuleType:
    """A stand-in for torch with ``gpus`` CUDA devices and optional MPS."""
    torch = types.ModuleType("torch")
    torch.__spec__ = importlib.machinery.ModuleSpec("torch", None)
    props = [types.SimpleNamespace(name=f"Fake GPU {i}", total_memory=(16 + i) * 2**30, major=9, minor=0)
             for i in range(gpus)]
    torch.cuda = types.SimpleNamespace(is_available=lambda: gpus > 0, device_count=lambda: gpus,
                                       get_device_properties=lambda i: props[i])
    torch.version = types.SimpleNamespace(cuda="12.4" if cuda_build else None)
    torch.backends = types.SimpleNamespace(mps=types.SimpleNamespace(is_available=lambda: mps))
    torch.device = lambda name: ("device", name)
    return torch


@pytest.fixture
def use_torch(monkeypatch):
    def install(**kwargs):
        monkeypatch.setitem(sys.modules, "torch", fake_torch(**kwargs))

    return install


@pytest.mark.parametrize("text, expected", [("auto", "auto"), (None, "auto"), ("", "auto"), (" CPU ", "cpu"),
                                            ("Cuda", "cuda"), ("cuda:1", "cuda:1"), ("mps", "mps")])
def test_normalise_accepts_the_documented_choices(text, expected):
    assert normalise_device_request(text) == expected


@pytest.mark.parametrize("text", ["gpu", "cuda:", "cuda:-1", "cuda:x", "tpu", "cpu0"])
def test_invalid_device_lists_the_choices(text):
    with pytest.raises(InvalidInputError) as info:
        resolve_device(text)
    message = str(info.value)
    assert repr(text)[1:-1] in message and "auto" in message and "cuda:<index>" in message and "mps" in message


def test_auto_prefers_cuda(use_torch):
    use_torch(gpus=1)
    choice = resolve_device("auto")
    assert (choice.name, choice.requested, choice.message) == ("cuda", "auto", "")
    assert choice.is_gpu and not choice.fell_back
    assert choice.torch_device() == ("device", "cuda")


def test_auto_without_gpu_is_cpu_without_complaint(use_torch):
    use_torch(gpus=0, cuda_build=False)
    choice = resolve_device()
    assert choice.name == "cpu" and choice.message == "" and not choice.is_gpu


def test_cuda_on_a_cpu_only_build_falls_back_with_the_reason(use_torch):
    use_torch(gpus=0, cuda_build=False)
    choice = resolve_device("cuda")
    assert choice.name == "cpu" and choice.requested == "cuda" and choice.fell_back
    assert choice.message == ("CUDA was requested but PyTorch reports no CUDA device (CPU-only build of torch); "
                              "using the CPU.")


def test_cuda_build_without_a_gpu_says_so(use_torch):
    use_torch(gpus=0, cuda_build=True)
    choice = resolve_device("cuda:0")
    assert choice.name == "cpu"
    assert "finds no usable GPU" in choice.message and choice.message.endswith("using the CPU.")


def test_cuda_index_is_checked_against_the_device_count(use_torch):
    use_torch(gpus=2)
    assert resolve_device("cuda:1").name == "cuda:1"
    choice = resolve_device("cuda:2")
    assert choice.name == "cpu"
    assert "only 2 CUDA device(s)" in choice.message and "cuda:0..cuda:1" in choice.message


def test_mps_is_opt_in_for_auto_but_honoured_when_asked(use_torch):
    use_torch(gpus=0, mps=True)
    assert resolve_device("auto").name == "cpu"
    assert resolve_device("auto", allow_mps=True).name == "mps"
    assert resolve_device("mps").name == "mps"


def test_unavailable_mps_falls_back(use_torch):
    use_torch(gpus=0, mps=False)
    choice = resolve_device("mps")
    assert choice.name == "cpu" and "MPS" in choice.message


def test_cuda_wins_over_mps_for_auto(use_torch):
    use_torch(gpus=1, mps=True)
    assert resolve_device("auto", allow_mps=True).name == "cuda"


def test_describe_devices_lists_gpus_with_memory(use_torch):
    use_torch(gpus=2)
    devices = {d["name"]: d for d in describe_devices()}
    assert devices["cpu"]["available"] is True
    assert devices["cuda:0"]["description"] == "Fake GPU 0" and devices["cuda:0"]["memory_gib"] == 16.0
    assert devices["cuda:1"]["memory_gib"] == 17.0 and devices["cuda:1"]["compute_capability"] == "9.0"
    assert devices["mps"]["available"] is False


def test_describe_devices_without_gpu_explains(use_torch):
    use_torch(gpus=0, cuda_build=False)
    devices = {d["name"]: d for d in describe_devices()}
    assert devices["cuda"]["available"] is False and "CPU-only build" in devices["cuda"]["note"]


def test_missing_torch_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    assert torch_installed() is False
    with pytest.raises(MissingDependencyError) as info:
        require_torch()
    message = str(info.value)
    assert "PyTorch" in message and "PyTorch Utils" in message and "pip install torch==2.13.0" in message
    with pytest.raises(MissingDependencyError):
        resolve_device("auto")
    # the CPU needs no torch to be named, only to be used
    choice = resolve_device("cpu")
    assert choice.name == "cpu"
    with pytest.raises(MissingDependencyError):
        choice.torch_device()
    assert describe_devices() == [{"name": "cpu", "type": "cpu", "available": True,
                                   "description": describe_devices()[0]["description"],
                                   "note": "PyTorch is not installed"}]


def test_real_torch_device_objects():
    torch = pytest.importorskip("torch")
    choice = resolve_device("cpu")
    assert choice.torch_device() == torch.device("cpu")
    auto = resolve_device("auto")
    assert auto.name == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        fallback = resolve_device("cuda")
        assert fallback.name == "cpu" and fallback.message.startswith("CUDA was requested but PyTorch")


def test_device_choice_is_printable():
    assert str(DeviceChoice("cuda:1", "cuda:1")) == "cuda:1"

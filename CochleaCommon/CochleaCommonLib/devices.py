"""Choose the compute device (CPU, CUDA GPU, Apple MPS) for PyTorch, falling back to the CPU with a reason.

Why: a clinician who asks for the GPU on a laptop without one should get a result on the CPU and one
sentence saying why, not a CUDA stack trace. ``auto`` picks CUDA when PyTorch can use it, else the CPU;
Apple's MPS backend is opt-in (``allow_mps``) because it is not validated for our models.

torch is imported lazily (inside functions) so that every module loads fast without it and the core
works for file conversion and geometry on machines that never installed it.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Any

from .errors import InvalidInputError, MissingDependencyError

#: The device strings a user may type (``cuda:<index>`` selects one of several GPUs).
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:<index>", "mps")

#: The PyTorch version the project is tested with (the CPU build is enough for everything).
TORCH_PIN = "2.13.0"

_CUDA_INDEX = re.compile(r"^cuda:(\d+)$")


def require_torch() -> Any:
    """Import and return the ``torch`` module, or raise :class:`MissingDependencyError` saying how to get it."""
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError(
            "PyTorch is not installed, and it is needed to run the neural networks. "
            "In 3D Slicer: install the 'PyTorch' extension from the Extensions Manager, restart Slicer, "
            "then open the 'PyTorch Utils' module and click 'Install PyTorch'. "
            f"Outside Slicer: run `pip install torch=={TORCH_PIN}` (the CPU build is enough; add "
            "`--index-url https://download.pytorch.org/whl/cpu` to avoid downloading the GPU build)."
        ) from exc
    return torch


def torch_installed() -> bool:
    """Whether ``import torch`` would work, without importing it (cheap; for ``cochlea info``)."""
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except (ValueError, ImportError):  # a torch module without a spec (stub or half-initialised import)
        return sys.modules.get("torch") is not None


@dataclass(frozen=True)
class DeviceChoice:
    """The device a computation will run on, and why if it is not the one requested.

    Attributes:
        name: a torch device string: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"mps"``.
        requested: what the user asked for (normalised, e.g. ``"auto"``).
        message: empty when the request was honoured; otherwise one sentence explaining the fallback,
            meant to be shown to the user (log line, status bar, CLI stderr).
    """

    name: str
    requested: str
    message: str = ""

    @property
    def fell_back(self) -> bool:
        """True when the device differs from an explicit request (``auto`` never falls back)."""
        return bool(self.message)

    @property
    def is_gpu(self) -> bool:
        """True for CUDA and MPS devices."""
        return self.name != "cpu"

    def torch_device(self) -> Any:
        """The ``torch.device`` for :attr:`name` (imports torch)."""
        return require_torch().device(self.name)

    def __str__(self) -> str:
        return self.name


def normalise_device_request(requested: str | None) -> str:
    """Lower-case, strip and validate a device string; raise :class:`InvalidInputError` listing the choices."""
    text = "auto" if requested is None else str(requested).strip().lower()
    if text in ("", "auto"):
        return "auto"
    if text in ("cpu", "cuda", "mps") or _CUDA_INDEX.match(text):
        return text
    raise InvalidInputError(
        f"Unknown compute device '{requested}'. Choose one of: {', '.join(DEVICE_CHOICES)} "
        "(for example 'cuda:1' for the second GPU)."
    )


def _mps_available(torch: Any) -> bool:
    backend = getattr(getattr(torch, "backends", None), "mps", None)
    try:
        return bool(backend is not None and backend.is_available())
    except Exception:  # very old torch builds or broken macOS drivers
        return False


def _why_no_cuda(torch: Any) -> str:
    if getattr(getattr(torch, "version", None), "cuda", None) is None:
        return "PyTorch reports no CUDA device (CPU-only build of torch)"
    return "PyTorch was built with CUDA but finds no usable GPU (no NVIDIA GPU or driver on this computer)"


def resolve_device(requested: str = "auto", *, allow_mps: bool = False) -> DeviceChoice:
    """Turn a user's device request into the device that will actually be used.

    ``auto`` picks the first CUDA GPU when PyTorch can use it, otherwise MPS if ``allow_mps`` and
    available, otherwise the CPU. An explicit ``cuda``/``cuda:N``/``mps`` that is not available falls
    back to the CPU, with :attr:`DeviceChoice.message` saying why (an explicit ``mps`` is its own
    opt-in, ``allow_mps`` only affects ``auto``). Invalid strings raise :class:`InvalidInputError`;
    a missing torch raises :class:`MissingDependencyError` (a device is only resolved to run torch).
    """
    req = normalise_device_request(requested)
    if req == "cpu":
        return DeviceChoice("cpu", req)
    torch = require_torch()
    cuda_ok = bool(torch.cuda.is_available())
    if req == "auto":
        if cuda_ok:
            return DeviceChoice("cuda", req)
        if allow_mps and _mps_available(torch):
            return DeviceChoice("mps", req)
        return DeviceChoice("cpu", req)
    if req == "mps":
        if _mps_available(torch):
            return DeviceChoice("mps", req)
        return DeviceChoice("cpu", req, "Apple MPS was requested but PyTorch reports it is not available "
                                       "(it needs a Mac with Apple silicon and macOS 12.3 or later); using the CPU.")
    # cuda or cuda:N
    if not cuda_ok:
        return DeviceChoice("cpu", req, f"CUDA was requested but {_why_no_cuda(torch)}; using the CPU.")
    match = _CUDA_INDEX.match(req)
    if match:
        index, count = int(match.group(1)), int(torch.cuda.device_count())
        if index >= count:
            return DeviceChoice("cpu", req, f"GPU {req} was requested but only {count} CUDA device(s) exist "
                                            f"(cuda:0..cuda:{count - 1}); using the CPU.")
    return DeviceChoice(req, req)


def describe_devices() -> list[dict[str, Any]]:
    """List the compute devices this Python can use, for ``cochlea info`` and bug reports.

    Never raises: without torch it lists the CPU only, noting that torch is missing.
    """
    cpu = {"name": "cpu", "type": "cpu", "available": True,
           "description": f"CPU ({os.cpu_count() or '?'} logical cores)"}
    if not torch_installed():
        cpu["note"] = "PyTorch is not installed"
        return [cpu]
    try:
        torch = require_torch()
    except Exception as exc:  # a broken install (e.g. missing shared library) must not break `cochlea info`
        cpu["note"] = f"PyTorch failed to import: {exc}"
        return [cpu]
    devices = [cpu]
    try:
        count = int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:
        count = 0
    for index in range(count):
        entry: dict[str, Any] = {"name": f"cuda:{index}", "type": "cuda", "available": True}
        try:
            props = torch.cuda.get_device_properties(index)
            entry["description"] = str(props.name)
            entry["memory_gib"] = round(float(props.total_memory) / 2**30, 1)
            entry["compute_capability"] = f"{props.major}.{props.minor}"
        except Exception as exc:
            entry["description"] = f"unknown CUDA device ({exc})"
        devices.append(entry)
    if count == 0:
        devices.append({"name": "cuda", "type": "cuda", "available": False, "note": _why_no_cuda(torch)})
    if getattr(getattr(torch, "backends", None), "mps", None) is not None:
        devices.append({"name": "mps", "type": "mps", "available": _mps_available(torch),
                        "note": "opt-in (experimental for these models)"})
    return devices

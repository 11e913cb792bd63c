"""``cochlea info``: what is installed, which devices PyTorch sees, which models are present and intact.

Why: the first thing to ask for in any bug report, and the quickest way for a user to see why a model
is "not found" (where it was looked for) or why the GPU is not used.
"""

from __future__ import annotations

import argparse
import platform
import sys
from typing import Any

from .. import __version__
from ..errors import CochleaError
from ._common import add_registry_argument, load_registry, print_json

#: (distribution name, import name) of the packages whose versions matter for support.
PACKAGES = (("numpy", "numpy"), ("SimpleITK", "SimpleITK"), ("vtk", "vtk"), ("torch", "torch"),
            ("h5py", "h5py"), ("pynrrd", "nrrd"))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``info`` subcommand."""
    parser = subparsers.add_parser("info", help="show versions, devices and model status",
                                   description="Show versions, compute devices and which models are installed.")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    add_registry_argument(parser)
    parser.set_defaults(handler=run)


def package_version(dist: str, module: str) -> str:
    """Installed version of a package, or ``"not installed"``; metadata first, so nothing heavy is imported."""
    from importlib import import_module, metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        pass
    try:  # inside Slicer, vtk and SimpleITK are built in and have no pip metadata
        mod = import_module(module)
    except ImportError:
        return "not installed"
    version = getattr(mod, "__version__", None)
    if version is None and module == "vtk":
        version = mod.vtkVersion.GetVTKVersion()
    return str(version or "unknown")


def collect_info(args: argparse.Namespace) -> dict[str, Any]:
    """Everything ``cochlea info`` reports, as plain data."""
    from ..devices import describe_devices, resolve_device, torch_installed

    info: dict[str, Any] = {
        "cochlea_toolkit": __version__,
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "packages": {dist: package_version(dist, module) for dist, module in PACKAGES},
        "devices": describe_devices(),
    }
    if torch_installed():
        try:
            choice = resolve_device("auto")
            info["default_device"] = choice.name
        except CochleaError as exc:
            info["default_device"] = f"cpu ({exc})"
    else:
        info["default_device"] = "cpu (PyTorch not installed)"
    try:
        registry = load_registry(args)
        info["registry"] = str(registry.path)
        info["model_cache"] = str(registry.cache_dir)
        info["model_search_dirs"] = [str(d) for d in registry.search_dirs]
        info["models"] = [s.to_dict() for s in registry.status()]
    except CochleaError as exc:  # a broken registry is something to report here, not a reason to fail
        info["registry_error"] = str(exc)
        info["models"] = []
    return info


def format_info(info: dict[str, Any]) -> str:
    """The human-readable text of ``cochlea info``."""
    lines = [f"CochleaToolkit {info['cochlea_toolkit']}",
             f"  python      {info['python']} ({info['python_executable']})",
             f"  platform    {info['platform']}"]
    lines += [f"  {name:<11} {version}" for name, version in info["packages"].items()]
    lines.append("Devices")
    for dev in info["devices"]:
        state = "available" if dev.get("available") else "not available"
        detail = dev.get("description", "")
        if "memory_gib" in dev:
            detail += f", {dev['memory_gib']} GiB"
        if dev.get("note"):
            detail = f"{detail} ({dev['note']})" if detail else dev["note"]
        lines.append(f"  {dev['name']:<8} {state:<14} {detail}".rstrip())
    lines.append(f"  default: {info['default_device']}")
    if "registry_error" in info:
        lines.append(f"Models: the registry cannot be used: {info['registry_error']}")
        return "\n".join(lines)
    lines.append(f"Models (registry {info['registry']}; cache {info['model_cache']})")
    labels = {"ok": "ok", "missing": "missing", "mismatch": "CORRUPT"}
    for m in info["models"]:
        if m["state"] == "missing":
            where = f"(get it: cochlea models download {m['id']})" if m["downloadable"] else "(no download address)"
        else:
            where = f"{m['path']} [{m['origin']}]"
        lines.append(f"  {m['id']:<22} v{m['version']:<6} {labels[m['state']]:<8} {where}")
    if not info["models"]:
        lines.append("  (no models registered)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the report; always succeeds (it is a diagnostic)."""
    info = collect_info(args)
    if args.json:
        print_json(info)
    else:
        print(format_info(info))
    return 0

#!/usr/bin/env python3
"""Rewrite each module's MODULE_PYTHON_SCRIPTS / MODULE_PYTHON_RESOURCES lists from its folder.

Why: Slicer packages only the files a module's CMakeLists.txt lists, silently. Run this after
adding or removing a file in a module folder; ``Testing/static`` fails until the lists match.
Usage: ``python scripts/sync_cmake_lists.py [--check]`` from anywhere in the repository.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = ("CochleaCommon", "CochleaLandmarks", "CochleaSegmentation", "ElectrodeAnnotation")
RESOURCE_SUFFIXES = {".ui", ".png", ".svg", ".json", ".txt", ".nrrd", ".vtk", ".pt", ".pth", ".npz",
                     ".safetensors", ".onnx", ".fcsv", ".csv", ".h5", ".md"}


def module_files(module: Path) -> tuple[list[str], list[str]]:
    scripts = [f"{module.name}.py"]
    lib = module / f"{module.name}Lib"
    scripts += sorted(p.relative_to(module).as_posix() for p in lib.rglob("*.py") if "__pycache__" not in p.parts)
    resources = sorted(p.relative_to(module).as_posix() for p in (module / "Resources").rglob("*")
                       if p.is_file() and p.suffix in RESOURCE_SUFFIXES)
    return scripts, resources


def _replace_block(text: str, variable: str, items: list[str]) -> str:
    block = f"set({variable}\n" + "".join(f"  {item}\n" for item in items) + "  )"
    new, count = re.subn(rf"set\({variable}\n.*?\n  \)", block, text, flags=re.S)
    if count != 1:
        raise SystemExit(f"cannot find the set({variable} ...) block")
    return new


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name in MODULES:
        module = ROOT / name
        cmake = module / "CMakeLists.txt"
        scripts, resources = module_files(module)
        text = cmake.read_text()
        new = _replace_block(_replace_block(text, "MODULE_PYTHON_SCRIPTS", scripts), "MODULE_PYTHON_RESOURCES",
                             resources)
        if new != text:
            stale.append(cmake.relative_to(ROOT).as_posix())
            if not check:
                cmake.write_text(new)
    for path in stale:
        print(("stale: " if check else "updated: ") + path)
    return 1 if (check and stale) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

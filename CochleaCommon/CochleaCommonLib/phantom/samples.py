"""The phantoms offered as Slicer Sample Data: generated locally on first use, then cached.

Why not a download: no real temporal-bone CT may be redistributed with the extension, and the
phantoms are reproducible from a seed, so each sample is generated on the user's machine the
first time it is asked for (a few seconds) and reused from the per-user cache afterwards. Nothing
is fetched from the network.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInputError
from ..progress import Progress, ProgressCallback
from .groundtruth import GENERATOR_VERSION


@dataclass(frozen=True)
class PhantomSample:
    """One entry of the Sample Data catalogue."""

    name: str
    title: str
    kind: str
    seed: int
    spacing_mm: float
    side: str


SAMPLES: dict[str, PhantomSample] = {
    s.name: s
    for s in (
        PhantomSample("CochleaPhantomCT", "Cochlea phantom CT (left, 0.3 mm)", "ct", 101, 0.3, "left"),
        PhantomSample("CochleaPhantomCBCT", "Cochlea phantom CBCT (right, 0.25 mm)", "cbct", 102, 0.25, "right"),
        PhantomSample("CochleaPhantomPostop", "Cochlea phantom post-op CT (left, 0.3 mm)", "postop", 103, 0.3,
                      "left"),
    )
}


def sample_cache_root(cache_root: str | os.PathLike | None = None) -> Path:
    """Folder holding generated samples: ``<toolkit cache>/phantoms``."""
    if cache_root is not None:
        return Path(cache_root)
    from ..model_registry import default_cache_root

    return default_cache_root() / "phantoms"


def ensure_sample(name: str, cache_root: str | os.PathLike | None = None,
                  progress: Progress | ProgressCallback | None = None) -> Path:
    """Return the case folder of sample ``name``, generating it first if it is not cached.

    The folder is built under a temporary name and renamed into place, so an interrupted
    generation never leaves a half-written sample behind.
    """
    if name not in SAMPLES:
        raise InvalidInputError(f"Unknown phantom sample '{name}'; available: {', '.join(SAMPLES)}.")
    sample = SAMPLES[name]
    root = sample_cache_root(cache_root)
    folder = root / f"{name}-g{GENERATOR_VERSION}"
    if (folder / "case.json").is_file():
        return folder
    from .api import generate_case

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        case = generate_case(sample.kind, sample.seed, spacing=sample.spacing_mm, side=sample.side, progress=progress)
        written = case.write(tmp, preview=False)
        for item in written.iterdir():
            shutil.move(str(item), tmp / item.name)
        written.rmdir()
        if folder.exists():  # a concurrent generation finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def sample_files(folder: str | os.PathLike) -> dict[str, Path]:
    """The files of a generated sample by role (volume, labels, landmarks, seed, contacts...)."""
    folder = Path(folder)
    record = json.loads((folder / "case.json").read_text())
    return {role: folder / rel for role, rel in record.get("files", {}).items() if (folder / rel).exists()}

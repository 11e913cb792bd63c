"""Find annotated cases in a folder: a volume and its landmark file (and optionally a seed file).

Why: training and evaluation both start from "a folder of volumes + landmark .fcsv files" as a
researcher or a Slicer user would have saved them, and both must pair files the same way. The rule
is simple and printed in errors: for a volume ``X.nrrd`` (or ``.nii``, ``.nii.gz``, ``.mha``, ``.mhd``)
the landmarks are ``X_landmarks.fcsv``, ``X_landmarks.mrk.json``, ``X.fcsv`` or ``X.mrk.json``, the
optional seed ``X_seed.fcsv`` or ``X_seed.mrk.json``. Label maps (``X-label.nrrd``, ``X_label.nrrd``,
``X.seg.nrrd``) are skipped. Sub-folders are searched (the phantom suite writes one folder per case).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from CochleaCommonLib.atomic import full_suffix
from CochleaCommonLib.errors import InputFileError, InvalidInputError
from CochleaCommonLib.markups_io import read_markups
from CochleaCommonLib.points import PointList

from .landmark_result import LANDMARK_NAMES

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
_LABEL_MARKERS = ("-label", "_label", ".seg", "-seg", "_seg")
_LANDMARK_PATTERNS = ("{stem}_landmarks.fcsv", "{stem}_landmarks.mrk.json", "{stem}.fcsv", "{stem}.mrk.json")
_SEED_PATTERNS = ("{stem}_seed.fcsv", "{stem}_seed.mrk.json")


@dataclass(frozen=True)
class LandmarkCase:
    """One annotated volume: ``case_id`` (the volume's file stem), its files, and the seed file if any."""

    case_id: str
    volume_path: Path
    landmarks_path: Path
    seed_path: Path | None = None


def file_stem(path: Path) -> str:
    """``X`` for ``X.nii.gz``, ``X.nrrd``, ``X.mrk.json``: the name without its format-defining extension."""
    suffix = full_suffix(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.stem


def _first_existing(folder: Path, patterns: tuple[str, ...], stem: str) -> Path | None:
    for pattern in patterns:
        candidate = folder / pattern.format(stem=stem)
        if candidate.is_file():
            return candidate
    return None


def find_landmark_cases(data_dir: str | os.PathLike) -> list[LandmarkCase]:
    """Every volume under ``data_dir`` that has a landmark file, sorted by case id.

    Raises :class:`InputFileError` when the folder does not exist or holds no annotated volume
    (the message states the naming rule).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise InputFileError(f"The data folder {root} does not exist or is not a folder.")
    cases = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or full_suffix(path).lower() not in VOLUME_SUFFIXES:
            continue
        stem = file_stem(path)
        if any(stem.lower().endswith(m) for m in _LABEL_MARKERS):
            continue
        landmarks = _first_existing(path.parent, _LANDMARK_PATTERNS, stem)
        if landmarks is None:
            continue
        cases.append(LandmarkCase(stem, path, landmarks, _first_existing(path.parent, _SEED_PATTERNS, stem)))
    if not cases:
        raise InputFileError(
            f"No annotated volume was found in {root}. Each volume X.nrrd (or .nii.gz, .mha) needs its "
            "landmarks beside it as X_landmarks.fcsv, X_landmarks.mrk.json, X.fcsv or X.mrk.json.")
    ids = [c.case_id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InputFileError(f"Several volumes in {root} share the case name(s) {', '.join(duplicates)}; "
                             "give every volume a distinct file name.")
    return sorted(cases, key=lambda c: c.case_id)


def read_ground_truth(path: str | os.PathLike, *, require_all: bool = True) -> dict[str, np.ndarray]:
    """The landmark positions (RAS) of a ground-truth file, by name.

    Labels are matched to ``LANDMARK_NAMES`` ignoring case, spaces and underscores (``Modiolus_base``
    and ``modiolus base`` are both the basal point). Raises :class:`InvalidInputError` naming the
    labels that are missing when ``require_all``.
    """
    points: PointList = read_markups(path)
    wanted = {n.lower().replace(" ", "").replace("_", ""): n for n in LANDMARK_NAMES}
    found: dict[str, np.ndarray] = {}
    for label, position in zip(points.labels, points.positions_ras):
        key = label.lower().replace(" ", "").replace("_", "")
        if key in wanted and wanted[key] not in found:
            found[wanted[key]] = np.asarray(position, dtype=np.float64)
    missing = [n for n in LANDMARK_NAMES if n not in found]
    if missing and require_all:
        raise InvalidInputError(
            f"{path} has no point labelled {', '.join(repr(m) for m in missing)}; label the points "
            f"{', '.join(repr(n) for n in LANDMARK_NAMES)}.")
    return found


def read_seed(path: str | os.PathLike) -> np.ndarray:
    """The first point of a markups file (RAS); :class:`InvalidInputError` when it has none."""
    points = read_markups(path)
    if len(points) == 0:
        raise InvalidInputError(f"The seed file {path} has no point; place one point on the cochlea.")
    return np.asarray(points.positions_ras[0], dtype=np.float64)


#: Head volumes (seed-free training): one landmark file per ear present, named by side.
_SIDE_PATTERNS = {side: (f"{{stem}}_{side}_landmarks.fcsv", f"{{stem}}_{side}_landmarks.mrk.json")
                  for side in ("left", "right")}


@dataclass(frozen=True)
class HeadCase:
    """A volume in which *every* cochlea is annotated, one file per side (``X_left_landmarks.fcsv``, ...)."""

    case_id: str
    volume_path: Path
    landmark_paths: tuple[Path, ...]
    sides: tuple[str, ...]


def find_head_cases(data_dir: str | os.PathLike) -> list[HeadCase]:
    """Every volume under ``data_dir`` with ``X_left_landmarks.fcsv`` and/or ``X_right_landmarks.fcsv``.

    Why a naming rule per side: the global pass learns "a cochlea is here" and "nothing is here"
    from the same volume, so an ear left unannotated would teach it to ignore real cochleae; a
    side's file states that ear was annotated. Raises :class:`InputFileError` when none is found.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise InputFileError(f"The head data folder {root} does not exist or is not a folder.")
    cases = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or full_suffix(path).lower() not in VOLUME_SUFFIXES:
            continue
        stem = file_stem(path)
        found = {side: _first_existing(path.parent, patterns, stem) for side, patterns in _SIDE_PATTERNS.items()}
        found = {side: p for side, p in found.items() if p is not None}
        if found:
            cases.append(HeadCase(stem, path, tuple(found.values()), tuple(found)))
    if not cases:
        raise InputFileError(
            f"No head volume was found in {root}. Each volume X.nrrd needs one landmark file per ear it shows, "
            "X_left_landmarks.fcsv and/or X_right_landmarks.fcsv, with every cochlea in the volume annotated.")
    return sorted(cases, key=lambda c: c.case_id)

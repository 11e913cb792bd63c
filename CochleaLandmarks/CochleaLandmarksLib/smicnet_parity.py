"""The authors' sliding-window procedure, reproduced exactly but batched (seed-methods.md 1.7).

Why a separate mode: published errors (0.70 / 1.15 / 0.84 mm for the 5-volume model) were measured
with this exact procedure: an asymmetric 24-voxel box (offsets -12..+11), a coarse pass over every
3rd entry of the flattened offset list, a fine pass over 7 consecutive list entries around each
non-background coarse hit (wrapping into the neighbouring row at the row ends), "max probability
where the argmax is the class" maps, per-class thresholds, 6-connected largest island and weighted
centre of mass. Checking published behaviour needs all of that, quirks included.

Batching is exact: the patch of a voxel is always the same, so each voxel's prediction is the same
whenever it is visited; the order of visits only decides which equal value is written last. We
therefore score the coarse entries in batches, collect the fine entries, score each distinct voxel
once, and write the maps.

Index quirks kept: the fine window of coarse entry ``c`` is flat entries ``3c-3 .. 3c+3``; a negative
entry wraps to the end of the list as Python indexing does in the authors' loop; entries past the
end (only possible for the last coarse entry) are skipped, where the authors' loop would fail.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from CochleaCommonLib.image import Image

from .smicnet_model import BACKGROUND_CLASS, CLASS_NAMES
from .smicnet_sweep import LANDMARK_NAMES, Classifier, PatchSource, classify_voxels

#: The notebook's settings: box offsets -RANGE..RANGE-1, coarse step, background threshold.
PARITY_RANGE = 12
PARITY_COARSE_STEP = 3
PARITY_FINE_HALF = 3
PARITY_COARSE_BACKGROUND = 0.5
#: Per-class thresholds: apex 0.9999 (active in the notebook), basal 0.99 and RW 0.5 (commented out there).
PARITY_THRESHOLDS = {"Helicotrema": 0.9999, "Modiolus base": 0.99, "Round Window": 0.5}
PARITY_CONNECTIVITY = 6


def parity_offsets(r: int = PARITY_RANGE) -> np.ndarray:
    """The flattened ``(dx, dy, dz)`` offsets in the authors' order: dz fastest, then dx, then dy."""
    x = y = z = np.arange(-r, r)
    gx, gy, gz = np.meshgrid(x, y, z)  # default 'xy' indexing: shape (len(y), len(x), len(z))
    return np.column_stack([gx.ravel(), gy.ravel(), gz.ravel()]).astype(np.int64)


def fine_entries(coarse_hits: np.ndarray, count: int, step: int = PARITY_COARSE_STEP,
                 half: int = PARITY_FINE_HALF) -> np.ndarray:
    """Flat-list entries visited by the fine pass for the coarse entries ``coarse_hits`` (indices into the
    ``[::step]`` list), with Python's wrap of negative indices and entries past the end dropped."""
    hits = np.asarray(coarse_hits, dtype=np.int64).reshape(-1)
    entries = (step * hits)[:, None] + np.arange(-half, half + 1)[None, :]
    entries = entries.reshape(-1)
    entries = np.where(entries < 0, entries + count, entries)
    return np.unique(entries[entries < count])


def parity_sweep(
    image: Image,
    seed_ras,
    classifier: Classifier,
    *,
    batch_size: int | None = None,
    progress: Callable[[float], Any] | None = None,
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[dict[str, Image], int]:
    """The authors' coarse/fine sweep around ``seed_ras``; returns the three class maps and the patch count.

    The reference point is the seed's continuous index on the LPS 0.3 mm grid; each visited point is
    reference + offset rounded half-to-even (``numpy.round``), the patch centred on it (pixel 40, no
    offset correction). Maps hold ``max(p)`` where ``argmax(p)`` is the class and 0 elsewhere.
    """
    r = PARITY_RANGE
    size = 2 * r + 2  # the box grid: rounding can reach offset +r from a reference ending in .5
    source = PatchSource(image, seed_ras, size, centre_offset_vox=(0, 0, 0), preprocess=preprocess)
    # Continuous index of the seed on the box grid; box voxel 0 is the seed voxel minus size // 2.
    ref = _continuous_box_index(source, seed_ras)
    offsets = parity_offsets(r)
    points = np.round(ref[None, :] + offsets).astype(np.int64)  # half to even, like the notebook
    points = np.clip(points, 0, size - 1)

    coarse = points[::PARITY_COARSE_STEP]
    half = None if progress is None else (lambda f: progress(0.5 * f))
    p_coarse = classify_voxels(source, classifier, coarse, batch_size=batch_size, progress=half)
    hits = np.flatnonzero(p_coarse[:, BACKGROUND_CLASS] <= PARITY_COARSE_BACKGROUND)
    entries = fine_entries(hits, len(points))
    fine_points = np.unique(points[entries], axis=0) if len(entries) else np.zeros((0, 3), dtype=np.int64)
    rest = None if progress is None else (lambda f: progress(0.5 + 0.5 * f))
    p_fine = classify_voxels(source, classifier, fine_points, batch_size=batch_size, progress=rest)

    maps = np.zeros((size, size, size, len(LANDMARK_NAMES)), dtype=np.float32)
    if len(fine_points):
        cls = np.argmax(p_fine, axis=1)
        best = p_fine.max(axis=1)
        for c in range(len(LANDMARK_NAMES)):
            sel = cls == c
            maps[tuple(fine_points[sel].T) + (c,)] = best[sel]
    if progress is not None:
        progress(1.0)
    images = {name: source.box_image(maps[..., c]) for c, name in enumerate(LANDMARK_NAMES)}
    assert len(CLASS_NAMES) == len(LANDMARK_NAMES) + 1
    return images, int(len(coarse) + len(fine_points))


def _continuous_box_index(source: PatchSource, seed_ras) -> np.ndarray:
    """The seed's continuous (i, j, k) index on the source's box grid."""
    box = source.box_image(np.zeros((1, 1, 1), dtype=np.float32))
    return np.asarray(box.ras_to_continuous_index(np.asarray(seed_ras, dtype=np.float64)), dtype=np.float64)

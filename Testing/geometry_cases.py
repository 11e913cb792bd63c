"""Test volumes with awkward geometry: every code path that maps points or voxels runs on these.

Why: an axis-aligned, 1 mm, zero-origin volume hides almost every geometry bug (swapped axes,
missing LPS flip, ignored direction, truncation). These cases break each assumption.
"""

from __future__ import annotations

import numpy as np
from CochleaCommonLib.geometry import rotation_matrix
from CochleaCommonLib.image import Image

SHAPE_KJI = (9, 11, 13)  # deliberately different along each axis


def _ramp(shape=SHAPE_KJI) -> np.ndarray:
    """Every voxel has a unique value encoding its (k, j, i) index, so any reordering shows."""
    k, j, i = np.indices(shape)
    return (k * 10000 + j * 100 + i).astype(np.int32)


def oblique_image() -> Image:
    """Rotated about a skew axis, anisotropic spacing, off-centre origin."""
    return Image.from_geometry(_ramp(), (0.3, 0.45, 0.6), (12.5, -31.25, 47.0), rotation_matrix([1.0, 2.0, 3.0], 27.0))


def flipped_image() -> Image:
    """Negative determinant (a left-handed grid): i and k swapped, as in some sagittal acquisitions."""
    direction = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # i->S, j->A, k->R
    assert np.linalg.det(direction) < 0
    return Image.from_geometry(_ramp(), (0.25, 0.25, 0.4), (-5.0, 7.5, -120.0), direction)


def translated_image() -> Image:
    """Axis-aligned but far from the origin (as scanner coordinates usually are)."""
    return Image.from_geometry(_ramp(), (0.2, 0.2, 0.2), (-130.75, -100.5, -80.25))


CASES = {"oblique": oblique_image, "flipped": flipped_image, "translated": translated_image}


def assert_same_world_voxels(a: Image, b: Image, atol_mm: float = 1e-6) -> None:
    """Assert two images hold the same voxels at the same world positions (to ``atol_mm``).

    Their matrices may legitimately differ: Slicer's reader turns a left-handed grid into a
    right-handed one by reversing an axis, which moves no voxel in world space.
    """
    assert a.array.shape == b.array.shape or sorted(a.array.shape) == sorted(b.array.shape)
    k, j, i = np.indices(b.array.shape)
    ijk_b = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(np.float64)
    world_b = b.index_to_ras(ijk_b)
    ijk_a = a.ras_to_continuous_index(world_b)
    nearest = np.floor(ijk_a + 0.5)
    distance = np.linalg.norm(a.index_to_ras(nearest) - world_b, axis=1)
    assert distance.max() <= atol_mm, f"voxel centres differ by up to {distance.max():.3g} mm"
    ia, ja, ka = nearest.astype(int).T
    assert np.array_equal(a.array[ka, ja, ia], b.array.ravel()), "voxel values differ at the same world position"

"""Coordinate conventions shared by every module.

Why this file exists: the quiet killer in landmark work is geometry. Slicer works in RAS, files
(NRRD, DICOM, ITK, ``.fcsv``) are written in LPS, and arrays are indexed KJI. Every conversion in
the project goes through these few functions so there is exactly one place to get it right.

* RAS <-> LPS: negate the first two coordinates (the transform is its own inverse).
* Continuous index -> voxel: rounded to the nearest voxel centre (``floor(x + 0.5)``), never
  truncated (``astype(int)`` moves points by up to one voxel towards zero).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .errors import InvalidInputError

#: 4x4 matrix mapping RAS to LPS (and LPS to RAS: it is its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
LPS_TO_RAS = RAS_TO_LPS


def as_points(points: ArrayLike) -> np.ndarray:
    """Return ``points`` as a float64 array of shape (N, 3); a single point becomes (1, 3)."""
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise InvalidInputError(f"Expected 3D points with 3 coordinates each, got an array of shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError("A point has a non-finite coordinate (NaN or infinity).")
    return arr


def _same_shape(result: np.ndarray, points: ArrayLike) -> np.ndarray:
    return result[0] if np.asarray(points).ndim == 1 else result


def ras_to_lps(points: ArrayLike) -> np.ndarray:
    """Convert RAS points (N, 3) or (3,) to LPS."""
    pts = as_points(points).copy()
    pts[:, :2] *= -1.0
    return _same_shape(pts, points)


def lps_to_ras(points: ArrayLike) -> np.ndarray:
    """Convert LPS points (N, 3) or (3,) to RAS."""
    return ras_to_lps(points)


def apply_affine(matrix: ArrayLike, points: ArrayLike) -> np.ndarray:
    """Apply a 4x4 homogeneous matrix to points (N, 3) or (3,)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4):
        raise InvalidInputError(f"Expected a 4x4 matrix, got shape {m.shape}.")
    pts = as_points(points)
    out = pts @ m[:3, :3].T + m[:3, 3]
    return _same_shape(out, points)


def round_index(ijk: ArrayLike) -> np.ndarray:
    """Round continuous voxel indices to the nearest voxel (half-way rounds up), as integers.

    ``np.round`` rounds half to even and ``astype(int)`` truncates towards zero; both bias
    positions, so neither is used.
    """
    return np.floor(np.asarray(ijk, dtype=np.float64) + 0.5).astype(np.int64)


def matrix_ras_to_lps(ijk_to_ras: ArrayLike) -> np.ndarray:
    """Convert an IJK-to-RAS matrix into the IJK-to-LPS matrix files store (and back)."""
    return RAS_TO_LPS @ np.asarray(ijk_to_ras, dtype=np.float64)


def make_ijk_to_ras(spacing: ArrayLike, origin_ras: ArrayLike, direction_ras: ArrayLike | None = None) -> np.ndarray:
    """Build a 4x4 IJK-to-RAS matrix from spacing (i, j, k), origin and 3x3 direction columns."""
    sp = np.asarray(spacing, dtype=np.float64).reshape(3)
    if np.any(~np.isfinite(sp)) or np.any(sp <= 0):
        raise InvalidInputError(f"Voxel spacing must be positive, got {tuple(sp)} mm.")
    direction = np.eye(3) if direction_ras is None else np.asarray(direction_ras, dtype=np.float64).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = direction * sp[None, :]
    m[:3, 3] = np.asarray(origin_ras, dtype=np.float64).reshape(3)
    return m


def rotation_matrix(axis: ArrayLike, angle_deg: float) -> np.ndarray:
    """3x3 rotation about ``axis`` by ``angle_deg`` degrees (right-handed, Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    t = np.deg2rad(angle_deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)

"""The ``Image`` type every algorithm takes and returns: a KJI array plus its IJK-to-RAS matrix.

Why: algorithms must not care whether a volume came from a Slicer node, a NRRD file or a DICOM
series. An ``Image`` carries exactly what Slicer's ``vtkMRMLScalarVolumeNode`` carries (voxels and
``IJKToRAS``), in the same order as ``slicer.util.arrayFromVolume`` (``array[k, j, i]``), so the
Slicer layer converts nodes without any reordering and the geometry can never silently drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from .errors import InvalidInputError
from .geometry import apply_affine, as_points, make_ijk_to_ras, round_index


@dataclass(frozen=True, eq=False)
class Image:
    """A 3D scalar volume in world (RAS) space.

    Attributes:
        array: voxel values indexed ``[k, j, i]`` (Slicer/SimpleITK order).
        ijk_to_ras: 4x4 matrix mapping continuous voxel index ``(i, j, k, 1)`` to RAS millimetres.
    """

    array: np.ndarray
    ijk_to_ras: np.ndarray

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim != 3:
            raise InvalidInputError(
                f"A 3D volume is needed, but this image has {arr.ndim} dimension(s) (shape {arr.shape}). "
                "Load a 3D CT or cone-beam CT volume, not a single slice or a multi-component image."
            )
        if min(arr.shape) < 1:
            raise InvalidInputError(f"The volume is empty (shape {arr.shape}).")
        m = np.asarray(self.ijk_to_ras, dtype=np.float64)
        if m.shape != (4, 4) or not np.all(np.isfinite(m)):
            raise InvalidInputError("The volume's IJK-to-RAS matrix must be a finite 4x4 matrix.")
        if not np.allclose(m[3], [0, 0, 0, 1]):
            raise InvalidInputError("The volume's IJK-to-RAS matrix is not affine (last row must be 0 0 0 1).")
        if abs(np.linalg.det(m[:3, :3])) < 1e-12:
            raise InvalidInputError("The volume's geometry is degenerate (zero spacing or collinear axes).")
        object.__setattr__(self, "array", arr)
        object.__setattr__(self, "ijk_to_ras", m)

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_geometry(
        cls,
        array: np.ndarray,
        spacing: ArrayLike = (1.0, 1.0, 1.0),
        origin_ras: ArrayLike = (0.0, 0.0, 0.0),
        direction_ras: ArrayLike | None = None,
    ) -> Image:
        """Build an image from spacing (i, j, k), origin and direction columns, all in RAS."""
        return cls(np.asarray(array), make_ijk_to_ras(spacing, origin_ras, direction_ras))

    def with_array(self, array: np.ndarray) -> Image:
        """Same geometry, other voxels (for example a probability map on this grid)."""
        if np.asarray(array).shape != self.array.shape:
            raise InvalidInputError(
                f"Array shape {np.asarray(array).shape} does not match the image {self.array.shape}."
            )
        return Image(array, self.ijk_to_ras.copy())

    # --- geometry ----------------------------------------------------------------------
    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along i, j, k (the reverse of ``array.shape``)."""
        k, j, i = self.array.shape
        return (i, j, k)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along i, j, k in mm."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def origin(self) -> np.ndarray:
        """RAS position of the centre of voxel (0, 0, 0)."""
        return self.ijk_to_ras[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit RAS directions of the i, j, k axes."""
        return self.ijk_to_ras[:3, :3] / self.spacing[None, :]

    @property
    def ras_to_ijk(self) -> np.ndarray:
        """Inverse of :attr:`ijk_to_ras`."""
        return np.linalg.inv(self.ijk_to_ras)

    def ras_to_continuous_index(self, points_ras: ArrayLike) -> np.ndarray:
        """Continuous (i, j, k) index of RAS points; not rounded."""
        return apply_affine(self.ras_to_ijk, points_ras)

    def index_to_ras(self, ijk: ArrayLike) -> np.ndarray:
        """RAS position of (continuous or integer) voxel indices (i, j, k)."""
        return apply_affine(self.ijk_to_ras, ijk)

    def contains_index(self, ijk: ArrayLike) -> np.ndarray:
        """Whether rounded indices fall on a voxel of this image (bool per point)."""
        idx = round_index(as_points(ijk))
        return np.all((idx >= 0) & (idx < np.array(self.shape_ijk)), axis=1)

    def ras_to_index(self, points_ras: ArrayLike, *, check_inside: bool = True) -> np.ndarray:
        """Nearest voxel (i, j, k) of RAS points, rounded (never truncated).

        Raises :class:`InvalidInputError` naming the point when ``check_inside`` and a point is
        outside the volume.
        """
        cont = self.ras_to_continuous_index(points_ras)
        idx = round_index(cont)
        if check_inside:
            inside = self.contains_index(np.atleast_2d(cont))
            if not np.all(inside):
                bad = as_points(points_ras)[~inside][0]
                lo, hi = self.world_bounds()
                raise InvalidInputError(
                    f"The point R={bad[0]:.1f}, A={bad[1]:.1f}, S={bad[2]:.1f} mm lies outside the volume "
                    f"(which spans R {lo[0]:.1f}..{hi[0]:.1f}, A {lo[1]:.1f}..{hi[1]:.1f}, "
                    f"S {lo[2]:.1f}..{hi[2]:.1f} mm). Place the point inside the image."
                )
        return idx

    def value_at(self, points_ras: ArrayLike) -> np.ndarray:
        """Voxel values at the nearest voxels of RAS points (points must lie inside)."""
        idx = np.atleast_2d(self.ras_to_index(points_ras))
        return self.array[idx[:, 2], idx[:, 1], idx[:, 0]]

    def corner_points_ras(self) -> np.ndarray:
        """RAS positions of the 8 corner voxel centres."""
        i, j, k = (n - 1 for n in self.shape_ijk)
        corners = np.array([[a, b, c] for a in (0, i) for b in (0, j) for c in (0, k)], dtype=np.float64)
        return self.index_to_ras(corners)

    def world_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned RAS bounds (min, max) of the voxel centres."""
        c = self.corner_points_ras()
        return c.min(axis=0), c.max(axis=0)

    def center_ras(self) -> np.ndarray:
        """RAS position of the volume's centre."""
        return self.index_to_ras((np.array(self.shape_ijk, dtype=np.float64) - 1) / 2.0)

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:.3g}" for s in self.spacing)
        return f"Image(shape_ijk={self.shape_ijk}, spacing=({sp}) mm, dtype={self.array.dtype})"

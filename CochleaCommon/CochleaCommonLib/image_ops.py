"""Geometry-preserving operations on :class:`Image`: reorientation, resampling, cropping.

Why: models are trained in one array convention (SMICNet: array axes increasing towards L, P, S at
0.3 mm). Patients arrive in any orientation and spacing. Reorientation here is exact (a transpose
and flips of the array with the matching matrix update: no interpolation), resampling goes
through ITK (a change of spacing alone through the same interpolation done per axis in numpy), and
crops carry their own IJK-to-RAS so results map back to world space exactly.
"""

from __future__ import annotations

import itertools

import numpy as np
from numpy.typing import ArrayLike

from .errors import InvalidInputError
from .geometry import RAS_TO_LPS, round_index
from .image import Image
from .separable_resample import resample_linear_separable

_TARGETS = {"LPS": RAS_TO_LPS[:3, :3], "RAS": np.eye(3)}

_INTERPOLATORS = ("linear", "nearest", "bspline")


def axis_permutation(image: Image, target: str = "LPS") -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """For each target axis (e.g. L, P, S), the image axis (0=i, 1=j, 2=k) closest to it and
    whether that axis must be flipped to point the target way."""
    if target not in _TARGETS:
        raise InvalidInputError(f"Unknown axis convention '{target}'; use one of {', '.join(_TARGETS)}.")
    d = _TARGETS[target] @ image.direction  # columns: image axes in target space
    best, best_score = None, -1.0
    for perm in itertools.permutations(range(3)):  # perm[w] = image axis used for world axis w
        score = sum(abs(d[w, perm[w]]) for w in range(3))
        if score > best_score + 1e-12:
            best, best_score = perm, score
    flips = tuple(bool(d[w, best[w]] < 0) for w in range(3))
    return tuple(best), flips


def reorient(image: Image, target: str = "LPS") -> Image:
    """Reorder and flip the array so i, j, k point (as closely as possible) along ``target``.

    Exact: voxel values are moved, never interpolated, and every voxel keeps its world position.
    An oblique volume stays oblique (only the nearest axis order is chosen).
    """
    perm, flips = axis_permutation(image, target)
    n = image.shape_ijk
    new_to_old = np.zeros((4, 4))
    new_to_old[3, 3] = 1.0
    for w, a in enumerate(perm):
        if flips[w]:
            new_to_old[a, w] = -1.0
            new_to_old[a, 3] = n[a] - 1
        else:
            new_to_old[a, w] = 1.0
    # array is KJI: array axis of image axis a is 2 - a
    arr = image.array
    new_axes_kji = [2 - perm[2 - ax] for ax in range(3)]  # new array axis ax is new image axis 2-ax
    arr = np.transpose(arr, new_axes_kji)
    for w in range(3):
        if flips[w]:
            arr = np.flip(arr, axis=2 - w)
    return Image(np.ascontiguousarray(arr), image.ijk_to_ras @ new_to_old)


def _sitk_interpolator(name: str):
    import SimpleITK as sitk

    if name not in _INTERPOLATORS:
        raise InvalidInputError(f"Unknown interpolator '{name}'; use one of {', '.join(_INTERPOLATORS)}.")
    return {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}[name]


def resample_like(image: Image, reference: Image, *, interpolator: str = "linear", default_value: float = 0.0,
                  dtype=None) -> Image:
    """Resample ``image`` onto the grid of ``reference`` (world positions are kept)."""
    import SimpleITK as sitk

    from .image_io import image_from_sitk, image_to_sitk

    src = image_to_sitk(image if dtype is None else image.with_array(image.array.astype(dtype)))
    ref = image_to_sitk(reference.with_array(np.zeros(reference.array.shape, dtype=np.uint8)))
    out = sitk.Resample(src, ref, sitk.Transform(), _sitk_interpolator(interpolator), float(default_value),
                        src.GetPixelID())
    return image_from_sitk(out)


def grid_with_spacing(image: Image, spacing: float | ArrayLike) -> Image:
    """An empty grid covering the same physical extent as ``image`` with a new spacing.

    The outer voxel *edges* are kept, so resampling 0.2 mm to 0.3 mm neither shifts nor shrinks
    the field of view by half a voxel.
    """
    new_spacing = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)).copy()
    if np.any(new_spacing <= 0) or not np.all(np.isfinite(new_spacing)):
        raise InvalidInputError(f"The target spacing must be positive, got {tuple(new_spacing)} mm.")
    old_spacing = image.spacing
    extent = np.array(image.shape_ijk) * old_spacing
    size = np.maximum(1, round_index(extent / new_spacing))
    first_edge = image.ijk_to_ras[:3, :3] @ np.full(3, -0.5) + image.origin
    origin = first_edge + image.direction @ (new_spacing / 2.0)
    m = np.eye(4)
    m[:3, :3] = image.direction * new_spacing[None, :]
    m[:3, 3] = origin
    return Image(np.zeros(tuple(int(s) for s in size[::-1]), dtype=np.uint8), m)


def resample_to_spacing(image: Image, spacing: float | ArrayLike, *, interpolator: str = "linear",
                        default_value: float = 0.0) -> Image:
    """Resample to a new voxel spacing (mm, scalar or per axis i, j, k) over the same extent.

    The new grid keeps the image's axes, so linear interpolation of a floating-point image is done per axis in
    numpy (:mod:`separable_resample`: ITK's values, without importing SimpleITK); anything else goes through ITK.
    """
    grid = grid_with_spacing(image, spacing)
    if interpolator == "linear":
        fast = resample_linear_separable(image, grid, default_value=default_value)
        if fast is not None:
            return fast
    return resample_like(image, grid, interpolator=interpolator, default_value=default_value)


def crop_box(image: Image, center_ras: ArrayLike, size_vox: ArrayLike, *, pad_value: float | None = None) -> Image:
    """A box of ``size_vox`` voxels (i, j, k) centred on the voxel nearest ``center_ras``.

    The crop keeps the image's voxel grid and gets its own IJK-to-RAS, so indices in the crop
    map to the same world points. Parts outside the volume are filled with ``pad_value``, or
    trimmed away when ``pad_value`` is None. The centre must lie inside the volume.
    """
    size = np.broadcast_to(np.asarray(size_vox, dtype=np.int64), (3,))
    if np.any(size < 1):
        raise InvalidInputError(f"The crop size must be at least one voxel, got {tuple(size)}.")
    center = image.ras_to_index(center_ras)
    start = center - size // 2
    stop = start + size
    n = np.array(image.shape_ijk)
    lo, hi = np.maximum(start, 0), np.minimum(stop, n)
    part = image.array[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
    if pad_value is None:
        origin_index = lo
        arr = np.array(part, copy=True)
    else:
        origin_index = start
        dtype = np.result_type(image.array.dtype, np.min_scalar_type(pad_value))
        arr = np.full(tuple(size[::-1]), pad_value, dtype=dtype)
        d = lo - start
        arr[d[2]:d[2] + part.shape[0], d[1]:d[1] + part.shape[1], d[0]:d[0] + part.shape[2]] = part
    m = image.ijk_to_ras.copy()
    m[:3, 3] = image.index_to_ras(origin_index.astype(np.float64))
    return Image(arr, m)


def crop_around(image: Image, center_ras: ArrayLike, size_mm: float | ArrayLike, *,
                pad_value: float | None = None) -> Image:
    """A box of about ``size_mm`` (scalar or per axis i, j, k) around ``center_ras``; see :func:`crop_box`."""
    size_mm = np.broadcast_to(np.asarray(size_mm, dtype=np.float64), (3,))
    if np.any(size_mm <= 0):
        raise InvalidInputError(f"The crop size must be positive, got {tuple(size_mm)} mm.")
    size_vox = np.maximum(1, round_index(size_mm / image.spacing))
    return crop_box(image, center_ras, size_vox, pad_value=pad_value)

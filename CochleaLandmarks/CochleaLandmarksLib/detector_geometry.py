"""Cubes cut out of a volume on the detector's own lattice, and the intensity window they are scaled with.

Why one lattice, whatever the input: the 3D detector is trained and run on cubes whose voxel axes point
to L, P and S (the orientation of a standard axial CT exported to LPS) at a fixed spacing. An oblique,
flipped, permuted or anisotropic input is sampled onto that lattice by one trilinear ``grid_sample``
of the input block that the cube touches, so the network always sees the same anatomy at the same
scale, and a cube index maps back to RAS through the cube's own IJK-to-RAS matrix. Training passes a
rotated, scaled or mirrored set of cube axes through the same function: augmentation and inference
share every line of geometry.

The intensity window is taken from the raw voxels around the cube's centre (robust percentiles of a
strided sample), so CT in Hounsfield units and uncalibrated cone-beam CT land on the same 0..1 scale;
the refinement cubes reuse the window of the coarse cube, which sees enough air and bone to set it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from CochleaCommonLib.devices import require_torch

#: Cube voxel axes i, j, k in RAS: towards L, P and S.
CANONICAL_AXES = np.diag([-1.0, -1.0, 1.0])
#: Robust window: these percentiles of the context region map to 0 and 1.
WINDOW_PERCENTILES = (1.0, 99.5)
#: Scaled intensities are clipped to this range (metal and air beyond it carry no extra information).
CLIP_RANGE = (-0.5, 1.5)


def cube_ijk_to_ras(centre_ras: np.ndarray, size: int, spacing_mm: float,
                    axes: np.ndarray = CANONICAL_AXES) -> np.ndarray:
    """4x4 IJK-to-RAS of a ``size``^3 cube of ``spacing_mm`` voxels centred on ``centre_ras``.

    ``axes`` (3x3, columns = unit directions of i, j, k in RAS) may be rotated or mirrored; the
    cube's centre lies between the two middle voxels when ``size`` is even.
    """
    m = np.eye(4)
    m[:3, :3] = np.asarray(axes, dtype=np.float64) * float(spacing_mm)
    m[:3, 3] = np.asarray(centre_ras, dtype=np.float64) - m[:3, :3] @ np.full(3, (size - 1) / 2.0)
    return m


def _block_bounds(cube_to_input: np.ndarray, size: int, shape_kji: tuple[int, int, int]
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """Inclusive input index box (i, j, k) touched by the cube, clipped; None when the cube misses the volume."""
    corners = np.array([[i, j, k, 1.0] for i in (0, size - 1) for j in (0, size - 1) for k in (0, size - 1)])
    ijk = (corners @ cube_to_input.T)[:, :3]
    n = np.array(shape_kji[::-1])
    lo = np.maximum(np.floor(ijk.min(axis=0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, n - 1)
    if np.any(hi < lo):
        return None
    return lo, hi


def intensity_window(array: np.ndarray, ijk_to_ras: np.ndarray, centre_ras: np.ndarray,
                     radius_mm: float) -> tuple[float, float]:
    """(low, high) raw intensities of the window: percentiles of the voxels within a cube of half-edge ``radius_mm``.

    A strided sample of at most ~64k voxels keeps this at a millisecond on a 512^3 volume.
    """
    centre = (np.linalg.inv(ijk_to_ras) @ np.append(np.asarray(centre_ras, dtype=np.float64), 1.0))[:3]
    half = np.abs(np.linalg.inv(ijk_to_ras[:3, :3])) @ np.full(3, float(radius_mm))
    n = np.array(array.shape[::-1])
    lo = np.clip(np.floor(centre - half).astype(int), 0, n - 1)
    hi = np.clip(np.ceil(centre + half).astype(int) + 1, lo + 1, n)
    step = np.maximum(1, np.round((hi - lo) / 40.0).astype(int))
    sample = array[lo[2]:hi[2]:step[2], lo[1]:hi[1]:step[1], lo[0]:hi[0]:step[0]]
    if sample.size == 0:
        step_all = [max(1, n // 32) for n in array.shape]
        sample = array[::step_all[0], ::step_all[1], ::step_all[2]]
    low, high = np.percentile(sample.astype(np.float32, copy=False), WINDOW_PERCENTILES)
    if not high > low:
        high = low + 1.0
    return float(low), float(high)


def whole_volume_window(array: np.ndarray) -> tuple[float, float]:
    """The window of the global pass: the robust percentiles of the whole (pooled) volume, every other voxel.

    One function for training and inference, so the global pass sees the same scaling in both.
    """
    low, high = np.percentile(np.asarray(array)[::2, ::2, ::2], WINDOW_PERCENTILES)
    return float(low), float(high) if high > low else float(low) + 1.0


def _sampling_theta(cube_to_input: np.ndarray, size: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The 3x4 ``affine_grid`` matrix (align_corners) that takes a cube voxel's normalised output position
    (x = i, y = j, z = k, each -1..1) to the normalised position of its input point within the block
    ``lo..hi`` (inclusive input indices i, j, k): output scaling, cube-to-input map, block offset and input
    normalisation composed in float64, so only the final affine is evaluated in float32 on the device."""
    half = (size - 1) / 2.0
    to_index = np.diag([half, half, half, 1.0])
    to_index[:3, 3] = half
    to_block = np.eye(4)
    to_block[:3, 3] = -np.asarray(lo, dtype=np.float64)
    extent = np.maximum(np.asarray(hi) - np.asarray(lo), 1).astype(np.float64)
    normalise = np.diag(np.append(2.0 / extent, 1.0))
    normalise[:3, 3] = -1.0
    return (normalise @ to_block @ cube_to_input @ to_index)[:3]


#: numpy dtypes torch takes as they are: blocks travel to the device in them and are converted there.
_DEVICE_CONVERTIBLE = {np.dtype(t) for t in ("uint8", "int8", "int16", "int32", "int64", "float16", "float32",
                                             "float64")}


def sample_cubes(array: Any, ijk_to_ras: np.ndarray, cubes: list[np.ndarray], size: int,
                 window: tuple[float, float], *, device: Any = "cpu") -> Any:
    """Trilinear samples of ``array`` (KJI, numpy or torch) on each cube lattice, scaled by ``window``.

    Returns a float32 tensor ``(len(cubes), 1, size, size, size)`` in KJI order on ``device``. Outside
    the volume the nearest edge voxel is repeated (a cube near the border sees a plausible continuation,
    not a black wall); a cube entirely outside the volume is the scaled value 0.

    Why it is built this way: on a GPU this runs inside a 20 ms detection, so only the input block a cube
    touches is copied, in the volume's own dtype (an int16 CT moves half the bytes, converted on the
    device), and the sampling grid is one ``affine_grid`` on the device rather than a float64 grid of
    ``size``^3 points built on the CPU.
    """
    torch = require_torch()
    F = torch.nn.functional

    inv = np.linalg.inv(np.asarray(ijk_to_ras, dtype=np.float64))
    shape = tuple(int(s) for s in array.shape)
    low, high = window
    scale = 1.0 / (high - low)
    out = torch.empty((len(cubes), 1, size, size, size), dtype=torch.float32, device=device)
    for n, cube in enumerate(cubes):
        cube_to_input = inv @ cube
        bounds = _block_bounds(cube_to_input, size, shape)
        if bounds is None:
            out[n].fill_(float(np.clip((0.0 - low) * scale, *CLIP_RANGE)))
            continue
        lo, hi = bounds
        block = array[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1]
        if isinstance(block, np.ndarray):
            dtype = block.dtype if block.dtype in _DEVICE_CONVERTIBLE else np.dtype(np.float32)
            block = torch.from_numpy(np.ascontiguousarray(block, dtype=dtype))
        block = block.to(device=device).to(torch.float32)
        theta = torch.from_numpy(_sampling_theta(cube_to_input, size, lo, hi).astype(np.float32)).to(device)
        grid = F.affine_grid(theta[None], [1, 1, size, size, size], align_corners=True)
        sampled = F.grid_sample(block[None, None], grid, mode="bilinear", padding_mode="border", align_corners=True)
        out[n] = ((sampled[0] - low) * scale).clamp_(*CLIP_RANGE)
    return out


def cube_points_to_ras(cube: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """RAS of continuous cube indices ``ijk`` (N, 3)."""
    pts = np.asarray(ijk, dtype=np.float64).reshape(-1, 3)
    return pts @ cube[:3, :3].T + cube[:3, 3]


def ras_to_cube_points(cube: np.ndarray, ras: np.ndarray) -> np.ndarray:
    """Continuous cube indices (i, j, k) of RAS points (N, 3)."""
    inv = np.linalg.inv(cube)
    pts = np.asarray(ras, dtype=np.float64).reshape(-1, 3)
    return pts @ inv[:3, :3].T + inv[:3, 3]


def pooled_for_spacing(array: np.ndarray, ijk_to_ras: np.ndarray, target_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Block means of ``array`` (KJI) over about ``target_mm`` / spacing voxels per axis, and their IJK-to-RAS.

    Why: the global pass samples a 0.4 mm head CT at 2 mm; point-sampling would keep the fine voxels'
    noise and alias thin bone. An integer block mean (the largest factor not coarser than the target)
    is the cheap anti-aliasing filter, and the same one runs in training and inference.
    """
    m = np.asarray(ijk_to_ras, dtype=np.float64)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    f = np.maximum(1, np.floor(float(target_mm) / spacing + 1e-6)).astype(int)  # i, j, k
    fk, fj, fi = int(f[2]), int(f[1]), int(f[0])
    nk, nj, ni = (array.shape[0] // fk) * fk, (array.shape[1] // fj) * fj, (array.shape[2] // fi) * fi
    if min(nk, nj, ni) == 0:
        return np.asarray(array, dtype=np.float32), m
    a = np.asarray(array[:nk, :nj, :ni], dtype=np.float32)
    pooled = a.reshape(nk // fk, fk, nj // fj, fj, ni // fi, fi).mean(axis=(1, 3, 5), dtype=np.float32)
    scale = np.eye(4)
    scale[:3, :3] = np.diag(f.astype(np.float64))
    scale[:3, 3] = (f - 1) / 2.0
    return np.ascontiguousarray(pooled), m @ scale


def volume_cube(ijk_to_ras: np.ndarray, shape_kji: tuple[int, int, int], spacing_mm: float,
                multiple: int = 8, minimum: int = 48) -> tuple[np.ndarray, int]:
    """The smallest canonical cube (IJK-to-RAS, edge in voxels) that holds the whole volume.

    The edge is a multiple of ``multiple`` and at least ``minimum`` voxels (a small temporal-bone
    volume is padded by its edge values, as the global pass was trained on crops of heads).
    """
    n = np.array(shape_kji[::-1], dtype=np.float64)
    corners = np.array([[i, j, k, 1.0] for i in (-0.5, n[0] - 0.5) for j in (-0.5, n[1] - 0.5)
                        for k in (-0.5, n[2] - 0.5)]) @ np.asarray(ijk_to_ras).T
    lo, hi = corners[:, :3].min(axis=0), corners[:, :3].max(axis=0)
    edge = int(np.ceil((hi - lo).max() / spacing_mm))
    edge = max(minimum, int(np.ceil(edge / multiple)) * multiple)
    return cube_ijk_to_ras((lo + hi) / 2.0, edge, spacing_mm), edge

"""Where in an island the classifier is most sure: the peak of its smoothed log-odds, to a fraction of a voxel.

Why not the island's probability-weighted centre (the authors' rule, kept for the modiolus base and the
round window): a patch classifier fires over a region around its landmark, and the centre of that region
is the landmark only when the region is symmetric about it. At the helicotrema it is not: the spiral ends
there, so the look-alike patches lie on one side only (down the duct, towards the base) and the island's
centre sits below the apex. On our development phantoms 14 of 16 apex errors pointed down the modiolar
axis, and the centre's median error was 0.7-0.9 mm; the peak of the smoothed log-odds (the mode of the
response) is unbiased by that one-sided tail.

Only the island's own voxels are read (everything outside it counts as a confident "no"), so the result
does not depend on how much of the map around the island was scored (fast mode prunes it).
"""

from __future__ import annotations

import numpy as np
from CochleaCommonLib.image import Image

from .landmark_islands import Island

#: Log-odds are clipped to +-16 (p within 1e-7 of 0 or 1): float32 probabilities carry no more, and a
#: saturated plateau then smooths to its middle rather than to an arbitrary voxel.
LOG_ODDS_LIMIT = 16.0
#: Width (standard deviation, voxels of the map) of the smoothing: enough to turn single-voxel noise into a
#: slope, small against an island (a few voxels across).
MODE_SIGMA_VOX = 1.0


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _smooth(field: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable convolution, 'valid' along each axis (the caller pads by the kernel's radius)."""
    out = field
    for axis in range(3):
        out = np.apply_along_axis(lambda line: np.convolve(line, kernel, mode="valid"), axis, out)
    return out


def _parabolic_offset(minus: float, centre: float, plus: float) -> float:
    """Sub-voxel position of the vertex of the parabola through three samples at -1, 0, +1 (within +-0.5)."""
    curvature = minus - 2.0 * centre + plus
    if curvature >= 0.0:  # not a maximum along this axis (flat or a saddle): stay on the voxel
        return 0.0
    return float(np.clip(0.5 * (minus - plus) / curvature, -0.5, 0.5))


def island_mode_ras(prob: Image, island: Island, *, sigma_vox: float = MODE_SIGMA_VOX) -> np.ndarray:
    """The RAS position of the maximum of the island's log-odds smoothed by a Gaussian of ``sigma_vox``.

    Voxels outside the island count as ``-LOG_ODDS_LIMIT``. The maximum is taken over the island's voxels
    and refined to a fraction of a voxel by a parabola through it and its two neighbours along each axis.
    """
    members = np.asarray(island.members_kji, dtype=np.int64).reshape(-1, 3)
    if len(members) == 0:
        return np.asarray(island.centre_ras, dtype=np.float64)
    kernel = _gaussian_kernel(float(sigma_vox))
    radius = len(kernel) // 2
    pad = radius + 1  # one more voxel for the parabola's neighbours
    lo = members.min(axis=0) - pad
    shape = members.max(axis=0) - lo + 1 + pad
    field = np.full(tuple(shape + 2 * radius), -LOG_ODDS_LIMIT)
    p = np.asarray(prob.array, dtype=np.float64)[tuple(members.T)]
    p = np.clip(p, 1e-7, 1.0 - 1e-7)
    local = members - lo + radius
    field[tuple(local.T)] = np.clip(np.log(p / (1.0 - p)), -LOG_ODDS_LIMIT, LOG_ODDS_LIMIT)
    smooth = _smooth(field, kernel)  # shape == ``shape``: index = members - lo
    inside = members - lo
    best = inside[int(np.argmax(smooth[tuple(inside.T)]))]
    offset = np.zeros(3)
    for axis in range(3):
        step = np.zeros(3, dtype=np.int64)
        step[axis] = 1
        offset[axis] = _parabolic_offset(smooth[tuple(best - step)], smooth[tuple(best)], smooth[tuple(best + step)])
    kji = (best + lo).astype(np.float64) + offset
    return np.asarray(prob.index_to_ras(kji[::-1]), dtype=np.float64).reshape(3)


__all__ = ["LOG_ODDS_LIMIT", "MODE_SIGMA_VOX", "island_mode_ras"]

"""From a heatmap and displacements to a point: peak, then displacement voting around the peak.

Why not the plain centroid of a thresholded island (SkullEngine) or the average over all cells
(Noothout): the centroid of a 1.5 mm-cell island is biased by the island's shape and cut by the cube
border, and the all-cell average is pulled by weak, far cells (seed-methods.md 5.3). Here only the cells
within ``VOTE_RADIUS_CELLS`` of the strongest cell vote, each for "my centre + my predicted displacement",
weighted by its heat squared: sub-cell precision from the displacement, robustness from the locality.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .detector_model import DISPLACEMENT_SCALE, OUTPUT_STRIDE

#: Cells within this Chebyshev distance of the peak vote.
VOTE_RADIUS_CELLS = 2
#: Cells weaker than this fraction of the peak do not vote.
VOTE_FLOOR = 0.25


def readout_cells(heat: np.ndarray, disp: np.ndarray, peak_index: tuple[int, int, int] | None = None
                  ) -> tuple[np.ndarray, float]:
    """(cube voxel i, j, k of the landmark, peak heat) from one channel's heat ``(n, n, n)`` (KJI) and
    displacement ``(3, n, n, n)`` (i, j, k components, in cube voxels / ``DISPLACEMENT_SCALE``).

    ``peak_index`` (k, j, i) overrides the global maximum (used for the second ear's peak).
    """
    if peak_index is None:
        peak_index = np.unravel_index(int(np.argmax(heat)), heat.shape)
    k, j, i = (int(v) for v in peak_index)
    peak = float(heat[k, j, i])
    r = VOTE_RADIUS_CELLS
    sl = tuple(slice(max(0, c - r), c + r + 1) for c in (k, j, i))
    h = heat[sl]
    kk, jj, ii = np.meshgrid(*(np.arange(s.start, s.start + n) for s, n in zip(sl, h.shape)), indexing="ij")
    centres = np.stack([ii, jj, kk]).astype(np.float64) * OUTPUT_STRIDE
    votes = centres + disp[(slice(None), *sl)].astype(np.float64) * DISPLACEMENT_SCALE
    w = np.where(h >= VOTE_FLOOR * peak, h.astype(np.float64) ** 2, 0.0)
    if w.sum() <= 0:
        return np.array([i, j, k], dtype=np.float64) * OUTPUT_STRIDE, peak
    point = (votes * w).reshape(3, -1).sum(axis=1) / w.sum()
    return point, peak


def heat_peaks(heat: Any, threshold: float, min_separation_cells: int, limit: int) -> list[tuple[tuple[int, int, int],
                                                                                               float]]:
    """Local maxima of ``heat`` (torch or numpy ``(n, n, n)``) above ``threshold``, strongest first, at least
    ``min_separation_cells`` apart (non-maximum suppression by a max filter), at most ``limit``."""
    import torch

    F = torch.nn.functional

    t = heat if isinstance(heat, torch.Tensor) else torch.from_numpy(np.asarray(heat, dtype=np.float32))
    sep = int(min_separation_cells)
    pooled = F.max_pool3d(t[None, None], 2 * sep + 1, stride=1, padding=sep)[0, 0]
    keep = (t >= pooled) & (t >= threshold)
    idx = torch.nonzero(keep, as_tuple=False).numpy()
    values = t[keep].numpy()
    peaks: list[tuple[tuple[int, int, int], float]] = []
    for o in np.argsort(-values, kind="stable"):
        # Greedy: a plateau (a saturated sigmoid gives exact ties) yields one peak, not one per tied cell.
        if all(np.max(np.abs(idx[o] - np.array(p))) > sep for p, _ in peaks):
            peaks.append((tuple(int(v) for v in idx[o]), float(values[o])))
            if len(peaks) == limit:
                break
    return peaks

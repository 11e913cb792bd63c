"""The eight views of a voxel that SMICNet was trained on: sagittal and coronal planes, four quarter turns each.

Why: SMICNet is trained with sagittal and coronal patches spun through any in-plane angle (seed-methods.md
1.4; ``smicnet_augment``), so every one of these views is an image the network knows. A look-alike (the
middle turn's lumen beside the apex, canal or ossicle edges) fools it in one view far more often than in all
eight, while a real landmark scores in each. Averaging the eight views of the voxels the sagittal sweep found
promising is test-time augmentation restricted to where it matters: on 24 development phantoms it removed
every apex error above 1 mm of the sagittal sweep (five, up to 3.1 mm) for about a third more patches.

Conventions (SMICNet's ``vol[i, j, k]``, axes towards L, P, S; see ``smicnet_sweep``):
* sagittal plane: rows along +j, columns along +k (the sweep's own patch); coronal: rows +i, columns +k,
  as in training (``smicnet_augment.plane_axes``);
* ``turns`` quarter turns as ``numpy.rot90`` of the (rows, columns) image;
* the voxel always lands on the pixel ``(landmark_pixel, landmark_pixel)`` of the final 81x81 patch, the
  pixel the weights were trained to see the landmark at (40 for ours, 41 for the authors'), whatever the
  plane or turn: the patch is cut ``half`` pixels around the voxel with ``half >= 40 + |pixel - 40|``,
  turned about the voxel, then cropped so the voxel sits at that pixel.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from CochleaCommonLib.errors import InvalidInputError
from numpy.lib.stride_tricks import sliding_window_view

from .smicnet_model import PATCH_SIZE

HALF = PATCH_SIZE // 2  # 40
PLANES = ("sagittal", "coronal")


class View(NamedTuple):
    """One plane through a voxel and a number of quarter turns of its image."""

    plane: str
    turns: int


#: The view the sweep scores (the authors' patch).
SAGITTAL = View("sagittal", 0)
#: Both planes, four quarter turns each; the first is the sweep's own.
ALL_VIEWS = tuple(View(plane, turns) for plane in PLANES for turns in range(4))


def check_view(view: View) -> View:
    """``view`` as a :class:`View`, or a clear error naming what is wrong."""
    try:
        plane, turns = view
    except (TypeError, ValueError):
        raise InvalidInputError(f"A view is (plane, quarter turns), got {view!r}.") from None
    if plane not in PLANES or int(turns) != turns:
        raise InvalidInputError(f"A view's plane must be one of {PLANES} and its turns a whole number; got {view!r}.")
    return View(str(plane), int(turns) % 4)


def margin_needed(landmark_pixel: int) -> int:
    """Voxels of context each side of a voxel that any view of it needs."""
    return HALF + abs(int(landmark_pixel) - HALF)


def _crop_start(landmark_pixel: int, half: int) -> int:
    # The voxel sits at pixel `half` of the uncropped (2 half + 1)^2 image; after cropping from `start` it is
    # at pixel half - start, which must equal landmark_pixel.
    return half - int(landmark_pixel)


def cut_view(vol: np.ndarray, centres: np.ndarray, view: View, landmark_pixel: int) -> np.ndarray:
    """Raw (unquantised) patches ``(M, 81, 81)`` of ``view`` around the voxels ``centres`` ``(M, 3)`` of ``vol``.

    ``vol`` is indexed ``[i, j, k]`` and must hold :func:`margin_needed` voxels around every centre.
    """
    view = check_view(view)
    half = margin_needed(landmark_pixel)
    size = 2 * half + 1
    axes = (1, 2) if view.plane == "sagittal" else (0, 2)
    windows = sliding_window_view(vol, (size, size), axis=axes)  # windows[i, a, b] starts at the shifted corner
    corner = np.asarray(centres, dtype=np.int64).reshape(-1, 3).copy()
    corner[:, list(axes)] -= half
    extent = np.ones(3, dtype=np.int64)
    extent[list(axes)] = size
    if np.any(corner < 0) or np.any(corner + extent > np.array(vol.shape)):
        raise InvalidInputError("A view's patch reaches outside the region it is cut from (internal margin error).")
    big = windows[corner[:, 0], corner[:, 1], corner[:, 2]]  # (M, size, size): rows, columns of the plane
    big = np.rot90(big, view.turns, axes=(1, 2))
    start = _crop_start(landmark_pixel, half)
    return np.ascontiguousarray(big[:, start:start + PATCH_SIZE, start:start + PATCH_SIZE])


def cut_view_torch(vol: Any, centres: Any, view: View, landmark_pixel: int) -> Any:
    """The same patches as :func:`cut_view` from a torch ``vol`` on its own device (``centres`` an int64 tensor
    on that device); bit-identical."""
    import torch

    view = check_view(view)
    half = margin_needed(landmark_pixel)
    steps = torch.arange(-half, half + 1, device=vol.device)
    i, j, k = centres[:, 0], centres[:, 1], centres[:, 2]
    cols = k[:, None] + steps
    if view.plane == "sagittal":
        big = vol[i[:, None, None], (j[:, None] + steps)[:, :, None], cols[:, None, :]]
    else:
        big = vol[(i[:, None] + steps)[:, :, None], j[:, None, None], cols[:, None, :]]
    big = torch.rot90(big, view.turns, dims=(1, 2))
    start = _crop_start(landmark_pixel, half)
    return big[:, start:start + PATCH_SIZE, start:start + PATCH_SIZE]


__all__ = ["ALL_VIEWS", "PLANES", "SAGITTAL", "View", "check_view", "cut_view", "cut_view_torch", "margin_needed"]

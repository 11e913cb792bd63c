"""The three passes of the 3D detector and the cube each one sees.

Why three passes (seed-methods.md section 5, global-to-local, with section 2's heatmaps):

* ``global``: the whole volume at 2 mm, one heatmap channel "cochlea" (peaked on the Modiolus base of
  every ear present). Only the seed-free mode runs it; each peak becomes the seed of the local passes.
* ``coarse``: a 30 mm cube at 0.75 mm around the seed, one channel per landmark. A click up to 8 mm
  off still leaves the round window (about 4.5 mm from the cochlea's centre) 2.5 mm inside the cube.
* ``fine``: an 8 mm cube at 0.25 mm around each coarse estimate. Cells are 0.5 mm apart and each
  predicts a sub-voxel displacement, so the answer is not limited by the grid.

The numbers are recorded in the weight file, so a model trained with other cubes runs unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .landmark_result import LANDMARK_NAMES

#: Channel name of the global pass (its peak is the Modiolus base of each ear).
COCHLEA_CHANNEL = "Cochlea"


@dataclass(frozen=True)
class StageGeometry:
    """One pass: cube edge (voxels, a multiple of 8), voxel size, the landmark of each output channel,
    the heatmap's Gaussian width (in output cells), how far a training cube's centre strays from the
    truth (mm), the half-edge of the region the intensity window is taken from (mm; 0 = whole volume),
    and the network widths."""

    name: str
    size: int
    spacing_mm: float
    channels: tuple[str, ...]
    heat_sigma_cells: float = 1.0
    jitter_mm: float = 9.0
    window_radius_mm: float = 15.0
    widths: tuple[int, int, int] = (16, 32, 64)

    @property
    def field_of_view_mm(self) -> float:
        """Edge of the cube in mm."""
        return self.size * self.spacing_mm

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageGeometry:
        return cls(**{**data, "channels": tuple(data["channels"]), "widths": tuple(data["widths"])})


COARSE = StageGeometry("coarse", 40, 0.75, LANDMARK_NAMES, heat_sigma_cells=1.0, jitter_mm=9.0,
                       window_radius_mm=15.0, widths=(12, 24, 48))
FINE = StageGeometry("fine", 32, 0.25, LANDMARK_NAMES, heat_sigma_cells=1.0, jitter_mm=1.5,
                     window_radius_mm=15.0, widths=(12, 24, 48))
GLOBAL = StageGeometry("global", 48, 2.0, (COCHLEA_CHANNEL,), heat_sigma_cells=1.0, jitter_mm=40.0,
                       window_radius_mm=0.0, widths=(8, 16, 32))
STAGES = {s.name: s for s in (GLOBAL, COARSE, FINE)}

"""Whole-head phantoms: the posed head with both temporal bones, on a grid centred on the head, not on one ear.

Why: the seed-free landmark mode must find every cochlea in a head CT (left, right or both) and no
cochlea where there is none. Its training and its tests need volumes whose every ear is annotated,
volumes with one ear cut off by the field of view, and volumes with no ear at all. The anatomy is the
generator's own :class:`Scene` (which already places both ears, mirrored, 33 mm either side of the
mid-sagittal plane); only the grid differs: centred on the head (plus ``offset_mm`` in head axes),
with any field of view and spacing up to 1 mm (a 512 x 512 x 300 head at 0.45 x 0.45 x 0.6 mm takes
about 30 s to render).

Folder ``<out>/<case_id>/``: ``<case_id>.nrrd`` and one ``<case_id>_<side>_landmarks.fcsv`` per ear
whose three landmarks lie at least ``EAR_MARGIN_MM`` inside the volume (the naming
:func:`CochleaLandmarksLib.landmark_dataset.find_head_cases` reads), plus ``case.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_output
from ..geometry import make_ijk_to_ras
from ..image import Image
from ..image_io import write_image
from ..markups_io import write_markups
from ..points import PointList
from . import render
from .anatomy import Scene
from .groundtruth import landmark_points
from .params import draw_params

#: An ear counts as present when all its landmarks are this far inside the volume's edges.
EAR_MARGIN_MM = 8.0


@dataclass
class HeadCase:
    """A head volume and the landmarks of each ear it shows, by side."""

    case_id: str
    image: Image
    ears: dict[str, PointList]
    info: dict[str, Any]


def _inside(image: Image, points: np.ndarray, margin_mm: float) -> bool:
    idx = image.ras_to_continuous_index(points)
    n = np.array(image.shape_ijk, dtype=np.float64)
    m = margin_mm / image.spacing
    return bool(np.all(idx >= m - 0.5) and np.all(idx <= n - 0.5 - m))


def generate_head_case(kind: str = "ct", seed: int = 0, spacing: float | Iterable[float] = 1.0,
                       fov_mm: float | Iterable[float] = (230.0, 230.0, 180.0),
                       offset_mm: Iterable[float] = (0.0, 0.0, 0.0), **overrides: Any) -> HeadCase:
    """Render a head phantom (``kind`` ct or cbct) on a grid centred ``offset_mm`` (head RAS axes) from the
    midpoint of the two modiolus bases. Parameters are drawn by ``seed`` as for single-ear cases."""
    sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)).copy()
    fov = np.broadcast_to(np.asarray(fov_mm, dtype=np.float64), (3,)).copy()
    params = draw_params(kind, seed, spacing_mm=tuple(sp), fov_mm=tuple(fov), **overrides)
    scene = Scene(params)
    n = np.maximum(8, np.round(fov / sp)).astype(int)
    centre = scene.head_to_world[:3, :3] @ np.asarray(list(offset_mm), dtype=np.float64) + scene.head_to_world[:3, 3]
    direction = np.diag([-1.0, -1.0, 1.0])
    origin = centre - direction @ (sp * (n - 1) / 2.0)
    ijk_to_ras = make_ijk_to_ras(sp, origin, direction)
    shape = (int(n[0]), int(n[1]), int(n[2]))
    hu, _ = render.rasterise(scene, shape, ijk_to_ras)
    image = render.finish(hu, params, ijk_to_ras)
    other_side = {"left": "right", "right": "left"}[params.side]
    ears = {}
    for other, side in ((False, params.side), (True, other_side)):
        points = landmark_points(scene, other=other)
        points.name = f"Cochlea {side}"
        if _inside(image, points.positions_ras, EAR_MARGIN_MM):
            ears[side] = points
    case_id = f"head_{kind}_{int(seed):05d}"
    info = {"case_id": case_id, "kind": kind, "seed": int(seed), "synthetic": True,
            "spacing_mm": [float(s) for s in sp], "fov_mm": [float(f) for f in fov],
            "offset_mm": [float(o) for o in offset_mm], "shape_ijk": list(shape),
            "pose_angle_deg": float(params.pose_angle_deg), "ears": sorted(ears)}
    return HeadCase(case_id, image, ears, info)


def write_head_case(case: HeadCase, out_dir: str | os.PathLike) -> Path:
    """Write the volume, one landmark file per present ear, and ``case.json``; return the folder."""
    folder = Path(out_dir) / case.case_id
    folder.mkdir(parents=True, exist_ok=True)
    write_image(case.image, folder / f"{case.case_id}.nrrd")
    for side, points in case.ears.items():
        write_markups(points, folder / f"{case.case_id}_{side}_landmarks.fcsv", coordinate_system="LPS")
    with atomic_output(folder / "case.json") as tmp:
        tmp.write_text(json.dumps(case.info, indent=2) + "\n")
    return folder

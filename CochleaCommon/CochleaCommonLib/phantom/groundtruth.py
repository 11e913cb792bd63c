"""Ground truth of a phantom case: landmarks, the seed click, and the ``case.json`` record.

Landmark definitions (all in the consensus cochlear coordinate system of Verbist et al. 2010,
see :mod:`.cochlea`):

* ``Helicotrema`` -- the centre of the cochlear duct lumen at the apical end of the spiral
  (theta = theta_max, 360 deg x turns from the round window); it lies inside the lumen (label 1 or 2).
* ``Modiolus base`` -- the origin of the cochlear coordinate system: the point of the modiolar
  axis (the z axis, through the centre of the spiral) that is the foot of the perpendicular from
  the round-window centre, i.e. where the modiolar axis crosses the basal-turn plane through the
  round window. It lies inside the modiolus (label 3), above the fundus of the internal auditory canal.
* ``Round Window`` -- the centre of the round-window membrane: the centre of the scala-tympani
  part of the basal end face of the duct, on the boundary between scala tympani fluid (label 1) and
  the air of the round-window niche (middle ear).

The seed is a rough user click: a point 1-5 mm from the centroid of the three landmarks, in a
random direction (drawn from the case seed).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..geometry import ras_to_lps
from ..points import PointList
from .anatomy import LABEL_NAMES, Scene
from .params import SPECS, PhantomParams

LANDMARK_NAMES = ("Helicotrema", "Modiolus base", "Round Window")
LANDMARK_DEFINITIONS = {
    "Helicotrema": "centre of the cochlear duct lumen at the apical end of the spiral",
    "Modiolus base": "origin of the consensus cochlear coordinate system: foot of the perpendicular from the "
                     "round-window centre onto the modiolar axis",
    "Round Window": "centre of the round-window membrane, between scala tympani and the round-window niche air",
}
GENERATOR_VERSION = "1"


def landmark_points(scene: Scene, other: bool = False) -> PointList:
    """The three landmarks in world RAS, in the project's order."""
    lm = scene.landmarks_world(other)
    return PointList(
        positions_ras=np.array([lm[n] for n in LANDMARK_NAMES]),
        labels=list(LANDMARK_NAMES),
        name="Cochlea landmarks" + (" (contralateral)" if other else ""),
        descriptions=[LANDMARK_DEFINITIONS[n] for n in LANDMARK_NAMES],
    )


def seed_point(params: PhantomParams, landmarks: PointList) -> PointList:
    """A rough click 1-5 mm away from the landmark centroid (deterministic per case seed)."""
    rng = np.random.default_rng(np.random.SeedSequence([params.seed, 0x5EED]))
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    distance = float(rng.uniform(1.0, 5.0))
    centroid = landmarks.positions_ras.mean(axis=0)
    return PointList(positions_ras=(centroid + distance * direction)[None], labels=["Seed"], name="Seed",
                     descriptions=[f"rough click {distance:.2f} mm from the landmark centroid"])


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round(v) for v in value]
    if isinstance(value, np.ndarray):
        return _round(value.tolist())
    if isinstance(value, np.generic):
        return _round(value.item())
    return value


def case_record(case_id: str, params: PhantomParams, scene: Scene, image, landmarks: PointList,
                seed: PointList, contacts: dict[str, Any] | None, files: dict[str, str] | None = None
                ) -> dict[str, Any]:
    """Everything about a case as plain JSON data (``case.json``)."""
    ear = scene.ear
    measures = ear.cochlea.measures()
    lm_ras = {n: landmarks.position(n) for n in LANDMARK_NAMES}
    other = landmark_points(scene, other=True)
    record: dict[str, Any] = {
        "case_id": case_id,
        "generator": {"name": "CochleaToolkit phantom", "version": GENERATOR_VERSION},
        "synthetic": True,
        "kind": params.kind,
        "side": params.side,
        "seed": params.seed,
        "modality": "CBCT (uncalibrated grey values)" if params.kind == "cbct" else "CT (Hounsfield units)",
        "image": {
            "shape_ijk": list(image.shape_ijk),
            "spacing_mm": image.spacing.tolist(),
            "ijk_to_ras": image.ijk_to_ras.tolist(),
            "ijk_to_lps": (np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.ijk_to_ras).tolist(),
        },
        "pose": {
            "head_rotation_angle_deg": params.pose_angle_deg,
            "head_rotation_axis_ras": list(params.pose_axis),
            "head_to_world": scene.head_to_world.tolist(),
        },
        "cochlear_frame_to_world_ras": scene.cochlear_to_world().tolist(),
        "cochlea": measures,
        "landmarks": {
            "coordinate_system": "both RAS and LPS given",
            "ras": {n: lm_ras[n].tolist() for n in LANDMARK_NAMES},
            "lps": {n: ras_to_lps(lm_ras[n]).tolist() for n in LANDMARK_NAMES},
            "definitions": LANDMARK_DEFINITIONS,
            "contralateral_ras": {n: other.position(n).tolist() for n in LANDMARK_NAMES},
        },
        "seed_point": {"ras": seed.positions_ras[0].tolist(), "lps": ras_to_lps(seed.positions_ras[0]).tolist(),
                       "distance_to_landmark_centroid_mm": float(np.linalg.norm(
                           seed.positions_ras[0] - landmarks.positions_ras.mean(axis=0)))},
        "labels": {str(k): v for k, v in LABEL_NAMES.items()},
        "anatomy": {
            "vestibule_center_ear_mm": ear.vest_center.tolist(),
            "middle_ear_medial_wall_x_mm": ear.x_me,
            "round_window_normal_ras": (scene.cochlear_to_world()[:3, :3] @ ear.cochlea.round_window_normal()).tolist(),
        },
        "parameters": params.to_dict(),
        "parameter_sources": {name: spec.source for name, spec in SPECS.items()},
    }
    if contacts is not None:
        record["electrode"] = contacts
    if files:
        record["files"] = files
    return _round(record)

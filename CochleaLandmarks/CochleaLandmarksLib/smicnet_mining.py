"""Hard-negative mining: where an earlier SMICNet model scores a landmark in the wrong place.

Why: the sampler's generic background (a shell around each landmark, strong edges, uniform) does not
contain the few places that really fool the network. On our phantoms the Helicotrema's mistakes are
the next turn down (about 2.5 mm below the apex, a lumen that looks like the apical one in a sagittal
patch) and the apical lumen behind the apex, which pulls the island's centre into the turn. Running the
fast sweep of a trained model over each training volume and keeping the voxels it scores as a landmark
(probability >= ``threshold``) farther than ``min_distance_mm`` from that landmark gives exactly those
places; training on them as background (``AugmentConfig.mined_fraction``) teaches the model what it got
wrong. Only training cases are mined, so validation and evaluation stay independent.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from CochleaCommonLib.progress import Progress

from .landmark_dataset import LandmarkCase, read_ground_truth
from .landmark_result import LANDMARK_NAMES
from .smicnet_training_data import read_volume

#: A voxel scored at least this for a landmark is a detection (the fast mode's island threshold).
MINING_THRESHOLD = 0.5
#: Detections farther than this from their own landmark are mistakes (the sampler's background distance).
MINING_MIN_DISTANCE_MM = 0.9
#: At most this many points are kept per case (a random subset, reproducible).
MINING_MAX_POINTS = 4000


def mine_false_positives(detector: Any, cases: list[LandmarkCase], *, threshold: float = MINING_THRESHOLD,
                         min_distance_mm: float = MINING_MIN_DISTANCE_MM, max_points: int = MINING_MAX_POINTS,
                         seed: int = 0, progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    """The RAS points where ``detector`` (a loaded SMICNet) is wrong on each case, with counts per landmark.

    Each case is swept in fast mode around its landmarks' centroid (the region the evaluation clicks
    reach). Returns ``{case_id: {"points_ras": (P, 3), "per_landmark": {name: count}}}``; a case the model
    gets right has no points.
    """
    from .smicnet_detector import smicnet_maps

    prog = Progress.ensure(progress)
    rng = np.random.default_rng(seed)
    mined: dict[str, dict[str, Any]] = {}
    for n, case in enumerate(cases):
        prog.update(n / max(len(cases), 1), f"Mining the model's mistakes on case {n + 1} of {len(cases)} "
                                            f"({case.case_id})")
        truth = read_ground_truth(case.landmarks_path)
        image = read_volume(case.volume_path)
        centre = np.mean([truth[name] for name in LANDMARK_NAMES], axis=0)
        out = smicnet_maps(image, centre, detector, mode="fast", box_mm=None, progress=prog.sub(
            n / max(len(cases), 1), (n + 1) / max(len(cases), 1)))
        points, counts = [], {}
        for name in LANDMARK_NAMES:
            prob = out["maps"][name]
            kji = np.argwhere(np.asarray(prob.array) >= threshold)
            ras = prob.index_to_ras(kji[:, ::-1].astype(np.float64)) if len(kji) else np.zeros((0, 3))
            wrong = ras[np.linalg.norm(ras - truth[name], axis=1) > min_distance_mm] if len(ras) else ras
            counts[name] = int(len(wrong))
            points.append(wrong.reshape(-1, 3))
        found = np.concatenate(points, axis=0)
        if len(found) > max_points:
            found = found[np.sort(rng.choice(len(found), max_points, replace=False))]
        mined[case.case_id] = {"points_ras": found, "per_landmark": counts}
    prog.update(1.0, f"Mined {sum(len(m['points_ras']) for m in mined.values())} background points")
    return mined


__all__ = ["MINING_MAX_POINTS", "MINING_MIN_DISTANCE_MM", "MINING_THRESHOLD", "mine_false_positives"]

"""Choosing one island per landmark: evidence, anatomical distances, the apex/round-window angle, two tiers."""

from __future__ import annotations

import numpy as np
from CochleaLandmarksLib.landmark_islands import MAX_APEX_WINDOW_ABS_COS, Island, select_consistent


def _island(x: float, y: float, z: float, evidence: float) -> Island:
    return Island(np.array([x, y, z]), evidence, evidence / 5.0, 0.99, 10)


BASE = _island(0.0, 0.0, 0.0, 300.0)


def _chosen(candidates: dict) -> dict:
    return {name: (None if isl is None else tuple(isl.centre_ras)) for name, (isl, _) in
            select_consistent(candidates).items()}


def test_an_apex_not_perpendicular_to_the_round_window_is_passed_over():
    window = _island(4.0, 0.0, 0.0, 100.0)
    oblique_apex = _island(-2.5, 0.0, 3.0, 200.0)  # 130 degrees from the window, seen from the base
    true_apex = _island(0.3, 0.0, 3.4, 20.0)  # 85 degrees
    got = _chosen({"Helicotrema": [oblique_apex, true_apex], "Modiolus base": [BASE], "Round Window": [window]})
    assert got == {"Helicotrema": (0.3, 0.0, 3.4), "Modiolus base": (0.0, 0.0, 0.0), "Round Window": (4.0, 0.0, 0.0)}
    cos = abs(np.dot([-2.5, 0, 3], [4, 0, 0])) / (np.linalg.norm([-2.5, 0, 3]) * 4)
    assert cos > MAX_APEX_WINDOW_ABS_COS  # the rejected apex really is outside the limit
    # Without an acceptable apex, the apex is left out rather than moving the round window.
    got = _chosen({"Helicotrema": [oblique_apex], "Modiolus base": [BASE], "Round Window": [window]})
    assert got["Helicotrema"] is None and got["Round Window"] == (4.0, 0.0, 0.0)


def test_a_strong_wrong_apex_cannot_pull_in_a_wrong_round_window():
    """Jointly, {wrong apex, wrong window} has more evidence than {true apex, true window}; the apex ranks second."""
    right_window = _island(4.0, 0.0, 0.0, 100.0)
    wrong_window = _island(0.0, -4.0, -1.0, 60.0)  # perpendicular to the wrong apex
    wrong_apex = _island(-2.5, 0.0, 3.0, 200.0)
    true_apex = _island(0.3, 0.0, 3.4, 20.0)
    got = _chosen({"Helicotrema": [wrong_apex, true_apex], "Modiolus base": [BASE],
                   "Round Window": [right_window, wrong_window]})
    assert got["Round Window"] == (4.0, 0.0, 0.0)
    assert got["Helicotrema"] == (0.3, 0.0, 3.4)


def test_without_the_round_window_the_angle_is_not_checked():
    wrong_apex = _island(-2.5, 0.0, 3.0, 200.0)
    got = _chosen({"Helicotrema": [wrong_apex], "Modiolus base": [BASE], "Round Window": []})
    assert got["Helicotrema"] == (-2.5, 0.0, 3.0) and got["Round Window"] is None

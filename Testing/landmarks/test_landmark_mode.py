"""The helicotrema read-out: the peak of an island's smoothed log-odds, to a fraction of a voxel, in RAS."""

from __future__ import annotations

import numpy as np
import pytest
from CochleaCommonLib.image import Image
from CochleaLandmarksLib.landmark_islands import find_islands
from CochleaLandmarksLib.landmark_mode import island_mode_ras
from test_smicnet_sweep import FLIPPED, OBLIQUE, PERMUTED

SHAPE = (24, 26, 22)  # KJI


def _image(array_kji: np.ndarray, direction: np.ndarray) -> Image:
    m = np.eye(4)
    m[:3, :3] = direction * 0.3
    m[:3, 3] = [12.5, -40.25, 7.75]
    return Image(array_kji.astype(np.float32), m)


def _bump(peak_kji: np.ndarray, sigma: float = 1.6, height: float = 9.0) -> np.ndarray:
    """Log-odds of a smooth bump (peak ``height`` at ``peak_kji``, sub-voxel), as probabilities."""
    kji = np.indices(SHAPE).reshape(3, -1).T.astype(np.float64)
    log_odds = height - 0.5 * np.sum(((kji - peak_kji) / sigma) ** 2, axis=1)
    return (1.0 / (1.0 + np.exp(-log_odds))).reshape(SHAPE)


@pytest.mark.parametrize("direction", [OBLIQUE, FLIPPED, PERMUTED], ids=["oblique", "flipped", "permuted"])
def test_mode_finds_a_sub_voxel_peak_in_world_coordinates(direction):
    peak = np.array([11.3, 12.6, 9.45])
    image = _image(_bump(peak), direction)
    (island,) = find_islands(image, 0.5)
    got = island_mode_ras(image, island)
    expected = image.index_to_ras(peak[::-1])
    assert np.linalg.norm(got - expected) < 0.1 * 0.3  # a tenth of a voxel
    # The voxel grid alone would be up to half a voxel per axis off: the refinement is doing work.
    assert np.linalg.norm(image.index_to_ras(np.round(peak)[::-1]) - expected) > 0.15


def test_mode_ignores_a_one_sided_tail_that_pulls_the_centre():
    """An apex-like island: a confident core and a long weaker tail on one side only (down the duct)."""
    peak = np.array([8.0, 13.0, 11.0])
    p = _bump(peak, sigma=1.2, height=8.0)
    tail = np.zeros(SHAPE, dtype=bool)
    tail[9:19, 11:16, 9:14] = True  # extends from the core along +k only
    p = np.where(tail, np.maximum(p, 0.8), p)
    image = _image(p, OBLIQUE)
    (island,) = find_islands(image, 0.5)
    centre_error = np.linalg.norm(island.centre_ras - image.index_to_ras(peak[::-1]))
    mode_error = np.linalg.norm(island_mode_ras(image, island) - image.index_to_ras(peak[::-1]))
    assert centre_error > 0.4  # mm: the weighted centre slides down the tail
    assert mode_error < 0.1


def test_a_saturated_plateau_reads_out_at_its_middle():
    p = np.zeros(SHAPE)
    p[8:13, 10:15, 6:11] = 1.0  # float32 softmax saturates at exactly 1
    image = _image(p, FLIPPED)
    (island,) = find_islands(image, 0.5)
    got = island_mode_ras(image, island)
    assert np.linalg.norm(got - image.index_to_ras(np.array([8.0, 12.0, 10.0]))) < 1e-6


def test_island_members_are_its_voxels():
    p = np.zeros(SHAPE)
    p[2:4, 3, 3] = 0.9
    p[10, 10:13, 10] = 0.95
    islands = find_islands(_image(p, OBLIQUE), 0.5)
    got = sorted(sorted(map(tuple, isl.members_kji.tolist())) for isl in islands)
    assert got == [[(2, 3, 3), (3, 3, 3)], [(10, 10, 10), (10, 11, 10), (10, 12, 10)]]


def test_fast_mode_reads_the_apex_at_its_mode_and_the_others_at_their_centre():
    from CochleaLandmarksLib.smicnet_detector import MODE_READOUT, _fast_position

    peak = np.array([8.0, 13.0, 11.0])
    p = _bump(peak, sigma=1.2, height=8.0)
    p[9:19, 11:16, 9:14] = np.maximum(p[9:19, 11:16, 9:14], 0.8)
    image = _image(p, PERMUTED)
    (island,) = find_islands(image, 0.5)
    assert MODE_READOUT == {"Helicotrema"}
    np.testing.assert_allclose(_fast_position("Helicotrema", image, island), island_mode_ras(image, island))
    for name in ("Modiolus base", "Round Window"):
        np.testing.assert_allclose(_fast_position(name, image, island), island.centre_ras)

"""The views of the fast sweep scored in stages: a voxel whose mean can no longer make an island skips the rest.

The claim under test: the islands above the read-out threshold, their values and hence the landmark points are
exactly those of scoring every view at every voxel; only map values below the threshold differ, and those stay
below it.
"""

from __future__ import annotations

import numpy as np
import pytest
from CochleaLandmarksLib.landmark_islands import find_islands
from CochleaLandmarksLib.smicnet_sweep import (
    LANDMARK_NAMES,
    average_views_staged,
    island_out_of_reach,
    sweep_coarse_to_fine,
    view_stages,
)
from CochleaLandmarksLib.smicnet_views import ALL_VIEWS, SAGITTAL, View

THRESHOLD = 0.5


def test_the_coronal_views_come_first_then_the_turned_sagittal_ones():
    first, second = view_stages(ALL_VIEWS)
    assert first == tuple(View("coronal", t) for t in range(4))
    assert second == tuple(View("sagittal", t) for t in (1, 2, 3))
    assert view_stages((SAGITTAL,)) == ()
    assert view_stages((SAGITTAL, View("sagittal", 2))) == ((View("sagittal", 2),),)


def test_a_voxel_is_out_of_reach_only_when_ones_in_every_view_left_stay_at_or_below_the_threshold():
    # 5 of 8 views scored: 3 left, so the landmark sums must be at most 0.5 * 8 - 3 = 1.
    summed = np.array([[1.0, 0.2, 0.3, 2.9], [1.01, 0.0, 0.0, 3.0], [0.2, 0.3, 1.2, 0.0]])
    assert island_out_of_reach(summed, 3, 8, THRESHOLD).tolist() == [True, False, False]
    torch = pytest.importorskip("torch")
    assert island_out_of_reach(torch.from_numpy(summed), 3, 8, THRESHOLD).tolist() == [True, False, False]


def _answers(m: int, seed: int) -> np.ndarray:
    """Per view (ALL_VIEWS order), voxel and class, answers that sum to 1 over the classes: many voxels weak in all
    views, some strong in all, and a quarter that the coronal views rate low and the turned sagittal ones near 1,
    the case where the bound after the first stage is tight (so it is exercised on both sides)."""
    rng = np.random.default_rng(seed)
    strength = rng.choice([0.05, 0.3, 0.6, 0.9], size=(1, m, 1))
    raw = rng.dirichlet([0.5, 0.5, 0.5, 2.0], size=(8, m)) * (1 - strength)
    landmark = rng.integers(0, 3, m)
    raw[:, np.arange(m), landmark] += strength[0, :, 0] * rng.uniform(0.3, 1.0, size=(8, m))
    answers = raw / raw.sum(axis=-1, keepdims=True)
    late = np.flatnonzero(rng.random(m) < 0.25)
    level = {0: rng.uniform(0.2, 0.7, len(late)), 1: rng.uniform(0.9, 1.0, len(late))}
    for view in range(8):  # 0: the sagittal; 1-3: its turns; 4-7: the coronal views
        high = level[1] if view in (1, 2, 3) else level[0] if view == 0 else rng.uniform(0.0, 0.3, len(late))
        answers[view, late] = ((1 - high) / 3)[:, None]
        answers[view, late, landmark[late]] = high
    return answers.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_staged_means_keep_every_voxel_that_can_be_in_an_island_exactly(seed):
    m = 4000
    answers = _answers(m, seed)  # view order: ALL_VIEWS, the sagittal first
    column = {v: i for i, v in enumerate(ALL_VIEWS)}
    scored: list[tuple[tuple[View, ...], int]] = []

    def score_sum(rows, stage, progress):
        scored.append((stage, len(rows)))
        return answers[[column[v] for v in stage]][:, rows].sum(axis=0, dtype=np.float64)

    full = answers.astype(np.float64).mean(axis=0)
    everything = answers[0].astype(np.float64)
    all_patches = average_views_staged(everything, np.arange(m), score_sum, ALL_VIEWS, None)
    assert all_patches == 7 * m
    np.testing.assert_allclose(everything, full, rtol=1e-12)
    scored.clear()

    staged = answers[0].astype(np.float64)
    patches = average_views_staged(staged, np.arange(m), score_sum, ALL_VIEWS, THRESHOLD)
    assert patches == sum(len(stage) * rows for stage, rows in scored)
    assert [stage for stage, _ in scored] == list(view_stages(ALL_VIEWS))
    assert scored[0][1] == m and 0 < scored[1][1] < m  # some voxels left after the coronal views, not all

    can_make_island = (full[:, :len(LANDMARK_NAMES)] > THRESHOLD).any(axis=1)
    assert 0 < can_make_island.sum() < m
    np.testing.assert_array_equal(staged[can_make_island], everything[can_make_island])
    left_early = (staged != everything).any(axis=1)
    assert left_early.sum() == m - scored[1][1]
    # Those that left hold the mean of the five views they had, below the threshold for every landmark.
    five = answers[[0, 4, 5, 6, 7]].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(staged[left_early], five[left_early], rtol=1e-12)
    assert (staged[left_early][:, :len(LANDMARK_NAMES)] < THRESHOLD).all()
    assert patches < all_patches


def test_with_the_bundled_model_the_islands_are_those_of_all_views_for_fewer_patches():
    """The fast sweep on a phantom, with and without leaving out voxels that cannot make an island: the same
    islands (voxels, values, centres) above the read-out threshold for every landmark."""
    pytest.importorskip("torch")
    from CochleaCommonLib.phantom import generate_case
    from CochleaLandmarksLib.landmark_detection import load_detector
    from CochleaLandmarksLib.smicnet_detector import (
        FAST_BOX_MM,
        FAST_KEEP,
        FAST_LATTICE,
        FAST_THRESHOLD,
        FAST_VIEWS,
        FAST_VIEWS_THRESHOLD,
    )

    case = generate_case("ct", 1009, spacing=0.3, fov_mm=40.0)
    classifier = load_detector("smicnet", "smicnet-phantom", device="cpu").fast_classifier
    kind, stride = FAST_LATTICE
    runs = {}
    for island_threshold in (None, FAST_THRESHOLD):
        runs[island_threshold] = sweep_coarse_to_fine(
            case.image, case.seed_point.positions_ras[0], classifier, box_mm=FAST_BOX_MM, coarse_stride=stride,
            lattice=kind, keep_threshold=FAST_KEEP, views=FAST_VIEWS, views_threshold=FAST_VIEWS_THRESHOLD,
            island_threshold=island_threshold)
    (every, every_patches), (staged, staged_patches) = runs[None], runs[FAST_THRESHOLD]
    assert staged_patches < every_patches
    found = 0
    for name in LANDMARK_NAMES:
        a, b = every[name].array, staged[name].array
        island_voxels = a > FAST_THRESHOLD
        np.testing.assert_array_equal(b > FAST_THRESHOLD, island_voxels)
        np.testing.assert_array_equal(b[island_voxels], a[island_voxels])
        islands_a = find_islands(every[name], FAST_THRESHOLD)
        islands_b = find_islands(staged[name], FAST_THRESHOLD)
        assert [(i.voxels, i.peak, tuple(i.centre_ras)) for i in islands_a] == \
               [(i.voxels, i.peak, tuple(i.centre_ras)) for i in islands_b]
        found += len(islands_a) > 0
    assert found == len(LANDMARK_NAMES)

"""The numpy connected-component labeller: the very label image SimpleITK gives, and no SimpleITK import.

Why exact labels, not just the same partition: find_islands keeps islands of equal evidence in label order, so
the numbering (1..count in the order of each component's first voxel in C order, as ITK numbers them) matters.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import SimpleITK as sitk
from CochleaCommonLib.image import Image
from CochleaLandmarksLib.connected_components import label_components
from CochleaLandmarksLib.landmark_islands import find_islands

SHAPES = [(1, 1, 1), (1, 1, 37), (1, 29, 1), (31, 1, 1), (1, 17, 23), (9, 1, 13), (14, 11, 1), (5, 7, 11),
          (12, 12, 12), (3, 30, 4), (20, 6, 9), (2, 2, 2), (25, 25, 25)]
DENSITIES = [0.05, 0.15, 0.3, 0.45, 0.6]


def itk_labels(mask: np.ndarray, connectivity: int) -> np.ndarray:
    labeller = sitk.ConnectedComponentImageFilter()
    labeller.SetFullyConnected(connectivity == 26)  # in 3D: faces, edges and corners
    return sitk.GetArrayFromImage(labeller.Execute(sitk.GetImageFromArray(mask.astype(np.uint8))))


@pytest.mark.parametrize("connectivity", [6, 26])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_random_masks_get_the_labels_itk_gives(shape, connectivity):
    rng = np.random.default_rng(sum(shape) * 100 + connectivity)
    for density in DENSITIES:
        for _ in range(6):
            mask = rng.random(shape) < density
            got = label_components(mask, connectivity=connectivity)
            assert got.shape == mask.shape
            assert np.array_equal(got, itk_labels(mask, connectivity)), (density, mask.astype(int).tolist())


@pytest.mark.parametrize("connectivity", [6, 26])
def test_a_large_random_mask_is_exact_and_quick(connectivity):
    import time

    mask = np.random.default_rng(7).random((60, 70, 80)) < 0.45
    start = time.perf_counter()
    got = label_components(mask, connectivity=connectivity)
    elapsed = time.perf_counter() - start
    assert np.array_equal(got, itk_labels(mask, connectivity))
    assert elapsed < 5.0  # about 0.1 s; generous for a loaded CI machine


@pytest.mark.parametrize("connectivity", [6, 26])
def test_long_winding_components(connectivity):
    """A spiral and a comb: components whose first run joins the rest only far along, through many runs."""
    spiral = np.zeros((40, 36, 36), dtype=bool)
    angle = np.linspace(0.0, 10 * np.pi, 3000)
    spiral[np.round(angle / angle[-1] * 39).astype(int), np.round(18 + 15 * np.sin(angle)).astype(int),
           np.round(18 + 15 * np.cos(angle)).astype(int)] = True
    comb = np.zeros((3, 20, 21), dtype=bool)
    comb[1, :, ::2] = True  # teeth along j, joined only at the far end
    comb[1, -1, :] = True
    comb[0, 0, 1::4] = True  # touching the teeth only diagonally (26) or not at all (6)
    for mask in (spiral, comb, ~comb):
        assert np.array_equal(label_components(mask, connectivity=connectivity), itk_labels(mask, connectivity))


def test_numbering_follows_each_components_first_voxel_in_c_order():
    """Not size, not centre, not last voxel: component 3 comes before most voxels of components 1 and 2."""
    mask = np.zeros((3, 3, 3), dtype=bool)
    mask[0, 0, 0] = mask[1, 0, 0] = True  # flat indices 0 and 9
    mask[0, 0, 2] = mask[1, 0, 2] = mask[2, 0, 2] = True  # flat indices 2, 11 and 20
    mask[0, 2, 1] = True  # flat index 7
    expected = np.zeros((3, 3, 3), dtype=int)
    expected[0, 0, 0] = expected[1, 0, 0] = 1
    expected[0, 0, 2] = expected[1, 0, 2] = expected[2, 0, 2] = 2
    expected[0, 2, 1] = 3
    got = label_components(mask, connectivity=6)
    assert np.array_equal(got, expected) and np.array_equal(got, itk_labels(mask, 6))


def test_corner_and_edge_contacts_join_only_with_26_connectivity():
    corner = np.zeros((2, 2, 2), dtype=bool)
    corner[0, 0, 0] = corner[1, 1, 1] = True
    edge = np.zeros((1, 2, 2), dtype=bool)
    edge[0, 0, 1] = edge[0, 1, 0] = True
    for mask in (corner, edge):
        assert label_components(mask, connectivity=6).max() == 2
        assert label_components(mask, connectivity=26).max() == 1
        for connectivity in (6, 26):
            assert np.array_equal(label_components(mask, connectivity=connectivity), itk_labels(mask, connectivity))


@pytest.mark.parametrize("connectivity", [6, 26])
def test_empty_full_and_single_voxel_masks(connectivity):
    for shape in [(1, 1, 1), (4, 5, 6)]:
        empty = np.zeros(shape, dtype=bool)
        got = label_components(empty, connectivity=connectivity)
        assert got.shape == shape and not got.any()
        full = np.ones(shape, dtype=bool)
        assert np.array_equal(label_components(full, connectivity=connectivity), np.ones(shape, dtype=int))
        for index in [(0, 0, 0), tuple(n - 1 for n in shape), tuple(n // 2 for n in shape)]:
            single = np.zeros(shape, dtype=bool)
            single[index] = True
            got = label_components(single, connectivity=connectivity)
            assert got[index] == 1 and got.sum() == 1
            assert np.array_equal(got, itk_labels(single, connectivity))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="connectivity"):
        label_components(np.ones((2, 2, 2), dtype=bool), connectivity=18)
    with pytest.raises(ValueError, match="3D"):
        label_components(np.ones((2, 2), dtype=bool))


@pytest.mark.parametrize("connectivity", [6, 26])
def test_find_islands_gives_the_islands_of_itks_labels_in_the_same_order(connectivity):
    """Islands in a map whose box is smaller than the map, several with exactly equal evidence (ties)."""
    rng = np.random.default_rng(connectivity)
    prob = np.where(rng.random((30, 28, 26)) < 0.08, 0.9, 0.1).astype(np.float32)  # many equal islands
    prob[:3] = prob[:, :2] = prob[:, :, -4:] = 0.0
    image = Image(prob, np.diag([0.3, 0.3, 0.3, 1.0]))
    islands = find_islands(image, 0.5, connectivity=connectivity)
    labels = itk_labels(prob > 0.5, connectivity)  # the whole map: the same numbering as in the box
    # Expected: ITK's islands, ranked by evidence (here: by size, all voxels being equal), ties in label order.
    expected = sorted(range(1, labels.max() + 1), key=lambda n: -np.count_nonzero(labels == n))
    assert len(islands) == len(expected)
    assert len({isl.voxels for isl in islands}) < len(islands)  # there are ties
    for island, label in zip(islands, expected):
        assert np.array_equal(island.members_kji, np.argwhere(labels == label))


def test_find_islands_does_not_import_simpleitk():
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from CochleaCommonLib.image import Image
        from CochleaLandmarksLib.landmark_islands import find_islands
        prob = np.zeros((8, 9, 10), dtype=np.float32)
        prob[2:4, 2:4, 2:4] = 0.9
        prob[6, 7, 8] = 0.95
        for connectivity in (6, 26):
            assert len(find_islands(Image(prob, np.eye(4)), 0.5, connectivity=connectivity)) == 2
        print("SimpleITK" in sys.modules)
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"

"""Point <-> voxel mapping, RAS <-> LPS and rounding on oblique, flipped and translated volumes."""

import numpy as np
import pytest
from CochleaCommonLib.errors import InvalidInputError
from CochleaCommonLib.geometry import (
    apply_affine,
    lps_to_ras,
    make_ijk_to_ras,
    ras_to_lps,
    round_index,
)
from CochleaCommonLib.image import Image
from geometry_cases import CASES


def test_ras_lps_flip_negates_first_two_coordinates():
    assert np.allclose(ras_to_lps([1.0, -2.0, 3.0]), [-1.0, 2.0, 3.0])
    pts = np.array([[1.0, 2.0, 3.0], [-4.0, 5.5, -6.0]])
    assert np.allclose(lps_to_ras(ras_to_lps(pts)), pts)
    assert ras_to_lps(pts).shape == (2, 3)


def test_round_index_rounds_to_nearest_and_never_truncates():
    assert round_index([0.6, -0.6, 2.49]).tolist() == [1, -1, 2]
    assert round_index([0.5, 1.5, 2.5]).tolist() == [1, 2, 3]  # half-way always up, no banker's rounding
    assert round_index([-0.4, -0.5, -1.5]).tolist() == [0, 0, -1]


@pytest.mark.parametrize("case", sorted(CASES))
def test_voxel_centres_map_to_expected_world_points(case):
    image = CASES[case]()
    ijk = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [12, 10, 8]], dtype=float)
    expected = image.origin[:, None] + (image.direction * image.spacing) @ ijk.T
    assert np.allclose(image.index_to_ras(ijk), expected.T, atol=1e-12)
    # and back
    assert np.allclose(image.ras_to_continuous_index(expected.T), ijk, atol=1e-9)


@pytest.mark.parametrize("case", sorted(CASES))
def test_ras_to_index_picks_the_nearest_voxel_and_its_value(case):
    image = CASES[case]()
    rng = np.random.default_rng(3)
    target = np.array([7, 4, 5])  # i, j, k
    for _ in range(20):
        # a point within 0.45 voxel of the target voxel centre along every axis
        offset = rng.uniform(-0.45, 0.45, size=3)
        point = image.index_to_ras(target + offset)
        assert image.ras_to_index(point).tolist() == target.tolist()
        assert image.value_at(point)[0] == target[2] * 10000 + target[1] * 100 + target[0]
    # 0.6 voxel off along -i lands on the previous voxel (truncation would give the same voxel)
    point = image.index_to_ras(target + np.array([-0.6, 0.0, 0.0]))
    assert image.ras_to_index(point).tolist() == [6, 4, 5]


@pytest.mark.parametrize("case", sorted(CASES))
def test_point_outside_volume_is_a_clear_error(case):
    image = CASES[case]()
    outside = image.index_to_ras([-3.0, 2.0, 2.0])
    with pytest.raises(InvalidInputError, match="outside the volume"):
        image.ras_to_index(outside)
    assert not image.contains_index([[-3, 2, 2]])[0]
    assert image.contains_index([[0, 0, 0]])[0]


def test_flipped_case_really_has_negative_determinant():
    assert np.linalg.det(CASES["flipped"]().ijk_to_ras[:3, :3]) < 0


def test_make_ijk_to_ras_rejects_bad_spacing():
    with pytest.raises(InvalidInputError, match="spacing"):
        make_ijk_to_ras([0.3, -0.3, 0.3], [0, 0, 0])
    with pytest.raises(InvalidInputError, match="spacing"):
        make_ijk_to_ras([0.3, 0.0, 0.3], [0, 0, 0])


def test_apply_affine_shapes():
    m = make_ijk_to_ras([1, 2, 3], [10, 20, 30])
    assert apply_affine(m, [1, 1, 1]).shape == (3,)
    assert np.allclose(apply_affine(m, [[1, 1, 1]]), [[11, 22, 33]])


def test_image_rejects_2d_and_degenerate_geometry():
    with pytest.raises(InvalidInputError, match="3D volume"):
        Image(np.zeros((4, 5)), np.eye(4))
    with pytest.raises(InvalidInputError, match="degenerate"):
        Image(np.zeros((2, 2, 2)), np.diag([1.0, 0.0, 1.0, 1.0]))

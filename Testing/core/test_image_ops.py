"""Reorientation is exact, resampling keeps the field of view, crops keep world positions."""

import numpy as np
import pytest
from CochleaCommonLib.errors import InvalidInputError
from CochleaCommonLib.geometry import RAS_TO_LPS, rotation_matrix
from CochleaCommonLib.image import Image
from CochleaCommonLib.image_ops import crop_around, crop_box, reorient, resample_like, resample_to_spacing
from geometry_cases import CASES


def _world_to_value(image: Image) -> dict:
    """Map rounded world position of every voxel centre -> value."""
    k, j, i = np.indices(image.array.shape)
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(float)
    ras = np.round(image.index_to_ras(ijk), 6)
    return {tuple(p): v for p, v in zip(map(tuple, ras), image.array.ravel())}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("target", ["LPS", "RAS"])
def test_reorient_moves_voxels_without_changing_world_positions(case, target):
    image = CASES[case]()
    out = reorient(image, target)
    assert _world_to_value(out) == _world_to_value(image)
    # axes now point (mostly) along the target: positive diagonal in the target space
    d = (RAS_TO_LPS[:3, :3] if target == "LPS" else np.eye(3)) @ out.direction
    assert np.all(np.argmax(np.abs(d), axis=0) == [0, 1, 2])
    assert np.all(np.diag(d) > 0)


def test_reorient_axis_aligned_lps_gives_identity_direction():
    # stored RAS-aligned (i->R, j->A, k->S) as many NIfTI files are
    image = Image.from_geometry(np.arange(24).reshape(2, 3, 4), (0.3, 0.3, 0.3), (1, 2, 3))
    out = reorient(image, "LPS")
    assert np.allclose(RAS_TO_LPS[:3, :3] @ out.direction, np.eye(3))
    assert out.array[0, 0, 0] == image.array[0, 2, 3]


def test_resample_to_spacing_keeps_extent_and_values_of_a_linear_ramp():
    k, j, i = np.indices((20, 20, 20))
    direction = rotation_matrix([0, 0, 1], 30)
    image = Image.from_geometry((2.0 * i + 3.0 * j + 5.0 * k).astype(np.float32), (0.2, 0.2, 0.2), (5, -5, 10),
                                direction)
    out = resample_to_spacing(image, 0.4)
    assert out.shape_ijk == (10, 10, 10)
    assert np.allclose(out.spacing, 0.4)
    # physical extent is kept: first outer edge stays put
    edge_in = image.index_to_ras([-0.5, -0.5, -0.5])
    edge_out = out.index_to_ras([-0.5, -0.5, -0.5])
    assert np.allclose(edge_in, edge_out, atol=1e-9)
    # linear ramp is reproduced by linear interpolation inside the volume
    ijk_in = image.ras_to_continuous_index(out.index_to_ras([4.0, 5.0, 6.0]))
    expected = 2.0 * ijk_in[0] + 3.0 * ijk_in[1] + 5.0 * ijk_in[2]
    assert out.array[6, 5, 4] == pytest.approx(expected, abs=1e-3)


def test_resample_like_identity_grid_is_exact():
    image = CASES["oblique"]()
    out = resample_like(image, image, interpolator="nearest")
    assert np.array_equal(out.array, image.array)


@pytest.mark.parametrize("case", sorted(CASES))
def test_crop_keeps_world_positions(case):
    image = CASES[case]()
    center = image.index_to_ras([6.2, 5.1, 3.8])
    crop = crop_box(image, center, (5, 4, 3))
    assert crop.shape_ijk == (5, 4, 3)
    # voxel (0,0,0) of the crop is voxel (6-2, 5-2, 4-1) of the image
    assert np.allclose(crop.index_to_ras([0, 0, 0]), image.index_to_ras([4, 3, 3]))
    assert crop.array[0, 0, 0] == image.array[3, 3, 4]
    assert _world_to_value(crop).items() <= _world_to_value(image).items()


def test_crop_at_the_border_trims_or_pads():
    image = CASES["translated"]()
    corner = image.index_to_ras([0, 0, 0])
    trimmed = crop_box(image, corner, (5, 5, 5))
    assert trimmed.shape_ijk == (3, 3, 3)
    assert np.allclose(trimmed.origin, image.origin)
    padded = crop_box(image, corner, (5, 5, 5), pad_value=-1000)
    assert padded.shape_ijk == (5, 5, 5)
    assert padded.array[0, 0, 0] == -1000
    assert padded.array[2, 2, 2] == image.array[0, 0, 0]
    assert np.allclose(padded.index_to_ras([2, 2, 2]), corner)


def test_crop_around_mm_and_bad_sizes():
    image = CASES["translated"]()
    crop = crop_around(image, image.center_ras(), 1.0)
    assert crop.shape_ijk == (5, 5, 5)
    with pytest.raises(InvalidInputError):
        crop_around(image, image.center_ras(), -1.0)
    with pytest.raises(InvalidInputError, match="outside the volume"):
        crop_around(image, image.center_ras() + 100.0, 1.0)

"""The torch resampling of probability maps onto the input lattice equals SimpleITK's, on awkward geometry.

SimpleITK's linear ``Resample`` (``image_ops.resample_like``) is the reference: the torch path replaced it
so that the maps are made on the detector's device, and must give the same voxels, the same support (ITK's
half-voxel extent) and a lattice whose voxels coincide with the input's, on oblique, flipped and
translated inputs and maps.
"""

from __future__ import annotations

import numpy as np
import pytest
from CochleaCommonLib.geometry import rotation_matrix
from CochleaCommonLib.image import Image
from CochleaCommonLib.image_ops import resample_like
from CochleaCommonLib.lattice_resample import lattice_covering, maps_on_lattice_of, resample_channels
from geometry_cases import CASES

FLIP = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # a left-handed grid
MAP_AXES = {"canonical": np.diag([-1.0, -1.0, 1.0]), "oblique": rotation_matrix([3.0, -1.0, 2.0], 38.0),
            "flipped": FLIP}


def _input(case: str) -> Image:
    """The geometry of a test case, enlarged so that a map fits inside it."""
    small = CASES[case]()
    return Image(np.zeros((40, 44, 48), dtype=np.int16), small.ijk_to_ras)


def _map_inside(image: Image, axes: np.ndarray, spacing: float = 0.7, shape=(7, 8, 6), seed: int = 0) -> Image:
    """A random map of ``shape`` (k, j, i) centred near the middle of ``image``."""
    values = np.random.default_rng(seed).random(shape).astype(np.float32)
    m = Image.from_geometry(values, (spacing, spacing, spacing), (0.0, 0.0, 0.0), axes)
    shift = image.center_ras() - m.center_ras() + np.array([0.31, -0.17, 0.23])
    return Image.from_geometry(values, (spacing, spacing, spacing), shift, axes)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("axes", sorted(MAP_AXES))
def test_equals_simpleitk_linear_resampling(case, axes):
    image = _input(case)
    prob = _map_inside(image, MAP_AXES[axes])
    m, shape = lattice_covering(image, prob)
    reference = resample_like(prob, Image(np.zeros(shape, np.float32), m), interpolator="linear").array
    ours = resample_channels(prob.array[None], prob.ijk_to_ras, m, shape)[0].numpy()
    assert reference.any()
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    assert np.array_equal(ours > 0, reference > 0)  # the same support: ITK's half-voxel extent


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_lattice_coincides_with_the_input_and_holds_the_whole_map(case):
    image = _input(case)
    prob = _map_inside(image, MAP_AXES["oblique"], spacing=0.4, seed=3)
    out = maps_on_lattice_of(image, {"a": prob})["a"]
    np.testing.assert_allclose(out.ijk_to_ras[:3, :3], image.ijk_to_ras[:3, :3])
    shift = image.ras_to_continuous_index(out.index_to_ras([0.0, 0.0, 0.0]))
    np.testing.assert_allclose(shift, np.round(shift), atol=1e-6)  # voxels coincide with input voxels
    # Nothing of the map is lost: resampling onto the whole input lattice gives the same mass.
    whole = resample_like(prob, image.with_array(np.zeros(image.array.shape, np.float32)), interpolator="linear")
    assert out.array.sum() == pytest.approx(float(whole.array.sum()), rel=1e-5)
    assert out.array.size < image.array.size / 2  # a crop, not the whole volume


def test_maps_sharing_a_grid_are_resampled_together_and_clipped():
    image = _input("translated")
    prob = _map_inside(image, MAP_AXES["canonical"])
    other = prob.with_array((prob.array * 3.0 - 1.0).astype(np.float32))  # outside 0..1 on purpose
    elsewhere = _map_inside(image, MAP_AXES["flipped"], spacing=0.5, seed=5)
    out = maps_on_lattice_of(image, {"b": other, "a": prob, "c": elsewhere})
    assert list(out) == ["b", "a", "c"]  # the caller's order
    assert out["a"].array.shape == out["b"].array.shape
    assert out["b"].array.min() >= 0.0 and out["b"].array.max() <= 1.0
    assert out["b"].array.max() == 1.0 and (out["b"].array == 0.0).any()
    assert out["c"].array.shape != out["a"].array.shape and out["c"].array.dtype == np.float32


def test_a_map_outside_the_volume_is_refused():
    image = _input("oblique")
    prob = _map_inside(image, MAP_AXES["canonical"])
    far = Image(prob.array, prob.ijk_to_ras + np.array([[0, 0, 0, 500.0]] * 3 + [[0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="outside the volume"):
        lattice_covering(image, far)


def test_outside_the_map_takes_the_default_value_as_in_simpleitk():
    image = _input("oblique")
    prob = _map_inside(image, MAP_AXES["flipped"], seed=7)
    m, shape = lattice_covering(image, prob, margin_vox=3)
    reference = resample_like(prob, Image(np.zeros(shape, np.float32), m), interpolator="linear",
                              default_value=-2.0).array
    ours = resample_channels(prob.array[None], prob.ijk_to_ras, m, shape, default=-2.0)[0].numpy()
    assert (reference == -2.0).any()
    np.testing.assert_allclose(ours, reference, atol=1e-5)


@pytest.mark.parametrize(("case", "axes"), [("translated", "canonical"), ("flipped", "canonical"),
                                            ("flipped", "flipped"), ("translated", "flipped")])
def test_the_separable_path_of_aligned_grids_equals_the_general_one(case, axes):
    """Axis-aligned, flipped and permuted grids take three matrix products instead of grid_sample: same voxels."""
    from CochleaCommonLib.separable_resample import axis_permutation

    image = _input(case)
    prob = _map_inside(image, MAP_AXES[axes], seed=11)
    m, shape = lattice_covering(image, prob, margin_vox=2)
    assert axis_permutation((np.linalg.inv(prob.ijk_to_ras) @ m)[:3, :3]) is not None
    fast = resample_channels(np.stack([prob.array, 1.0 - prob.array]), prob.ijk_to_ras, m, shape, default=-1.0)
    general = resample_channels(np.stack([prob.array, 1.0 - prob.array]), prob.ijk_to_ras, m, shape, default=-1.0,
                                separable=False)
    assert (general == -1.0).any() and (general > 0).any()
    np.testing.assert_allclose(fast.numpy(), general.numpy(), atol=1e-5)


def test_oblique_grids_take_the_general_path():
    from CochleaCommonLib.separable_resample import axis_permutation

    image = _input("oblique")
    prob = _map_inside(image, MAP_AXES["canonical"])
    assert axis_permutation((np.linalg.inv(prob.ijk_to_ras) @ image.ijk_to_ras)[:3, :3]) is None

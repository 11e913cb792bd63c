"""The 3D detector's cube lattice: sampling, windowing, pooling and the cube that holds a whole volume.

Why a linear volume: trilinear interpolation reproduces a function that is linear in the RAS position
exactly, so every voxel of a sampled cube can be compared with the value of that function at the RAS
point the cube's own IJK-to-RAS matrix gives it. A swapped axis (KJI versus IJK), a missing direction,
an align_corners slip or a half-voxel shift changes the values by far more than float rounding, on
every input geometry (oblique, left-handed, permuted, translated, anisotropic) and for rotated and
mirrored cube axes (the training augmentation).
"""

from __future__ import annotations

import numpy as np
import pytest
from CochleaCommonLib.geometry import make_ijk_to_ras, rotation_matrix
from geometry_cases import flipped_image, oblique_image, translated_image

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")

from CochleaLandmarksLib.detector_geometry import (  # noqa: E402
    CANONICAL_AXES,
    CLIP_RANGE,
    cube_ijk_to_ras,
    cube_points_to_ras,
    intensity_window,
    pooled_for_spacing,
    ras_to_cube_points,
    sample_cubes,
    volume_cube,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

_CYCLIC = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # i->A, j->S, k->R (det +1)

#: IJK-to-RAS matrices of awkward input volumes (the geometry_cases matrices, plus permuted and anisotropic LPS).
GEOMETRIES = {
    "oblique": oblique_image().ijk_to_ras,
    "flipped": flipped_image().ijk_to_ras,
    "translated": translated_image().ijk_to_ras,
    "permuted": make_ijk_to_ras((0.35, 0.3, 0.5), (20.0, -40.0, 60.0),
                                rotation_matrix([0.3, -1.0, 0.4], 41.0) @ _CYCLIC),
    "anisotropic": make_ijk_to_ras((0.3, 0.3, 0.8), (10.0, 20.0, -30.0), np.diag([-1.0, -1.0, 1.0])),
}

#: Cube axes: the canonical L, P, S lattice, a rotated one, and a rotated, mirrored and scaled one.
AXES = {
    "canonical": CANONICAL_AXES,
    "rotated": rotation_matrix([1.0, -0.5, 2.0], 23.0) @ CANONICAL_AXES,
    "mirrored": rotation_matrix([0.2, 1.0, -0.3], -17.0) @ np.diag([-1.0, 1.0, 1.0]) @ CANONICAL_AXES * 1.07,
}

SLOPE = np.array([0.7, -1.1, 0.45])  # intensity per mm along R, A, S


class LinearVolume:
    """A volume whose voxel value is ``SLOPE . (RAS - centre)``, about ``span_mm`` across along every axis."""

    def __init__(self, ijk_to_ras: np.ndarray, span_mm: float = 14.0) -> None:
        self.m = np.asarray(ijk_to_ras, dtype=np.float64)
        spacing = np.linalg.norm(self.m[:3, :3], axis=0)
        self.shape_ijk = np.ceil(span_mm / spacing).astype(int) + 1
        self.centre = self.index_to_ras((self.shape_ijk - 1) / 2.0)
        k, j, i = np.indices(tuple(self.shape_ijk[::-1]))
        ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(np.float64)
        self.array = self.g(ijk).reshape(k.shape).astype(np.float32)

    def index_to_ras(self, ijk) -> np.ndarray:
        return np.asarray(ijk, dtype=np.float64) @ self.m[:3, :3].T + self.m[:3, 3]

    def f(self, ras) -> np.ndarray:
        return (np.asarray(ras, dtype=np.float64) - self.centre) @ SLOPE

    def g(self, ijk) -> np.ndarray:
        return self.f(self.index_to_ras(ijk))

    def continuous_index(self, ras) -> np.ndarray:
        inv = np.linalg.inv(self.m)
        return np.asarray(ras, dtype=np.float64) @ inv[:3, :3].T + inv[:3, 3]


def _cube_indices(size: int) -> np.ndarray:
    """(size^3, 3) cube indices (i, j, k) in the KJI order of the sampled tensor."""
    k, j, i = np.indices((size, size, size))
    return np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(np.float64)


def _sampled(vol: LinearVolume, cube: np.ndarray, size: int, window) -> np.ndarray:
    out = sample_cubes(vol.array, vol.m, [cube], size, window)
    assert tuple(out.shape) == (1, 1, size, size, size) and out.dtype == torch.float32
    return out[0, 0].numpy().ravel()


# --- sample_cubes ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axes_name", sorted(AXES))
@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_cube_voxels_hold_the_volume_at_their_own_ras_position(geometry, axes_name):
    vol = LinearVolume(GEOMETRIES[geometry])
    size, spacing, window = 16, 0.5, (-20.0, 20.0)
    cube = cube_ijk_to_ras(vol.centre + [0.37, -0.21, 0.5], size, spacing, AXES[axes_name])
    ras = cube_points_to_ras(cube, _cube_indices(size))
    idx = vol.continuous_index(ras)
    assert np.all(idx >= 0) and np.all(idx <= vol.shape_ijk - 1), "test design: the cube must lie inside"
    expected = (vol.f(ras) - window[0]) / (window[1] - window[0])
    np.testing.assert_allclose(_sampled(vol, cube, size, window), expected, atol=2e-5)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_cube_beyond_the_border_repeats_the_edge_voxels(geometry):
    """Half outside the volume: each point takes the value at its index clamped to the volume (border padding)."""
    vol = LinearVolume(GEOMETRIES[geometry])
    size, window = 16, (-25.0, 25.0)
    corner = vol.index_to_ras([0.0, vol.shape_ijk[1] - 1.0, 0.0])
    cube = cube_ijk_to_ras(corner, size, 0.5, AXES["rotated"])
    idx = vol.continuous_index(cube_points_to_ras(cube, _cube_indices(size)))
    outside = np.any((idx < 0) | (idx > vol.shape_ijk - 1), axis=1)
    assert 0.3 < outside.mean() < 0.95, "test design: the cube must straddle the border"
    expected = (vol.g(np.clip(idx, 0, vol.shape_ijk - 1)) - window[0]) / (window[1] - window[0])
    np.testing.assert_allclose(_sampled(vol, cube, size, window), expected, atol=2e-5)


def test_several_cubes_in_one_call_keep_their_order():
    vol = LinearVolume(GEOMETRIES["oblique"])
    window = (-20.0, 20.0)
    cubes = [cube_ijk_to_ras(vol.centre + d, 8, 0.6, AXES[a]) for d, a in
             (([1.0, 0.0, 0.0], "canonical"), ([-1.5, 1.0, 0.5], "mirrored"), ([0.0, -2.0, 1.0], "rotated"))]
    together = sample_cubes(vol.array, vol.m, cubes, 8, window).numpy()
    for n, cube in enumerate(cubes):
        np.testing.assert_array_equal(together[n, 0].ravel(), _sampled(vol, cube, 8, window))


def test_torch_input_gives_the_numpy_result():
    vol = LinearVolume(GEOMETRIES["permuted"])
    cube = cube_ijk_to_ras(vol.centre, 16, 0.5, AXES["mirrored"])
    from_numpy = sample_cubes(vol.array, vol.m, [cube], 16, (-20.0, 20.0))
    from_torch = sample_cubes(torch.from_numpy(vol.array), vol.m, [cube], 16, (-20.0, 20.0))
    torch.testing.assert_close(from_torch, from_numpy)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int32, np.float64])
def test_integer_and_double_volumes_give_the_float32_result(dtype):
    """Blocks travel in the volume's own dtype (converted on the device, or as float32 where torch lacks the
    dtype): the values sampled must be those of the same volume held as float32."""
    vol = LinearVolume(GEOMETRIES["oblique"])
    values = np.round(vol.array * 100.0 + 2000.0)  # 2000 +- ~1500: fits every dtype above
    cube = cube_ijk_to_ras(vol.centre, 16, 0.5, AXES["rotated"])
    window = (0.0, 4000.0)
    as_float = sample_cubes(values.astype(np.float32), vol.m, [cube], 16, window)
    as_dtype = sample_cubes(values.astype(dtype), vol.m, [cube], 16, window)
    torch.testing.assert_close(as_dtype, as_float, rtol=0, atol=0)


def test_window_scales_to_0_1_and_clips_beyond_clip_range():
    vol = LinearVolume(GEOMETRIES["oblique"])
    size, window = 16, (-2.0, 2.0)  # the cube spans about +-8 intensity units: both clip limits are reached
    cube = cube_ijk_to_ras(vol.centre, size, 0.5)
    ras = cube_points_to_ras(cube, _cube_indices(size))
    raw = (vol.f(ras) - window[0]) / (window[1] - window[0])
    got = _sampled(vol, cube, size, window)
    np.testing.assert_allclose(got, np.clip(raw, *CLIP_RANGE), atol=2e-5)
    assert got.min() == pytest.approx(CLIP_RANGE[0]) and got.max() == pytest.approx(CLIP_RANGE[1])
    assert np.any(raw < CLIP_RANGE[0] - 0.5) and np.any(raw > CLIP_RANGE[1] + 0.5)
    inside = (raw > 0.05) & (raw < 0.95)
    assert inside.sum() > 100  # and in between, the plain linear scaling
    np.testing.assert_allclose(got[inside], raw[inside], atol=2e-5)


@pytest.mark.parametrize("window", [(-1000.0, 2000.0), (200.0, 1200.0)])
def test_cube_entirely_outside_the_volume_is_one_constant(window):
    """No voxel to repeat: the cube holds the raw value 0, scaled by the window."""
    vol = LinearVolume(GEOMETRIES["translated"])
    cube = cube_ijk_to_ras(vol.centre + [0.0, 100.0, 0.0], 8, 0.5)
    got = sample_cubes(vol.array, vol.m, [cube], 8, window).numpy()
    np.testing.assert_allclose(got, (0.0 - window[0]) / (window[1] - window[0]), rtol=1e-6)


def test_sampled_values_always_lie_in_clip_range_even_for_a_cube_outside_the_volume():
    """The network only ever sees CLIP_RANGE: a window far above 0 (uncalibrated CBCT) must not give -5."""
    vol = LinearVolume(GEOMETRIES["translated"])
    window = (500.0, 600.0)
    cubes = [cube_ijk_to_ras(vol.centre, 8, 0.5), cube_ijk_to_ras(vol.centre + [0.0, 100.0, 0.0], 8, 0.5)]
    got = sample_cubes(vol.array + np.float32(550.0), vol.m, cubes, 8, window).numpy()
    assert got.min() >= CLIP_RANGE[0] and got.max() <= CLIP_RANGE[1], (
        f"sample_cubes returned {got.min():.3g}..{got.max():.3g}, outside CLIP_RANGE {CLIP_RANGE}")


# --- intensity_window ---------------------------------------------------------------------------------------------
def test_window_on_an_axis_aligned_volume_is_the_percentiles_of_the_region():
    vol = LinearVolume(GEOMETRIES["translated"], span_mm=10.0)
    k, j, i = np.indices(vol.array.shape)
    x = vol.index_to_ras(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(float))[:, 0]
    array = (x - vol.centre[0]).reshape(vol.array.shape).astype(np.float32)  # value = R offset from the centre
    low, high = intensity_window(array, vol.m, vol.centre, 3.0)
    # the region spans R -3..+3 mm (plus up to a voxel of rounding): its 1st and 99.5th percentiles
    assert -3.3 <= low <= -2.8 and 2.8 <= high <= 3.3


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_window_ignores_voxels_far_from_the_centre(geometry):
    vol = LinearVolume(GEOMETRIES[geometry], span_mm=20.0)
    k, j, i = np.indices(vol.array.shape)
    ras = vol.index_to_ras(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(float))
    radius = 2.0
    far = np.linalg.norm(ras - vol.centre, axis=1) > 3.0 * radius + 1.5  # beyond any index box around the cube
    array = np.where(far, 1e6, (ras - vol.centre)[:, 0]).reshape(vol.array.shape).astype(np.float32)
    assert far.mean() > 0.5
    low, high = intensity_window(array, vol.m, vol.centre, radius)
    assert high < 100.0, "a voxel far outside the window region set the window"
    assert low < -0.5 * radius and high > 0.5 * radius


def test_window_of_a_constant_region_is_one_unit_wide():
    m = GEOMETRIES["oblique"]
    low, high = intensity_window(np.full((10, 12, 14), 42.0, dtype=np.float32), m, m[:3, 3], 5.0)
    assert (low, high) == (42.0, 43.0)


# --- cube matrices ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [16, 17, 40])
def test_cube_centre_is_at_index_half_size_minus_one(size):
    centre = np.array([12.5, -40.25, 7.0])
    for axes in AXES.values():
        cube = cube_ijk_to_ras(centre, size, 0.75, axes)
        np.testing.assert_allclose(ras_to_cube_points(cube, centre), [[(size - 1) / 2.0] * 3], atol=1e-12)
        np.testing.assert_allclose(cube_points_to_ras(cube, [[(size - 1) / 2.0] * 3]), [centre], atol=1e-12)


def test_canonical_cube_axes_point_to_left_posterior_superior():
    cube = cube_ijk_to_ras([1.0, 2.0, 3.0], 8, 0.5)
    origin = cube_points_to_ras(cube, [[0.0, 0.0, 0.0]])[0]
    steps = cube_points_to_ras(cube, np.eye(3)) - origin
    np.testing.assert_allclose(steps, [[-0.5, 0, 0], [0, -0.5, 0], [0, 0, 0.5]], atol=1e-12)


def test_cube_index_ras_round_trip():
    rng = np.random.default_rng(3)
    for axes in AXES.values():
        cube = cube_ijk_to_ras(rng.normal(size=3) * 50, 24, 0.3, axes)
        ijk = rng.uniform(-5, 30, (50, 3))
        np.testing.assert_allclose(ras_to_cube_points(cube, cube_points_to_ras(cube, ijk)), ijk, atol=1e-9)
        ras = rng.normal(size=(50, 3)) * 20
        np.testing.assert_allclose(cube_points_to_ras(cube, ras_to_cube_points(cube, ras)), ras, atol=1e-9)
        # neighbouring voxels along i, j, k are one (scaled) spacing apart
        p = cube_points_to_ras(cube, [[3, 4, 5], [4, 4, 5], [3, 5, 5], [3, 4, 6]])
        np.testing.assert_allclose(np.linalg.norm(p[1:] - p[0], axis=1), 0.3 * np.linalg.norm(axes, axis=0),
                                   atol=1e-9)


# --- pooled_for_spacing -----------------------------------------------------------------------------------------
def _all_indices(shape_kji) -> np.ndarray:
    k, j, i = np.indices(shape_kji)
    return np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(np.float64)


def test_pooled_voxels_are_block_means_at_the_blocks_ras_centre():
    m = GEOMETRIES["oblique"]  # spacing i, j, k = 0.3, 0.45, 0.6 mm
    rng = np.random.default_rng(0)
    array = rng.normal(size=(20, 23, 31)).astype(np.float32)
    pooled, pm = pooled_for_spacing(array, m, 1.0)
    f = (3, 2, 1)  # floor(1.0 / spacing) per i, j, k
    assert pooled.shape == (20 // f[2], 23 // f[1], 31 // f[0]) and pooled.dtype == np.float32
    for k, j, i in [(0, 0, 0), (19, 10, 9), (7, 3, 5), (12, 8, 2)]:
        block = array[k * f[2]:(k + 1) * f[2], j * f[1]:(j + 1) * f[1], i * f[0]:(i + 1) * f[0]]
        assert pooled[k, j, i] == pytest.approx(float(block.mean()), abs=1e-6)
        kk, jj, ii = np.meshgrid(np.arange(k * f[2], (k + 1) * f[2]), np.arange(j * f[1], (j + 1) * f[1]),
                                 np.arange(i * f[0], (i + 1) * f[0]), indexing="ij")
        members = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(float) @ m[:3, :3].T + m[:3, 3]
        np.testing.assert_allclose(pm[:3, :3] @ [i, j, k] + pm[:3, 3], members.mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(pm[:3, :3], axis=0), [0.9, 0.9, 0.6], atol=1e-12)


@pytest.mark.parametrize("geometry,target", [("flipped", 2.0), ("permuted", 1.3), ("anisotropic", 1.0)])
def test_pooled_linear_volume_is_the_function_at_the_pooled_voxel_centres(geometry, target):
    vol = LinearVolume(GEOMETRIES[geometry], span_mm=12.0)
    pooled, pm = pooled_for_spacing(vol.array, vol.m, target)
    assert all(p < s for p, s in zip(pooled.shape, vol.array.shape)) or geometry == "anisotropic"
    spacing = np.linalg.norm(pm[:3, :3], axis=0)
    assert np.all(spacing <= target + 1e-9) and np.all(spacing > target / 2)
    ras = _all_indices(pooled.shape) @ pm[:3, :3].T + pm[:3, 3]
    np.testing.assert_allclose(pooled.ravel(), vol.f(ras), atol=1e-4)


def test_pooling_to_a_finer_target_is_the_identity():
    vol = LinearVolume(GEOMETRIES["oblique"], span_mm=6.0)
    pooled, pm = pooled_for_spacing(vol.array, vol.m, 0.25)
    np.testing.assert_array_equal(pooled, vol.array)
    np.testing.assert_allclose(pm, vol.m)


# --- volume_cube --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("geometry,shape_kji", [("oblique", (150, 200, 180)), ("flipped", (300, 40, 260)),
                                                ("translated", (20, 30, 25)), ("permuted", (90, 260, 200))])
def test_volume_cube_holds_every_corner_with_an_edge_multiple_of_8(geometry, shape_kji):
    m = GEOMETRIES[geometry]
    spacing = 2.0
    cube, edge = volume_cube(m, shape_kji, spacing)
    assert edge % 8 == 0 and edge >= 48
    np.testing.assert_allclose(cube[:3, :3], CANONICAL_AXES * spacing)
    n = np.array(shape_kji[::-1], dtype=float)
    corners = np.array([[a, b, c] for a in (-0.5, n[0] - 0.5) for b in (-0.5, n[1] - 0.5) for c in (-0.5, n[2] - 0.5)])
    ras = corners @ m[:3, :3].T + m[:3, 3]
    idx = ras_to_cube_points(cube, ras)
    assert np.all(idx >= -0.5 - 1e-9) and np.all(idx <= edge - 0.5 + 1e-9)
    # centred on the volume's bounding box, and no larger than needed
    np.testing.assert_allclose(cube_points_to_ras(cube, [[(edge - 1) / 2.0] * 3])[0],
                               (ras.min(axis=0) + ras.max(axis=0)) / 2, atol=1e-9)
    extent = (ras.max(axis=0) - ras.min(axis=0)).max()
    assert edge == 48 or (edge - 8) * spacing < extent

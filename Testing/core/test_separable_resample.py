"""Linear resampling per axis in numpy (separable_resample) against SimpleITK's Resample, the reference it replaces
for changes of spacing: the same values on oblique, flipped and translated grids, SimpleITK never imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from CochleaCommonLib.geometry import rotation_matrix
from CochleaCommonLib.image import Image
from CochleaCommonLib.image_ops import grid_with_spacing, resample_like, resample_to_spacing
from CochleaCommonLib.separable_resample import resample_linear_separable
from geometry_cases import CASES

ROOT = Path(__file__).resolve().parents[2]


def _textured(case: str, dtype) -> Image:
    """A geometry case with smooth, non-linear float content (a ramp alone would hide weight errors)."""
    image = CASES[case]()
    k, j, i = np.indices(image.array.shape)
    values = 1000.0 * np.sin(0.7 * i) * np.cos(0.5 * j) + 37.0 * k ** 2 + 0.125 * i * j
    return image.with_array(values.astype(dtype))


def _off_the_edge(image: Image, reference: Image) -> np.ndarray:
    """Reference voxels (KJI mask) whose centre falls on the source's extent boundary to within 1e-9 voxels: there
    inside or outside is decided by the last bit of the coordinate, which ITK computes its own way."""
    k, j, i = np.indices(reference.array.shape)
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(np.float64)
    c = image.ras_to_continuous_index(reference.index_to_ras(ijk))
    n = np.array(image.shape_ijk, dtype=np.float64)
    edge = (np.abs(c + 0.5) < 1e-9) | (np.abs(c - (n - 0.5)) < 1e-9)
    return edge.any(axis=1).reshape(reference.array.shape)


def _assert_itks_values(ours: Image, itk: Image, image: Image, reference: Image, default: float) -> None:
    """Equal to rounding (the order of additions and ITK's own computation of the source coordinate differ by a
    few units in the last place), and the same voxels outside the source, but for those on its very edge."""
    dtype = image.array.dtype
    scale = float(np.abs(image.array).max())
    tolerance = 4 * np.finfo(np.float32).eps * scale if dtype == np.float32 else 1e-12 * scale
    keep = ~_off_the_edge(image, reference)
    assert keep.mean() > 0.5
    np.testing.assert_allclose(ours.array[keep], itk.array[keep], rtol=0, atol=tolerance)
    if default:  # (0 is also a value of the texture inside)
        np.testing.assert_array_equal(ours.array[keep] == default, itk.array[keep] == default)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("spacing", [0.3, (0.17, 0.5, 0.33), 1.1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("default", [0.0, -1024.0])
def test_change_of_spacing_gives_itks_values(case, spacing, dtype, default):
    image = _textured(case, dtype)
    grid = grid_with_spacing(image, spacing)
    ours = resample_linear_separable(image, grid, default_value=default)
    itk = resample_like(image, grid, interpolator="linear", default_value=default)
    assert ours is not None and ours.array.dtype == itk.array.dtype == dtype
    np.testing.assert_array_equal(ours.ijk_to_ras, grid.ijk_to_ras)
    _assert_itks_values(ours, itk, image, grid, default)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_shifted_and_flipped_grid_of_other_size_gives_itks_values(case):
    """Not only the grids grid_with_spacing makes: a reference with reversed axes, a shift reaching past the
    source's edge (the default value there) and other sizes."""
    image = _textured(case, np.float32)
    m = image.ijk_to_ras.copy()
    m[:3, :3] = m[:3, :3] @ np.diag([-0.7, 1.3, 0.9])
    m[:3, 3] = image.index_to_ras([10.2, -2.4, 3.3])
    reference = Image(np.zeros((7, 12, 16), np.float32), m)
    ours = resample_linear_separable(image, reference, default_value=-5.0)
    itk = resample_like(image, reference, interpolator="linear", default_value=-5.0)
    _assert_itks_values(ours, itk, image, reference, -5.0)
    assert (itk.array == -5.0).any() and (itk.array != -5.0).any()


def test_rotated_grids_and_integer_images_are_left_to_itk():
    image = _textured("oblique", np.float32)
    rotated = image.ijk_to_ras.copy()
    rotated[:3, :3] = rotation_matrix([0.0, 0.0, 1.0], 20.0) @ rotated[:3, :3]
    assert resample_linear_separable(image, Image(np.zeros((5, 5, 5), np.float32), rotated)) is None
    integer = image.with_array(image.array.astype(np.int16))
    assert resample_linear_separable(integer, grid_with_spacing(integer, 0.3)) is None
    # resample_to_spacing still resamples them, through ITK.
    out = resample_to_spacing(integer, 0.3)
    assert out.array.dtype == np.int16 and out.spacing == pytest.approx(0.3)


def test_resample_to_spacing_does_not_import_simpleitk_for_a_float_volume():
    code = ("import sys, numpy as np\n"
            "from CochleaCommonLib.image import Image\n"
            "from CochleaCommonLib.image_ops import resample_to_spacing\n"
            "img = Image.from_geometry(np.random.rand(20, 21, 22).astype(np.float32), (0.25, 0.25, 0.4),"
            " (1.0, 2.0, 3.0))\n"
            "out = resample_to_spacing(img, 0.3)\n"
            "print(out.array.shape, 'SimpleITK' in sys.modules)\n")
    env_path = f"{ROOT / 'CochleaCommon'}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert done.stdout.strip().endswith("False"), done.stdout

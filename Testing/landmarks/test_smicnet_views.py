"""The eight views of a voxel (sagittal and coronal, four quarter turns each) and their average in the sweep.

The geometry is checked on a volume whose every voxel holds a distinct value, so a pixel taken from the wrong
voxel cannot pass; the sweep's averaging against per-view dense maps computed independently.
"""

from __future__ import annotations

import numpy as np
import pytest
from CochleaCommonLib.errors import InvalidInputError
from CochleaLandmarksLib.smicnet_preprocess import quantize_patches
from CochleaLandmarksLib.smicnet_sweep import (
    PatchSource,
    classify_groups,
    classify_views,
    classify_voxels,
    sweep_coarse_to_fine,
)
from CochleaLandmarksLib.smicnet_views import ALL_VIEWS, SAGITTAL, View, check_view, cut_view, margin_needed
from test_smicnet_sweep import OBLIQUE, P, _oracle, _volume


def _coded_volume() -> np.ndarray:
    return np.arange(96 * 97 * 98, dtype=np.float64).reshape(96, 97, 98)


def _source_pixel(view: View, dr: int, dc: int) -> tuple[int, int]:
    """Where pixel (L + dr, L + dc) of a turned view comes from in the unturned image (row, column offsets).

    ``numpy.rot90`` by one turn maps ``new[r, c] = old[c, -r]`` about the centre; apply it ``turns`` times."""
    r, c = dr, dc
    for _ in range(view.turns):
        r, c = c, -r
    return r, c


@pytest.mark.parametrize("pixel", [40, 41, 39])
@pytest.mark.parametrize("view", ALL_VIEWS, ids=[f"{v.plane}-{v.turns}" for v in ALL_VIEWS])
def test_each_view_puts_the_voxel_on_the_landmark_pixel_and_its_plane_around_it(view, pixel):
    vol = _coded_volume()
    half = margin_needed(pixel)
    centres = np.array([[half, half + 1, half + 2], [48, 47, 49]])
    patches = cut_view(vol, centres, view, pixel)
    assert patches.shape == (2, 81, 81)
    for n, (i, j, k) in enumerate(centres):
        assert patches[n, pixel, pixel] == vol[i, j, k]
        for dr, dc in [(1, 0), (0, 1), (-3, 2), (80 - pixel, -pixel), (-pixel, 80 - pixel)]:
            r, c = _source_pixel(view, dr, dc)
            want = vol[i, j + r, k + c] if view.plane == "sagittal" else vol[i + r, j, k + c]
            assert patches[n, pixel + dr, pixel + dc] == want, (dr, dc)


def test_the_unturned_sagittal_view_is_the_sweeps_own_patch():
    """For both centrings, the view path and the sweep's sliding windows give the same patch for every voxel."""
    image = _volume(OBLIQUE, 0.25, size_mm=20.0)  # resampled to 0.3 mm
    ijk = np.stack(np.unravel_index(np.arange(0, 7 ** 3, 5), (7, 7, 7)), axis=1)
    for offset in [(0, 0, 0), (0, 1, 1)]:
        source = PatchSource(image, P, 7, centre_offset_vox=offset, all_views=True)
        pixel = 40 + offset[1]
        direct = quantize_patches(cut_view(source.vol, ijk + source.margin, SAGITTAL, pixel))[:, None]
        np.testing.assert_array_equal(source.patches(ijk), direct)
        np.testing.assert_array_equal(source.patches(ijk, SAGITTAL), direct)


def test_views_cut_by_torch_equal_the_numpy_views():
    torch = pytest.importorskip("torch")
    image = _volume(OBLIQUE, 0.3, size_mm=30.0)
    source = PatchSource(image, P, 9, centre_offset_vox=(0, 1, 1), all_views=True)
    ijk = np.stack(np.unravel_index(np.arange(0, 9 ** 3, 11), (9, 9, 9)), axis=1)
    for view in ALL_VIEWS:
        np.testing.assert_array_equal(source.patches_torch(ijk, torch.device("cpu"), view).numpy(),
                                      source.patches(ijk, view))
    # And through the sweep's device path (what a CUDA classifier takes), padding included.
    on_numpy = _oracle(41, 41)
    on_device = _oracle(41, 41)
    on_device.torch_device = torch.device("cpu")
    on_device.on_device = lambda x: torch.from_numpy(on_numpy(x.numpy()))
    for view in (View("coronal", 3), View("sagittal", 1)):
        np.testing.assert_array_equal(classify_voxels(source, on_device, ijk, view=view),
                                      classify_voxels(source, on_numpy, ijk, view=view))


def test_all_views_in_shared_batches_equal_one_call_per_view():
    """classify_views puts the patches of several views into the same batches (a batch may end inside a view):
    every (view, voxel) answer must still be that view's own, on the numpy path and on the device path."""
    torch = pytest.importorskip("torch")
    image = _volume(OBLIQUE, 0.3, size_mm=30.0)
    noise = np.random.default_rng(3).normal(0.0, 200.0, image.array.shape)  # every pixel tells views apart
    image = image.with_array((image.array + noise).astype(np.float32))
    source = PatchSource(image, P, 9, centre_offset_vox=(0, 1, 1), all_views=True)
    ijk = np.stack(np.unravel_index(np.arange(3, 9 ** 3, 37), (9, 9, 9)), axis=1)  # 20 voxels
    views = (View("coronal", 1), SAGITTAL, View("sagittal", 3), View("coronal", 2))
    on_numpy = _oracle(30, 52)  # off the landmark pixel, where the views differ
    on_device = _oracle(30, 52)
    on_device.torch_device = torch.device("cpu")
    on_device.on_device = lambda x: torch.from_numpy(on_numpy(x.numpy()))
    one_by_one = np.stack([classify_voxels(source, on_numpy, ijk, view=v) for v in views])
    assert len({tuple(a.ravel()) for a in one_by_one}) == len(views)  # the views do answer differently
    for classifier in (on_numpy, on_device):
        for batch in (7, 20, 33, 1000):
            got = classify_views(source, classifier, ijk, views, batch_size=batch)
            assert got.shape == (len(views), len(ijk), 4)
            np.testing.assert_array_equal(got, one_by_one)
    assert classify_views(source, on_numpy, ijk[:0], views).shape == (len(views), 0, 4)
    # Groups of different voxels and views, an empty one among them (what the sweep's rounds send).
    groups = [(ijk[:5], View("coronal", 1)), (ijk[:0], SAGITTAL), (ijk[3:], View("sagittal", 3)), (ijk[7:9], SAGITTAL)]
    expected = np.concatenate([classify_voxels(source, on_numpy, g, view=v) for g, v in groups])
    for classifier in (on_numpy, on_device):
        for batch in (4, 5, 17, 1000):
            np.testing.assert_array_equal(classify_groups(source, classifier, groups, batch_size=batch), expected)


def test_bad_views_and_sources_are_refused():
    image = _volume(OBLIQUE, 0.3, size_mm=20.0)
    sagittal_only = PatchSource(image, P, 5, centre_offset_vox=(0, 0, 0))
    with pytest.raises(InvalidInputError, match="sagittal patches only"):
        sagittal_only.patches(np.zeros((1, 3), dtype=np.int64), View("coronal", 0))
    with pytest.raises(InvalidInputError, match=r"centre offset \(0, s, s\)"):
        PatchSource(image, P, 5, centre_offset_vox=(0, 1, 0), all_views=True)
    for bad in [("axial", 0), ("coronal", 1.5), "sagittal", None]:
        with pytest.raises(InvalidInputError, match="view"):
            check_view(bad)
    assert check_view(("coronal", 5)) == View("coronal", 1)
    for views in [(View("coronal", 0),), (SAGITTAL, SAGITTAL)]:
        with pytest.raises(InvalidInputError, match="views must include the sagittal view"):
            sweep_coarse_to_fine(image, P, _oracle(40, 40), box_mm=3.0, views=views)
    with pytest.raises(InvalidInputError, match="views_threshold"):
        sweep_coarse_to_fine(image, P, _oracle(40, 40), box_mm=3.0, views=ALL_VIEWS, views_threshold=1.0)


def test_sweep_averages_all_views_exactly_where_the_sagittal_view_is_promising():
    """Where the sagittal sweep reached the threshold: the mean of the eight dense per-view answers; elsewhere the
    sagittal answer untouched; and the patch count says what was scored."""
    image = _volume(OBLIQUE, 0.3, size_mm=30.0)  # 0.3 mm: both sweeps see the very same grid
    # A second, smaller blob 0.9 mm anterior: sagittal planes near P see it, coronal ones mostly not, so the
    # views disagree (on the round blob alone, with the slabs, every view gives the same answer).
    n_img = image.array.shape[0]
    k, j, i = np.meshgrid(*(np.arange(n_img),) * 3, indexing="ij")
    ras = image.index_to_ras(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)).reshape(n_img, n_img, n_img, 3)
    bump = 600.0 * np.exp(-((ras - (P + np.array([0.0, 0.9, 0.3]))) ** 2).sum(-1) / (2 * 0.4 ** 2))
    image = image.with_array((image.array + bump).astype(np.float32))
    oracle = _oracle(40, 40)
    box, threshold = 4.5, 0.3
    sagittal, patches_1 = sweep_coarse_to_fine(image, P, oracle, box_mm=box, keep_threshold=0.05,
                                               centre_offset_vox=(0, 0, 0))
    calls: list = []
    averaged, patches_8 = sweep_coarse_to_fine(image, P, _oracle(40, 40, calls), box_mm=box, keep_threshold=0.05,
                                               centre_offset_vox=(0, 0, 0), views=ALL_VIEWS,
                                               views_threshold=threshold)
    n = sagittal["Helicotrema"].array.shape[0]
    source = PatchSource(image, P, n, centre_offset_vox=(0, 0, 0), all_views=True)
    every = np.stack(np.unravel_index(np.arange(n ** 3), (n, n, n)), axis=1)
    dense = np.stack([classify_voxels(source, oracle, every, view=v)[:, 0] for v in ALL_VIEWS])
    mean = dense.mean(axis=0).reshape(n, n, n).transpose(2, 1, 0)  # to the maps' KJI order
    s, a = sagittal["Helicotrema"].array, averaged["Helicotrema"].array
    promising = s >= threshold
    assert 10 < promising.sum() < s.size // 4
    assert not np.allclose(mean[promising], s[promising])  # the views do disagree somewhere
    np.testing.assert_allclose(a[promising], mean[promising], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a[~promising], s[~promising])
    assert patches_8 == patches_1 + 7 * int(promising.sum()) == sum(calls)
    np.testing.assert_allclose(averaged["Helicotrema"].ijk_to_ras, sagittal["Helicotrema"].ijk_to_ras)

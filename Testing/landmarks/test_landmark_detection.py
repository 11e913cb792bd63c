"""Landmark detection pipeline: parity visiting order, coarse-to-fine pruning, geometry, outputs, bad input.

An oracle classifier (class 0 = the value of one pixel of the quantised patch) stands in for the
network where the test is about geometry or bookkeeping; the real network runs in the CLI tests.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from CochleaCommonLib.errors import InvalidInputError
from CochleaCommonLib.geometry import lps_to_ras
from CochleaCommonLib.image import Image
from CochleaCommonLib.image_io import read_image
from CochleaCommonLib.lattice_resample import maps_on_lattice_of
from CochleaCommonLib.markups_io import read_markups
from CochleaLandmarksLib.landmark_detection import (
    detect_landmarks,
    validate_image,
    write_landmark_outputs,
)
from CochleaLandmarksLib.landmark_result import LANDMARK_NAMES
from CochleaLandmarksLib.smicnet_detector import LoadedDetector
from CochleaLandmarksLib.smicnet_parity import (
    PARITY_COARSE_BACKGROUND,
    fine_entries,
    parity_offsets,
    parity_sweep,
)
from CochleaLandmarksLib.smicnet_sweep import (
    PatchSource,
    sweep_coarse_to_fine,
    sweep_probabilities,
)
from test_smicnet_sweep import FLIPPED, OBLIQUE, PERMUTED, P, _oracle
from test_smicnet_sweep import _volume as _sweep_volume


def _volume(direction: np.ndarray, spacing: float, *, blob: bool = True, size_mm: float = 36.0) -> Image:
    """The sweep tests' blob volume on a background of 200: with a zero background the authors' metal test
    (p99.9 > 6 x p95) would fire and zero the blob, which the pipeline applies as the authors do."""
    image = _sweep_volume(direction, spacing, blob=blob, size_mm=size_mm)
    return image.with_array(image.array + np.float32(200.0))


def _class_oracle(row: int, col: int, cls: int, calls: list | None = None):
    """Like the sweep tests' oracle, but reporting landmark class ``cls`` (0 apex, 1 basal, 2 round window)."""
    base = _oracle(row, col, calls)

    def classify(batch: np.ndarray) -> np.ndarray:
        out = base(batch)
        out[:, [0, cls]] = out[:, [cls, 0]]
        return out

    return classify


def _detector(row: int = 40, col: int = 40, landmark_pixel: int = 40, calls: list | None = None,
              cls: int = 1) -> LoadedDetector:
    """An oracle detector that finds the blob as the Modiolus base (fast mode needs that landmark)."""
    det = LoadedDetector("smicnet", "oracle", "cpu", network=None, load_seconds=0.0, landmark_pixel=landmark_pixel)
    det._classifier = _class_oracle(row, col, cls, calls)
    return det


# --- parity mode ---------------------------------------------------------------------------------------

def test_parity_offsets_follow_the_authors_flattening_order():
    off = parity_offsets(12)
    assert off.shape == (24 ** 3, 3)
    assert off[:, 0].min() == -12 and off[:, 0].max() == 11  # asymmetric box
    # dz fastest, then dx, then dy slowest.
    assert list(off[0]) == [-12, -12, -12] and list(off[1]) == [-12, -12, -11]
    assert list(off[24]) == [-11, -12, -12]
    assert list(off[24 * 24]) == [-12, -11, -12]
    coarse = off[::3]
    assert len(coarse) == 4608 and set(np.unique(coarse[:, 2])) == set(range(-12, 12, 3))


def test_fine_entries_wrap_like_python_indexing():
    assert list(fine_entries(np.array([5]), 100)) == list(range(12, 19))
    # Entry 0: 3*0-3 .. 3 -> -3, -2, -1 wrap to the end of the list.
    assert list(fine_entries(np.array([0]), 100)) == [0, 1, 2, 3, 97, 98, 99]
    # Past the end: skipped.
    assert list(fine_entries(np.array([33]), 100)) == [96, 97, 98, 99]
    # The window of a row's last coarse entry runs into the next row (dz = 9 -> next dx row).
    off = parity_offsets(12)
    entries = fine_entries(np.array([7]), len(off))  # flat 21 = dz 9 of the first row
    assert off[entries[-1]][2] == -12 and off[entries[-1]][0] == -11


def _authors_loop(source: PatchSource, classifier, ref: np.ndarray) -> np.ndarray:
    """The notebook's procedure, one patch at a time, with its overwrites (the reference for batching)."""
    points = np.clip(np.round(ref[None, :] + parity_offsets(12)).astype(np.int64), 0, source.n - 1)
    maps = np.zeros((source.n,) * 3 + (3,), dtype=np.float32)
    for idx, point in enumerate(points[::3]):
        p = classifier(source.patches(point[None]))[0]
        if p[3] > PARITY_COARSE_BACKGROUND:
            continue
        for m in range(3 * idx - 3, 3 * idx + 4):
            if m >= len(points):
                break
            q = points[m]  # a negative m wraps, as in Python
            pf = classifier(source.patches(q[None]))[0]
            c = int(np.argmax(pf))
            if c < 3:
                maps[q[0], q[1], q[2], c] = pf.max()
    return maps


def test_batched_parity_equals_the_authors_sequential_loop():
    image = _volume(OBLIQUE, 0.3, size_mm=24.0)
    seed = P + np.array([0.5, -0.4, 0.3])
    classifier = _oracle(40, 40)
    calls: list = []
    maps, patches = parity_sweep(image, seed, _oracle(40, 40, calls))
    source = PatchSource(image, seed, 26, centre_offset_vox=(0, 0, 0))
    box = source.box_image(np.zeros((1, 1, 1), dtype=np.float32))
    ref = box.ras_to_continuous_index(seed)
    expected = _authors_loop(source, classifier, ref)
    got = np.stack([maps[n].array.transpose(2, 1, 0) for n in LANDMARK_NAMES], axis=-1)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert expected[..., 0].max() > 0.5  # the blob was found, so the comparison is not vacuous
    assert patches == sum(calls) and 4608 < patches < 24 ** 3


# --- fast mode ------------------------------------------------------------------------------------------

def _connected_regions(mask: np.ndarray) -> list[np.ndarray]:
    """The 26-connected components of ``mask`` as boolean masks (a plain flood fill: the test's own oracle)."""
    seen = np.zeros_like(mask)
    regions = []
    for start in map(tuple, np.argwhere(mask)):
        if seen[start]:
            continue
        region = np.zeros_like(mask)
        stack = [start]
        seen[start] = True
        while stack:
            v = stack.pop()
            region[v] = True
            for d in np.ndindex(3, 3, 3):
                w = tuple(np.array(v) + np.array(d) - 1)
                if all(0 <= w[a] < mask.shape[a] for a in range(3)) and mask[w] and not seen[w]:
                    seen[w] = True
                    stack.append(w)
        regions.append(region)
    return regions


def test_coarse_to_fine_scores_every_region_it_touches_completely():
    """Growth is exact where it matters: each connected region above the keep threshold that holds one scored
    voxel is scored whole, and so is its one-voxel rim, with the dense sweep's values."""
    image = _volume(OBLIQUE, 0.3, size_mm=24.0)
    dense = sweep_probabilities(image, P, _oracle(40, 40), box_mm=6.0, centre_offset_vox=(0, 0, 0))
    calls: list = []
    keep = 0.3
    fast, patches = sweep_coarse_to_fine(image, P, _oracle(40, 40, calls), box_mm=6.0, coarse_stride=3,
                                         keep_threshold=keep, centre_offset_vox=(0, 0, 0))
    d, f = dense["Helicotrema"].array, fast["Helicotrema"].array
    island = d > 0.5
    assert island.sum() > 10
    np.testing.assert_array_equal(f[island], d[island])
    regions = _connected_regions(d >= keep)
    assert regions
    touched = [r for r in regions if (f[r] > 0).any()]
    assert touched  # the lattice found the blob
    for region in touched:
        rim = np.zeros_like(region)
        for v in np.argwhere(region):
            lo, hi = np.maximum(v - 1, 0), np.minimum(v + 2, region.shape)
            rim[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
        np.testing.assert_array_equal(f[rim], d[rim])
    assert patches == sum(calls) < d.size  # background was pruned
    np.testing.assert_allclose(fast["Helicotrema"].ijk_to_ras, dense["Helicotrema"].ijk_to_ras)


def test_coarse_lattice_fills_the_inscribed_ball_only():
    from CochleaLandmarksLib.smicnet_sweep import _ball_lattice, _lattice

    for n, stride in [(70, 3), (9, 2), (10, 3), (1, 1)]:
        ball = _ball_lattice(n, stride)
        axis = _lattice(n, stride)
        cube = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
        inside = np.linalg.norm(cube - (n - 1) / 2.0, axis=1) <= n / 2.0
        assert {tuple(v) for v in ball} == {tuple(v) for v in cube[inside]}
        assert len(ball) >= 1
    # The 21 mm box of fast mode: one lattice voxel per 3^3 voxels of the ball (about half the cube's 24^3).
    assert abs(len(_ball_lattice(70, 3)) / (4 / 3 * np.pi * 35 ** 3 / 27) - 1) < 0.02


def test_unscored_neighbours_are_the_distinct_26_neighbours_inside_the_box():
    from CochleaLandmarksLib.smicnet_sweep import _unscored_neighbours

    rng = np.random.default_rng(4)
    scored = rng.random((7, 8, 9)) > 0.6
    scored = np.zeros((9, 9, 9), dtype=bool) | np.pad(scored, ((1, 1), (0, 1), (0, 0)))[:9, :9, :9]
    voxels = np.array([[0, 0, 0], [4, 4, 4], [4, 5, 4], [8, 8, 8]])
    expected = set()
    for v in voxels:
        for d in np.ndindex(3, 3, 3):
            w = v + np.array(d) - 1
            if d != (1, 1, 1) and np.all((w >= 0) & (w < 9)) and not scored[tuple(w)]:
                expected.add(tuple(int(x) for x in w))
    got = _unscored_neighbours(voxels, scored)
    assert len(got) == len(expected) == len({tuple(v) for v in got})
    assert {tuple(int(x) for x in v) for v in got} == expected


def test_coarse_to_fine_rejects_bad_settings():
    image = _volume(OBLIQUE, 0.3, size_mm=24.0)
    for stride in (0, -1, 1.5):
        with pytest.raises(InvalidInputError, match="coarse_stride"):
            sweep_coarse_to_fine(image, P, _oracle(40, 40), box_mm=3.0, coarse_stride=stride)
    for keep in (0.0, 1.0, -0.1):
        with pytest.raises(InvalidInputError, match="keep_threshold"):
            sweep_coarse_to_fine(image, P, _oracle(40, 40), box_mm=3.0, keep_threshold=keep)


@pytest.mark.parametrize("direction", [OBLIQUE, FLIPPED, PERMUTED], ids=["oblique", "flipped", "permuted"])
@pytest.mark.parametrize("pixel", [40, 41], ids=["our-centring", "authors-centring"])
def test_detect_puts_the_landmark_at_the_blob(direction, pixel):
    """Whatever the volume's orientation and whichever pixel the weights expect, the point lands on P."""
    image = _volume(direction, 0.3, size_mm=30.0)
    seed = P + np.array([1.2, -0.9, 0.6])
    result = detect_landmarks(image, seed, detector=_detector(pixel, pixel, landmark_pixel=pixel), roi_mm=8.0)
    assert np.linalg.norm(result.positions_ras["Modiolus base"] - P) < 0.15
    assert result.confidences["Modiolus base"] > 0.9
    # The oracle never reports the other two: missing, with a reason, never a made-up point.
    for name in ("Helicotrema", "Round Window"):
        assert result.positions_ras[name] is None and "no region scored above" in result.missing_reasons[name]
    assert result.points().labels == ["Modiolus base"]
    # The map is on the input's own lattice (same axes and spacing, voxels coinciding with input voxels) and
    # peaks at P.
    prob = result.probability_maps["Modiolus base"]
    np.testing.assert_allclose(prob.ijk_to_ras[:3, :3], image.ijk_to_ras[:3, :3], atol=1e-9)
    shift = image.ras_to_continuous_index(prob.index_to_ras([0, 0, 0]))
    np.testing.assert_allclose(shift, np.round(shift), atol=1e-6)
    peak = np.unravel_index(np.argmax(prob.array), prob.array.shape)
    assert np.linalg.norm(prob.index_to_ras(np.array(peak[::-1], dtype=float)) - P) < 0.35
    assert [lm["found"] for lm in result.report()["landmarks"]] == [False, True, False]


def test_maps_on_input_lattice_cover_the_box_on_a_translated_anisotropic_volume():
    image = Image.from_geometry(np.zeros((60, 70, 80), dtype=np.int16), (0.25, 0.35, 0.4), (-130.0, 20.0, 7.0))
    box = Image.from_geometry(np.ones((10, 10, 10), dtype=np.float32), (0.3, 0.3, 0.3), (-120.0, 28.0, 15.0),
                              np.diag([-1.0, -1.0, 1.0]))
    out = maps_on_lattice_of(image, {"m": box})["m"]
    np.testing.assert_allclose(out.spacing, image.spacing)
    lo, hi = box.world_bounds()
    for corner in (lo, hi):
        assert out.value_at(corner) == pytest.approx(1.0, abs=1e-6)  # the box's corners are inside the map
    assert out.array.dtype == np.float32 and out.array.size < image.array.size


# --- bad input ------------------------------------------------------------------------------------------

def test_no_cochlea_found_is_an_error_not_a_guess():
    image = _volume(OBLIQUE, 0.3, blob=False, size_mm=30.0)
    with pytest.raises(InvalidInputError, match=r"No cochlea found within 4\.\d mm of the seed"):
        detect_landmarks(image, P, detector=_detector(), roi_mm=9.0)


def test_landmarks_without_the_modiolus_base_are_not_trusted():
    """A seed beside the cochlea finds look-alikes (canals, ossicles) as apex or round window but never the
    modiolus base: fast mode then reports no cochlea rather than those points."""
    image = _volume(OBLIQUE, 0.3, size_mm=30.0)
    with pytest.raises(InvalidInputError, match="No cochlea .*the Helicotrema found without it is not trusted"):
        detect_landmarks(image, P, detector=_detector(cls=0), roi_mm=8.0)
    assert detect_landmarks(image, P, detector=_detector(cls=1), roi_mm=8.0).found_names == ["Modiolus base"]


def test_seed_outside_and_non_ct_volumes_are_refused_before_any_work():
    image = _volume(OBLIQUE, 0.3, size_mm=24.0)
    calls: list = []
    with pytest.raises(InvalidInputError, match="lies outside the volume"):
        detect_landmarks(image, P + 100.0, detector=_detector(calls=calls))
    with pytest.raises(InvalidInputError, match="not a single slice"):
        detect_landmarks(Image(np.zeros((1, 50, 50), np.int16) + np.arange(50, dtype=np.int16), np.eye(4)), P,
                         detector=_detector(calls=calls))
    labels = image.with_array((image.array > 500).astype(np.int16) * 3)
    with pytest.raises(InvalidInputError, match="label map"):
        detect_landmarks(labels, P, detector=_detector(calls=calls))
    with pytest.raises(InvalidInputError, match="Unknown mode 'turbo'"):
        detect_landmarks(image, P, detector=_detector(calls=calls), mode="turbo")
    with pytest.raises(InvalidInputError, match="5 to 60 mm"):
        detect_landmarks(image, P, detector=_detector(calls=calls), roi_mm=200)
    assert calls == []


def test_coarse_spacing_warns():
    image = Image.from_geometry(np.arange(40 ** 3, dtype=np.float32).reshape(40, 40, 40) % 977, (0.7, 0.7, 0.7))
    assert any("coarser than 0.6 mm" in w for w in validate_image(image))
    assert validate_image(image.with_array(image.array)) and not validate_image(
        Image.from_geometry(image.array, (0.3, 0.3, 0.3)))


# --- outputs --------------------------------------------------------------------------------------------

def test_outputs_round_trip_in_lps_and_leave_nothing_half_written(tmp_path):
    image = _volume(FLIPPED, 0.3, size_mm=24.0)
    result = detect_landmarks(image, P, detector=_detector(), roi_mm=6.0)
    paths = write_landmark_outputs(result, tmp_path / "out", name="CT landmarks")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["landmarks.fcsv", "landmarks.mrk.json", "probability_Helicotrema.nrrd",
                     "probability_Modiolus_base.nrrd", "probability_Round_Window.nrrd", "report.json"]
    text = paths["fcsv"].read_text()
    assert "# CoordinateSystem = LPS" in text
    row = [line for line in text.splitlines() if not line.startswith("#")][0].split(",")
    np.testing.assert_allclose(lps_to_ras(np.array([float(v) for v in row[1:4]])),
                               result.positions_ras["Modiolus base"], atol=1e-3)
    for path in (paths["fcsv"], paths["mrk.json"]):
        back = read_markups(path)
        assert back.labels == ["Modiolus base"]
        np.testing.assert_allclose(back.positions_ras[0], result.positions_ras["Modiolus base"], atol=1e-3)
    assert json.loads(paths["mrk.json"].read_text())["markups"][0]["coordinateSystem"] == "LPS"
    report = json.loads(paths["report"].read_text())
    assert [lm["label"] for lm in report["landmarks"]] == list(LANDMARK_NAMES)
    assert report["model"] == "oracle" and report["device"] == "cpu" and "total" in report["timings_s"]
    prob = read_image(paths["probability_Modiolus_base"])
    np.testing.assert_allclose(prob.ijk_to_ras, result.probability_maps["Modiolus base"].ijk_to_ras, atol=1e-5)

    # A failure while writing leaves the previous results as they were and no temporary folder.
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    result.probability_maps["Round Window"] = "not an image"  # type: ignore[assignment]
    with pytest.raises((AttributeError, TypeError)):
        write_landmark_outputs(result, tmp_path / "out")
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert after == before


# --- GPU patch path (run on the CPU here: same code, same numbers) ------------------------------------------

def test_patches_cut_by_torch_equal_the_numpy_patches_and_probabilities():
    """On a GPU the sweep cuts and quantises patches with torch on the device; that path must give exactly
    the patches of the numpy path (and so the same probabilities)."""
    torch = pytest.importorskip("torch")
    from CochleaLandmarksLib.smicnet_model import build_smicnet
    from CochleaLandmarksLib.smicnet_sweep import classify_voxels, smicnet_classifier

    torch.manual_seed(0)
    image = _volume(FLIPPED, 0.25, size_mm=30.0)  # resampled to 0.3 mm, left-handed grid
    source = PatchSource(image, P, 9, centre_offset_vox=(0, 1, 1))
    ijk = np.stack(np.unravel_index(np.arange(0, 9 ** 3, 7), (9, 9, 9)), axis=1)
    np.testing.assert_array_equal(source.patches_torch(ijk, torch.device("cpu")).numpy(), source.patches(ijk))
    model = build_smicnet("cpu")
    on_numpy = smicnet_classifier(model)
    on_torch = smicnet_classifier(model)
    on_torch.torch_device = torch.device("cpu")  # what a CUDA model sets; forces the torch path here
    np.testing.assert_allclose(classify_voxels(source, on_torch, ijk), classify_voxels(source, on_numpy, ijk),
                               atol=1e-6)


def test_device_batches_are_padded_to_stable_shapes_and_the_padding_is_dropped():
    """On a device every batch is padded to a stable size (cuDNN autotunes and a CUDA graph is captured per
    shape); the answers for the padding must not leak into the result."""
    torch = pytest.importorskip("torch")
    from CochleaLandmarksLib import smicnet_sweep as sw
    from CochleaLandmarksLib.smicnet_model import build_smicnet

    torch.manual_seed(0)
    image = _volume(FLIPPED, 0.3, size_mm=30.0)
    source = PatchSource(image, P, 9, centre_offset_vox=(0, 1, 1))
    ijk = np.stack(np.unravel_index(np.arange(0, 9 ** 3, 5), (9, 9, 9)), axis=1)  # 146 voxels
    model = build_smicnet("cpu")
    plain = sw.smicnet_classifier(model)
    on_device = sw.smicnet_classifier(model)
    shapes = []
    inner = on_device.on_device

    def recording(x):
        shapes.append(int(x.shape[0]))
        return inner(x)

    on_device.on_device = recording
    on_device.torch_device = torch.device("cpu")
    on_device.preferred_batch = 100
    got = sw.classify_voxels(source, on_device, ijk)
    assert shapes == [128, 128], shapes  # 100 + 46 voxels, each batch padded up to 128
    assert [sw.device_batch_shape(n) for n in (1, 128, 129, 256, 300, 512, 513, 1024, 4000, 4096)] == [
        128, 128, 256, 256, 512, 512, 1024, 1024, 4096, 4096]
    assert got.shape == (len(ijk), 4)
    np.testing.assert_allclose(got, sw.classify_voxels(source, plain, ijk), atol=1e-6)


def test_classifier_preferences_on_the_cpu():
    """CPU: batches of CPU_BATCH, and fast mode uses the float32 classifier itself (float16 is CUDA only)."""
    pytest.importorskip("torch")
    from CochleaLandmarksLib import smicnet_sweep as sw
    from CochleaLandmarksLib.smicnet_detector import LoadedDetector
    from CochleaLandmarksLib.smicnet_model import build_smicnet

    model = build_smicnet("cpu")
    assert sw.smicnet_classifier(model).preferred_batch == sw.CPU_BATCH
    assert sw.gpu_batch("cpu") == sw.SMALL_GPU_BATCH  # not a CUDA device: the small batch
    detector = LoadedDetector("smicnet", "test", "cpu", model, 0.0)
    assert detector.fast_classifier is detector.classifier
    x = np.random.default_rng(0).random((4, 1, 81, 81)).astype(np.float32)
    np.testing.assert_array_equal(sw.smicnet_classifier(model, half=True)(x), detector.classifier(x))


def test_unscored_neighbours_respect_each_axis_of_a_non_cubic_box():
    from CochleaLandmarksLib.smicnet_sweep import _unscored_neighbours

    scored = np.zeros((2, 3, 5), dtype=bool)
    got = {tuple(int(x) for x in v) for v in _unscored_neighbours(np.array([[1, 2, 4]]), scored)}
    assert got == {(i, j, k) for i in (0, 1) for j in (1, 2) for k in (3, 4)} - {(1, 2, 4)}

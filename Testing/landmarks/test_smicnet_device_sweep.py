"""The fast sweep kept on the classifier's device (smicnet_device_sweep) against the host loop, and its lattices.

The device loop runs here on the CPU through a classifier that declares a torch device, as a CUDA classifier
does: the same code path a GPU takes, checked in CI without one. Both loops must score the same voxels and
give the same maps, with one view and with eight.
"""

from __future__ import annotations

import numpy as np
import pytest
from CochleaCommonLib.errors import InvalidInputError
from CochleaLandmarksLib.smicnet_sweep import LATTICE_KINDS, _ball_lattice, runs_on_device, sweep_coarse_to_fine
from CochleaLandmarksLib.smicnet_views import ALL_VIEWS, SAGITTAL
from test_smicnet_sweep import FLIPPED, OBLIQUE, P, _oracle, _volume


def _two_blob_volume(direction: np.ndarray):
    """A blob at P and a smaller one 0.9 mm anterior: the views disagree near them, so the average matters."""
    image = _volume(direction, 0.3, size_mm=30.0)
    n_img = image.array.shape[0]
    k, j, i = np.meshgrid(*(np.arange(n_img),) * 3, indexing="ij")
    ras = image.index_to_ras(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)).reshape(n_img, n_img, n_img, 3)
    bump = 600.0 * np.exp(-((ras - (P + np.array([0.0, 0.9, 0.3]))) ** 2).sum(-1) / (2 * 0.4 ** 2))
    return image.with_array((image.array + bump).astype(np.float32))


def _device_style(calls: list):
    """The numpy oracle behind the interface of a GPU classifier (tensors in and out on ``torch_device``)."""
    torch = pytest.importorskip("torch")
    numpy_oracle = _oracle(40, 40, calls)

    def classify(batch):
        raise AssertionError("a device classifier is called through on_device only")

    classify.torch_device = torch.device("cpu")
    classify.on_device = lambda x: torch.from_numpy(numpy_oracle(x.numpy()))
    return classify


@pytest.mark.parametrize("direction", [OBLIQUE, FLIPPED])
@pytest.mark.parametrize("views", [(SAGITTAL,), ALL_VIEWS])
@pytest.mark.parametrize("lattice, stride, island_threshold", [("cubic", 3, None), ("bcc", 5, 0.5)])
def test_device_sweep_scores_the_same_voxels_with_the_same_values_as_the_host_sweep(direction, views, lattice,
                                                                                     stride, island_threshold,
                                                                                     monkeypatch):
    from CochleaLandmarksLib import smicnet_device_sweep

    loops: list = []  # the host loop also hands a device classifier its patches as tensors: count the device loop
    device_loop = smicnet_device_sweep.grow_on_device
    monkeypatch.setattr(smicnet_device_sweep, "grow_on_device", lambda *a, **k: loops.append(1) or device_loop(*a, **k))
    image = _two_blob_volume(direction)
    host_calls: list = []
    device_calls: list = []
    device = _device_style(device_calls)
    assert runs_on_device(device) and not runs_on_device(_oracle(40, 40))
    kwargs = dict(box_mm=6.0, coarse_stride=stride, lattice=lattice, keep_threshold=0.05, views=views,
                  views_threshold=0.3, centre_offset_vox=(0, 1, 1), island_threshold=island_threshold)
    progress: list = []
    on_host, host_patches = sweep_coarse_to_fine(image, P, _oracle(40, 40, host_calls), **kwargs)
    on_device, device_patches = sweep_coarse_to_fine(image, P, device, progress=progress.append, **kwargs)
    assert loops == [1]  # the device classifier went through grow_on_device, the numpy oracle did not
    assert device_patches == host_patches == sum(host_calls)
    lattice_size = len(_ball_lattice(on_host["Helicotrema"].array.shape[0], stride, lattice))
    assert host_patches > lattice_size  # growth rounds ran
    assert sum(device_calls) >= device_patches  # device batches are padded to stable shapes
    assert 20 < (on_host["Helicotrema"].array > 0).sum() < on_host["Helicotrema"].array.size  # grown, pruned
    for name, host_map in on_host.items():
        np.testing.assert_array_equal(on_device[name].array > 0, host_map.array > 0)
        np.testing.assert_allclose(on_device[name].array, host_map.array, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(on_device[name].ijk_to_ras, host_map.ijk_to_ras)
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)


def _covering_radius(lattice: np.ndarray, n: int, rim: int) -> float:
    """The largest distance from a voxel of the ball (``rim`` voxels in from its edge) to the nearest lattice voxel."""
    grid = np.stack(np.meshgrid(*(np.arange(n),) * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    grid = grid[np.linalg.norm(grid - (n - 1) / 2.0, axis=1) <= n / 2.0 - rim]
    nearest = np.full(len(grid), np.inf)
    for start in range(0, len(lattice), 256):
        d = np.linalg.norm(grid[:, None, :] - lattice[None, start:start + 256, :], axis=2).min(axis=1)
        nearest = np.minimum(nearest, d)
    return float(nearest.max())


def test_body_centred_lattice_covers_the_ball_more_thinly_than_the_cubic_one():
    n = 30
    cubic3 = _ball_lattice(n, 3, "cubic")
    cubic4 = _ball_lattice(n, 4, "cubic")
    bcc4 = _ball_lattice(n, 4, "bcc")
    bcc5 = _ball_lattice(n, 5, "bcc")
    for lattice in (cubic3, cubic4, bcc4, bcc5):
        assert len(np.unique(lattice, axis=0)) == len(lattice)
        assert np.all((lattice >= 0) & (lattice < n))
        assert np.all(np.linalg.norm(lattice - (n - 1) / 2.0, axis=1) <= n / 2.0)
    # bcc4 = the cubic stride 4 plus the cube centres.
    assert {tuple(v) for v in cubic4} < {tuple(v) for v in bcc4}
    phase = (bcc4 - cubic4.min(axis=0)) % 4  # corners: (0, 0, 0); centres: (2, 2, 2)
    assert np.all((phase == 0).all(axis=1) | (phase == 2).all(axis=1))
    radius = {name: _covering_radius(lat, n, 3) for name, lat in
              (("cubic3", cubic3), ("cubic4", cubic4), ("bcc4", bcc4), ("bcc5", bcc5))}
    assert radius["cubic3"] == pytest.approx(np.sqrt(3))
    assert radius["cubic4"] == pytest.approx(np.sqrt(12))
    assert radius["bcc4"] == pytest.approx(np.sqrt(5))
    assert radius["bcc5"] == pytest.approx(np.sqrt(6))
    # bcc5 reaches every voxel within 2.45 voxels with under half the lattice of the cubic stride 3.
    assert 0.35 < len(bcc5) / len(cubic3) < 0.5


def test_unknown_lattice_kind_is_refused():
    assert LATTICE_KINDS == ("cubic", "bcc")
    with pytest.raises(InvalidInputError, match="lattice must be one of cubic, bcc"):
        _ball_lattice(20, 3, "hexagonal")


def test_on_a_gpu_the_device_loop_gives_the_host_loops_maps_with_the_bundled_model(tmp_path):
    """The real fast classifier (float16, CUDA graphs) on a phantom: both loops score the same voxels, and the
    probabilities agree to float16 noise (the views' batches are composed in a different order)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (CI has none; run on the project's GPU machine)")
    from CochleaCommonLib.phantom import generate_case
    from CochleaLandmarksLib import smicnet_sweep as sw
    from CochleaLandmarksLib.landmark_detection import load_detector
    from CochleaLandmarksLib.smicnet_detector import (
        FAST_BOX_MM,
        FAST_DEVICE_LATTICE,
        FAST_KEEP,
        FAST_VIEWS_THRESHOLD,
    )
    from CochleaLandmarksLib.smicnet_device_sweep import grow_on_device

    case = generate_case("ct", 1009, spacing=0.3, fov_mm=40.0)
    classifier = load_detector("smicnet", "smicnet-phantom", device="cuda").fast_classifier
    n = sw._box_size(FAST_BOX_MM)
    source = sw.PatchSource(case.image, case.seed_point.positions_ras[0], n, all_views=True)
    kind, stride = FAST_DEVICE_LATTICE
    lattice = sw._ball_lattice(n, stride, kind)
    host, visited, host_patches = sw._grow_on_host(source, classifier, lattice, FAST_KEEP, None, None)
    host_patches += sw._average_views(source, classifier, host, visited, ALL_VIEWS, FAST_VIEWS_THRESHOLD, None, None)
    device, device_patches = grow_on_device(source, classifier, lattice, FAST_KEEP, ALL_VIEWS, FAST_VIEWS_THRESHOLD)
    assert device_patches == host_patches > len(lattice)
    np.testing.assert_array_equal(device.any(axis=-1), host.any(axis=-1))
    np.testing.assert_allclose(device, host, rtol=0, atol=2e-3)


def test_fast_mode_picks_the_lattice_of_where_the_classifier_runs(monkeypatch):
    """The body-centred side 4 on the CPU; on a device the cubic stride 3 (fewer growth rounds, which cost there)."""
    from types import SimpleNamespace

    from CochleaCommonLib.progress import Progress
    from CochleaLandmarksLib import smicnet_detector as sd

    chosen = []

    class Stop(Exception):
        pass

    def record(*args, **kwargs):
        chosen.append((kwargs["lattice"], kwargs["coarse_stride"]))
        raise Stop

    monkeypatch.setattr(sd, "sweep_coarse_to_fine", record)
    image = _volume(OBLIQUE, 0.3, size_mm=30.0)
    for classifier in (_oracle(40, 40), _device_style([])):
        detector = SimpleNamespace(fast_classifier=classifier, landmark_pixel=40)
        with pytest.raises(Stop):
            sd.smicnet_maps(image, P, detector, mode="fast", box_mm=None, progress=Progress())
    assert chosen == [sd.FAST_LATTICE, sd.FAST_DEVICE_LATTICE] == [("bcc", 4), ("cubic", 3)]

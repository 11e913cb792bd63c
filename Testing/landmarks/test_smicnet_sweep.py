"""SMICNet sliding-window sweep: world geometry of the patches and of the probability maps.

An oracle classifier stands in for the network: it reports class 0 (Helicotrema) with the value of
one chosen pixel of the preprocessed patch. The volume holds a bright Gaussian blob at a known RAS
point P plus bright slabs a few mm away (so every patch near P, sagittal or coronal, has the same intensity
maximum and the per-patch min-max normalisation cannot amplify the blob's faint tails). The sweep must then put
the Helicotrema at P on oblique, mirrored and resampled volumes.
"""

from __future__ import annotations

import numpy as np
import pytest
from CochleaCommonLib.errors import InvalidInputError
from CochleaCommonLib.image import Image
from CochleaLandmarksLib.smicnet_model import CLASS_NAMES
from CochleaLandmarksLib.smicnet_sweep import landmarks_from_probabilities, sweep_probabilities

P = np.array([3.1, -7.2, 12.05])  # RAS mm, deliberately off the voxel centres
BOX_MM = 4.5
SIGMA_MM = 0.6


def _rotation(ax_deg: float, az_deg: float) -> np.ndarray:
    a, b = np.radians(ax_deg), np.radians(az_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


def _volume(direction: np.ndarray, spacing: float, *, blob: bool = True, size_mm: float = 36.0) -> Image:
    """A volume centred near P: Gaussian blob at P (peak 1000), a 1 mm slab 8 mm anterior to P and one 8 mm to
    its right (sagittal patches see the first, coronal patches the second)."""
    n = int(round(size_mm / spacing))
    m = np.eye(4)
    m[:3, :3] = direction * spacing
    m[:3, 3] = P - m[:3, :3] @ np.full(3, (n - 1) / 2.0) + np.array([0.07, -0.11, 0.05])
    img = Image(np.zeros((n, n, n), dtype=np.float32), m)
    k, j, i = np.meshgrid(*(np.arange(n),) * 3, indexing="ij")
    ras = img.index_to_ras(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)).reshape(n, n, n, 3)
    d = ras - P
    values = np.zeros((n, n, n), dtype=np.float32)
    if blob:
        values += 1000.0 * np.exp(-(d ** 2).sum(-1) / (2 * SIGMA_MM ** 2))
    values[np.abs(d[..., 1] - 8.0) < 0.5] = 1000.0  # seen by every sagittal patch near P
    values[np.abs(d[..., 0] + 8.0) < 0.5] = 1000.0  # and this one by every coronal patch (the other views)
    return img.with_array(values.astype(np.float32))


def _oracle(row: int, col: int, calls: list | None = None):
    def classify(batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32 and batch.ndim == 4 and batch.shape[1:] == (1, 81, 81)
        if calls is not None:
            calls.append(len(batch))
        p = batch[:, 0, row, col]
        out = np.zeros((len(batch), 4), dtype=np.float32)
        out[:, 0] = p
        out[:, 3] = 1.0 - p
        return out

    return classify


def _axis_vectors(prob: Image) -> np.ndarray:
    return prob.ijk_to_ras[:3, :3]  # columns: one voxel step along i, j, k, in RAS mm


OBLIQUE = _rotation(17.0, -23.0)
FLIPPED = OBLIQUE @ np.diag([1.0, -1.0, 1.0])  # det < 0
PERMUTED = OBLIQUE @ np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]])


@pytest.mark.parametrize(
    "direction, spacing",
    [(OBLIQUE, 0.3), (FLIPPED, 0.3), (PERMUTED, 0.3), (OBLIQUE, 0.2)],
    ids=["oblique", "flipped", "permuted", "resampled-0.2mm"],
)
def test_helicotrema_found_at_blob(direction, spacing):
    assert (np.linalg.det(direction) < 0) == (direction is FLIPPED)
    calls: list = []
    seed = P + np.array([0.4, -0.3, 0.5])
    progress: list = []
    probs = sweep_probabilities(_volume(direction, spacing), seed, _oracle(41, 41, calls), box_mm=BOX_MM,
                                batch_size=1000, progress=progress.append)
    assert set(probs) == set(CLASS_NAMES[:3])
    heli = probs["Helicotrema"]
    n = int(round(BOX_MM / 0.3))
    assert heli.array.shape == (n, n, n) and heli.array.dtype == np.float32
    assert np.allclose(heli.spacing, 0.3)
    assert sum(calls) == n ** 3 and max(calls) <= 1000
    assert progress[-1] == pytest.approx(1.0) and progress == sorted(progress)
    # All probability images share the box grid.
    for img in probs.values():
        assert np.array_equal(img.ijk_to_ras, heli.ijk_to_ras)

    # The peak voxel is the box voxel nearest P (at most half a voxel diagonal away).
    peak_kji = np.unravel_index(np.argmax(heli.array), heli.array.shape)
    peak_ras = heli.index_to_ras(np.array(peak_kji[::-1], dtype=float))
    assert np.linalg.norm(peak_ras - P) <= 0.5 * np.sqrt(3) * 0.3 + 1e-6

    found = landmarks_from_probabilities(probs)
    ras, confidence = found["Helicotrema"]
    assert ras is not None and ras.shape == (3,)
    assert np.linalg.norm(ras - P) < 0.5 * 0.3, f"{ras} vs {P}"
    assert 0.5 < confidence <= 1.0
    assert found["Modiolus base"] == (None, 0.0)
    assert found["Round Window"] == (None, 0.0)


def test_parity_mode_centre_pixel_40():
    """With ``centre_offset_vox=(0, 0, 0)`` the patch of voxel v is centred on v at pixel (40, 40)."""
    probs = sweep_probabilities(_volume(OBLIQUE, 0.3), P, _oracle(40, 40), box_mm=BOX_MM,
                                centre_offset_vox=(0, 0, 0))
    ras, _ = landmarks_from_probabilities(probs)["Helicotrema"]
    assert np.linalg.norm(ras - P) < 0.15


def test_parity_mode_bias_and_row_column_order():
    """A network that fires with the landmark at pixel (row 41 + 3, col 41), swept in parity mode,
    reports P - 4 voxels along j and - 1 along k: rows are j (A->P), columns are k (I->S)."""
    probs = sweep_probabilities(_volume(OBLIQUE, 0.3), P, _oracle(44, 41), box_mm=BOX_MM,
                                centre_offset_vox=(0, 0, 0))
    heli = probs["Helicotrema"]
    ras, _ = landmarks_from_probabilities(probs)["Helicotrema"]
    step = _axis_vectors(heli)
    expected = P - 4 * step[:, 1] - 1 * step[:, 2]
    assert np.linalg.norm(ras - expected) < 0.15
    # The box's j axis points posterior and k superior (LPS array convention).
    assert step[1, 1] < 0 and step[2, 2] > 0 and step[0, 0] < 0


def test_no_island_gives_none():
    probs = sweep_probabilities(_volume(OBLIQUE, 0.3, blob=False), P, _oracle(41, 41), box_mm=3.0)
    found = landmarks_from_probabilities(probs)
    assert all(v == (None, 0.0) for v in found.values())


def test_largest_island_wins():
    grid = np.zeros((10, 10, 10), dtype=np.float32)
    grid[1, 1, 1] = 0.99  # small, higher peak
    grid[5:8, 5:8, 6] = 0.8  # larger island, centre (i, j, k) = (6, 6, 6)
    grid[6, 6, 6] = 0.9
    img = Image.from_geometry(grid, spacing=(0.3, 0.3, 0.3), origin_ras=(1.0, 2.0, 3.0))
    ras, conf = landmarks_from_probabilities({"Helicotrema": img})["Helicotrema"]
    assert np.allclose(ras, img.index_to_ras(np.array([6.0, 6.0, 6.0])))
    assert conf == pytest.approx(0.9)


def test_bad_classifier_output_and_arguments():
    vol = _volume(OBLIQUE, 0.3, size_mm=12.0)
    with pytest.raises(InvalidInputError, match="classifier returned"):
        sweep_probabilities(vol, P, lambda b: np.zeros((len(b), 3)), box_mm=0.9)
    with pytest.raises(InvalidInputError):
        sweep_probabilities(vol, P, _oracle(41, 41), box_mm=0.0)
    with pytest.raises(InvalidInputError):
        sweep_probabilities(vol, P + 100.0, _oracle(41, 41), box_mm=0.9)


def test_runs_with_the_network():
    """Plumbing only (random weights): SMICNet through ``smicnet_classifier`` gives valid probabilities."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")
    from CochleaLandmarksLib.smicnet_model import build_smicnet
    from CochleaLandmarksLib.smicnet_sweep import smicnet_classifier

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        probs = sweep_probabilities(_volume(OBLIQUE, 0.3, size_mm=12.0), P, smicnet_classifier(build_smicnet()),
                                    box_mm=0.9, batch_size=16)
    finally:
        torch.set_num_threads(threads)
    total = sum(img.array for img in probs.values())
    assert all(img.array.shape == (3, 3, 3) for img in probs.values())
    assert np.all(total >= 0) and np.all(total <= 1.0 + 1e-5)

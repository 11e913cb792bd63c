"""The 3D detector's targets, read-out, loss, training cubes, weight file and training run.

Targets and read-out are checked against each other and against the cube geometry: a landmark mapped
into a rotated, mirrored and scaled cube, turned into heat and displacement targets, and read back must
land on the same RAS point to float precision (so the two agree on cell centres, the i, j, k order of
the displacement and its scale). Training cubes are checked against the image they were cut from: the
heat target must sit on the bright blob that marks the landmark in every augmented cube. The training
run is a smoke test on two small phantoms (two steps per pass, one thread): plumbing, not accuracy.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from CochleaCommonLib.downloads import sha256_file
from CochleaCommonLib.errors import InvalidInputError, ModelWeightsError
from CochleaCommonLib.geometry import make_ijk_to_ras, rotation_matrix
from CochleaCommonLib.image_io import read_image
from CochleaCommonLib.model_registry import ModelEntry
from CochleaLandmarksLib.landmark_dataset import read_ground_truth
from CochleaLandmarksLib.landmark_result import LANDMARK_NAMES

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")

from CochleaLandmarksLib.detector_geometry import (  # noqa: E402
    CANONICAL_AXES,
    cube_ijk_to_ras,
    cube_points_to_ras,
)
from CochleaLandmarksLib.detector_model import (  # noqa: E402
    DISPLACEMENT_SCALE,
    OUTPUT_STRIDE,
    build_network,
)
from CochleaLandmarksLib.detector_readout import VOTE_FLOOR, heat_peaks, readout_cells  # noqa: E402
from CochleaLandmarksLib.detector_stages import COCHLEA_CHANNEL, STAGES, StageGeometry  # noqa: E402
from CochleaLandmarksLib.detector_training import (  # noqa: E402
    HISTORY_FIELDS,
    DetectorTrainingConfig,
    detector_loss,
    train_detector,
)
from CochleaLandmarksLib.detector_training_data import (  # noqa: E402
    DISPLACEMENT_RADIUS_CELLS,
    DetectorVolume,
    cell_targets,
    load_head_volumes,
    load_landmark_volumes,
    random_axes,
    sample_batch,
)
from CochleaLandmarksLib.detector_weights import (  # noqa: E402
    DETECTOR_FORMAT,
    load_detector_weights,
    save_detector_weights,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: A small local pass (the name decides how training cubes are centred).
STAGE = StageGeometry("coarse", 24, 0.5, LANDMARK_NAMES, heat_sigma_cells=1.0, jitter_mm=0.5,
                      window_radius_mm=8.0, widths=(4, 4, 4))
GLOBAL = StageGeometry("global", 32, 2.0, (COCHLEA_CHANNEL,), widths=(4, 4, 4))
FINE = StageGeometry("fine", 16, 0.25, LANDMARK_NAMES, jitter_mm=0.5, widths=(4, 4, 4))
AXES = rotation_matrix([0.2, 1.0, -0.3], -17.0) @ np.diag([-1.0, 1.0, 1.0]) @ CANONICAL_AXES * 1.07
CENTRE = np.array([10.0, -20.0, 35.0])
#: Landmarks as cube indices (i, j, k): sub-cell positions, one next to the cube's edge.
LANDMARK_IJK = np.array([[7.3, 12.6, 9.1], [15.8, 4.4, 11.0], [0.4, 22.7, 11.2]])


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Never read or write the developer's real model cache."""
    monkeypatch.setenv("COCHLEA_TOOLKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("COCHLEA_TOOLKIT_MODEL_DIRS", raising=False)


def _cube(stage: StageGeometry = STAGE) -> np.ndarray:
    return cube_ijk_to_ras(CENTRE, stage.size, stage.spacing_mm, AXES)


def _cell_centres(n: int) -> np.ndarray:
    """(3, n, n, n) cube voxel (i, j, k) of every cell, cells in KJI order."""
    k, j, i = np.indices((n, n, n)) * OUTPUT_STRIDE
    return np.stack([i, j, k]).astype(np.float64)


def _landmarks(cube: np.ndarray) -> dict[str, np.ndarray]:
    return {name: cube_points_to_ras(cube, LANDMARK_IJK[n]) for n, name in enumerate(LANDMARK_NAMES)}


# --- targets -------------------------------------------------------------------------------------------------
def test_cell_targets_point_every_nearby_cell_at_the_landmark():
    cube = _cube()
    heat, disp, mask = cell_targets(STAGE, cube, _landmarks(cube))
    n = STAGE.size // OUTPUT_STRIDE
    assert heat.shape == (3, n, n, n) and disp.shape == (3, 3, n, n, n) and mask.shape == (3, n, n, n)
    centres = _cell_centres(n)
    for ch, p in enumerate(LANDMARK_IJK):
        d = np.linalg.norm(centres - p[:, None, None, None], axis=0)  # cube voxels
        # the hottest cell is the cell nearest the landmark; heat is a Gaussian of sigma one cell
        assert np.unravel_index(np.argmax(heat[ch]), heat[ch].shape) == np.unravel_index(np.argmin(d), d.shape)
        sigma = STAGE.heat_sigma_cells * OUTPUT_STRIDE
        np.testing.assert_allclose(heat[ch], np.exp(-d ** 2 / (2 * sigma ** 2)), atol=1e-6)
        # displacements are supervised within DISPLACEMENT_RADIUS_CELLS and point at the landmark
        near = d <= DISPLACEMENT_RADIUS_CELLS * OUTPUT_STRIDE
        np.testing.assert_array_equal(mask[ch], near.astype(np.float32))
        votes = centres + disp[ch].astype(np.float64) * DISPLACEMENT_SCALE
        np.testing.assert_allclose(votes[:, near].T, np.broadcast_to(p, (int(near.sum()), 3)), atol=1e-5)
        assert np.all(disp[ch][:, ~near] == 0)
        assert np.abs(disp[ch]).max() <= DISPLACEMENT_RADIUS_CELLS * OUTPUT_STRIDE / DISPLACEMENT_SCALE + 1e-6


def test_cell_targets_with_two_ears_in_one_channel_vote_for_the_nearer_one():
    cube = _cube(GLOBAL)
    p = np.array([[8.4, 15.2, 14.0], [17.6, 16.1, 12.5]])  # about 9.5 voxels apart: the masks overlap
    heat, disp, mask = cell_targets(GLOBAL, cube, {COCHLEA_CHANNEL: cube_points_to_ras(cube, p)})
    centres = _cell_centres(GLOBAL.size // OUTPUT_STRIDE)
    d = np.stack([np.linalg.norm(centres - q[:, None, None, None], axis=0) for q in p])
    sigma = OUTPUT_STRIDE * GLOBAL.heat_sigma_cells
    np.testing.assert_allclose(heat[0], np.exp(-d.min(axis=0) ** 2 / (2 * sigma ** 2)), atol=1e-6)
    near = d.min(axis=0) <= DISPLACEMENT_RADIUS_CELLS * OUTPUT_STRIDE
    np.testing.assert_array_equal(mask[0] > 0, near)
    nearer = np.argmin(d, axis=0)
    votes = centres + disp[0].astype(np.float64) * DISPLACEMENT_SCALE
    np.testing.assert_allclose(votes[:, near].T, p[nearer[near]], atol=1e-5)
    # each ear is read back from its own peak
    for q in p:
        cell = tuple(int(v) for v in np.round(q / OUTPUT_STRIDE)[::-1])
        ijk, _ = readout_cells(heat[0], disp[0], peak_index=cell)
        np.testing.assert_allclose(ijk, q, atol=1e-4)


def test_a_landmark_far_outside_the_cube_gives_no_heat_and_no_displacement():
    cube = _cube()
    far = {name: cube_points_to_ras(cube, [[-40.0, 5.0, 5.0]]) for name in LANDMARK_NAMES}
    heat, disp, mask = cell_targets(STAGE, cube, far)
    assert heat.max() < 1e-6 and not mask.any() and not disp.any()


# --- read-out ------------------------------------------------------------------------------------------------
def test_readout_of_exact_targets_recovers_the_landmark_to_float_precision():
    cube = _cube()
    truth = _landmarks(cube)
    heat, disp, _ = cell_targets(STAGE, cube, truth)
    for ch, name in enumerate(LANDMARK_NAMES):
        ijk, peak = readout_cells(heat[ch], disp[ch])
        np.testing.assert_allclose(ijk, LANDMARK_IJK[ch], atol=1e-4)
        np.testing.assert_allclose(cube_points_to_ras(cube, ijk)[0], truth[name][0], atol=1e-4)
        assert peak == pytest.approx(float(heat[ch].max()))


def test_readout_without_displacement_returns_the_peak_cell_centre_in_ijk_order():
    p = np.array([10.0, 14.0, 6.0])  # i, j, k on a cell centre; distinct so a k/i swap shows
    heat, disp, _ = cell_targets(STAGE, np.eye(4), {name: p[None] for name in LANDMARK_NAMES})
    ijk, peak = readout_cells(heat[0], np.zeros_like(disp[0]))
    np.testing.assert_allclose(ijk, p, atol=1e-9)
    assert peak == pytest.approx(1.0)


def test_far_cells_and_weak_cells_do_not_vote():
    cube = _cube()
    heat, disp, _ = cell_targets(STAGE, cube, _landmarks(cube))
    h, dsp = heat[0].copy(), disp[0].copy()
    k, j, i = np.unravel_index(np.argmax(h), h.shape)
    # a strong cell three cells away (outside the vote radius) with a wild displacement
    h[k, j, i + 3] = 0.9 * h[k, j, i]
    dsp[:, k, j, i + 3] = 5.0
    # a weak cell next to the peak (below VOTE_FLOOR of the peak) with a wild displacement
    h[k + 1, j, i] = 0.9 * VOTE_FLOOR * h[k, j, i]
    dsp[:, k + 1, j, i] = -5.0
    ijk, _ = readout_cells(h, dsp)
    np.testing.assert_allclose(ijk, LANDMARK_IJK[0], atol=1e-4)


def test_heat_peaks_are_separated_thresholded_sorted_and_limited():
    heat = np.zeros((16, 16, 16), dtype=np.float32)
    heat[2, 3, 4] = 0.9
    heat[3, 3, 5] = 0.5  # within 2 cells of the stronger peak: suppressed
    heat[10, 11, 12] = 0.6
    heat[13, 2, 2] = 0.2  # below the threshold
    heat[8, 8, 1] = 0.45
    peaks = heat_peaks(heat, 0.3, 2, 10)
    assert [p for p, _ in peaks] == [(2, 3, 4), (10, 11, 12), (8, 8, 1)]  # (k, j, i), strongest first
    assert [v for _, v in peaks] == pytest.approx([0.9, 0.6, 0.45])
    assert heat_peaks(torch.from_numpy(heat), 0.3, 2, 2) == peaks[:2]
    assert [p for p, _ in heat_peaks(heat, 0.3, 0, 10)] == [(2, 3, 4), (10, 11, 12), (3, 3, 5), (8, 8, 1)]
    assert heat_peaks(heat, 0.95, 2, 10) == []


def test_a_flat_topped_peak_counts_once():
    """Tied neighbours (a saturated float32 sigmoid is exactly 1.0 on several cells) are one peak, not several
    within ``min_separation_cells``: otherwise one flat top fills ``limit`` and hides the second ear."""
    heat = np.zeros((16, 16, 16), dtype=np.float32)
    heat[4:6, 4:6, 4:6] = float(torch.sigmoid(torch.tensor(20.0)))  # == 1.0 in float32
    heat[12, 12, 12] = 0.8
    peaks = heat_peaks(heat, 0.3, 2, 10)
    cells = np.array([p for p, _ in peaks])
    gaps = [np.abs(a - b).max() for n, a in enumerate(cells) for b in cells[n + 1:]]
    assert min(gaps) > 2, f"peaks closer than the separation: {[p for p, _ in peaks]}"
    assert [p for p, _ in heat_peaks(heat, 0.3, 2, 2)][1] == (12, 12, 12)


# --- loss ----------------------------------------------------------------------------------------------------
def _target_batch():
    cubes = [_cube(), cube_ijk_to_ras(CENTRE + [1.0, -2.0, 0.5], STAGE.size, STAGE.spacing_mm)]
    truth = _landmarks(cubes[0])
    out = [cell_targets(STAGE, c, truth) for c in cubes]
    return tuple(torch.from_numpy(np.stack([o[n] for o in out])) for n in range(3))


def test_loss_is_near_zero_for_a_perfect_prediction_and_grows_with_the_error():
    heat_t, disp_t, mask = _target_batch()
    perfect = torch.logit(heat_t.clamp(1e-6, 1 - 1e-6))
    wrong = torch.full_like(heat_t, -4.0)  # a fresh network: "nothing here" everywhere
    half = 0.5 * (perfect + wrong)
    losses = [float(detector_loss(h, disp_t, heat_t, disp_t, mask)) for h in (perfect, half, wrong)]
    assert all(np.isfinite(losses))
    assert losses[0] < 1e-4 < 0.05 < losses[2] and losses[0] < losses[1] < losses[2], losses
    # displacement errors count inside the mask only
    base = losses[0]
    inside = float(detector_loss(perfect, disp_t + 0.5 * mask[:, :, None], heat_t, disp_t, mask))
    outside = float(detector_loss(perfect, disp_t + 0.5 * (1 - mask[:, :, None]), heat_t, disp_t, mask))
    assert inside > base + 1.0
    assert outside == pytest.approx(base, abs=1e-6)


def test_loss_and_gradient_are_finite_when_no_landmark_is_in_the_cube():
    heat_t, disp_t, mask = (torch.zeros_like(t) for t in _target_batch())
    logits = torch.zeros_like(heat_t, requires_grad=True)
    disp = torch.zeros_like(disp_t, requires_grad=True)
    loss = detector_loss(logits, disp, heat_t, disp_t, mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and torch.isfinite(disp.grad).all()
    assert float(logits.grad.sum()) > 0  # pushes the heat down


# --- training cubes ------------------------------------------------------------------------------------------
def test_random_axes_are_turned_scaled_and_mirrored_canonical_axes():
    rng = np.random.default_rng(5)
    for probability, sign in ((0.0, 1.0), (1.0, -1.0)):
        for _ in range(100):
            axes = random_axes(rng, 20.0, (0.9, 1.1), probability)
            scale = np.linalg.norm(axes, axis=0)
            assert np.ptp(scale) < 1e-9 and 0.9 <= scale[0] <= 1.1
            unit = axes / scale[0]
            np.testing.assert_allclose(unit.T @ unit, np.eye(3), atol=1e-9)
            assert np.sign(np.linalg.det(unit)) == sign
            mirror = np.diag([-1.0, 1.0, 1.0]) if sign < 0 else np.eye(3)
            turn = unit @ np.linalg.inv(mirror @ CANONICAL_AXES)
            angle = np.degrees(np.arccos(np.clip((np.trace(turn) - 1) / 2, -1, 1)))
            assert angle <= 20.0 + 1e-6
    dets = [np.linalg.det(random_axes(rng, 20.0, (1.0, 1.0), 0.5)) for _ in range(100)]
    assert 20 < sum(d < 0 for d in dets) < 80


def _blob_volume() -> tuple[DetectorVolume, np.ndarray]:
    """An oblique, anisotropic volume: a smooth ramp and one bright blob on the Modiolus base."""
    m = make_ijk_to_ras((0.4, 0.45, 0.5), (3.0, -7.0, 11.0), rotation_matrix([1.0, 2.0, 3.0], 27.0))
    shape_kji = (48, 54, 60)
    k, j, i = np.indices(shape_kji)
    ras = np.stack([i, j, k], axis=-1).astype(np.float64) @ m[:3, :3].T + m[:3, 3]
    base = m[:3, :3] @ (np.array(shape_kji[::-1]) - 1) / 2.0 + m[:3, 3]
    blob = 1000.0 * np.exp(-np.sum((ras - base) ** 2, axis=-1) / 2.0)
    array = (blob + 2.0 * (ras[..., 0] - base[0])).astype(np.float32)
    points = {"Helicotrema": (base + [6.0, 3.0, 0.0])[None], "Modiolus base": base[None],
              "Round Window": (base + [3.0, 6.0, 0.0])[None]}
    return DetectorVolume("blob", array, m, points), base


def test_augmented_training_cubes_put_the_heat_target_on_the_landmark_in_the_image():
    vol, _ = _blob_volume()
    rng = np.random.default_rng(11)
    x, heat, disp, mask = sample_batch([vol], STAGE, rng, 8, augment=True)
    n = STAGE.size // OUTPUT_STRIDE
    assert tuple(x.shape) == (8, 1, STAGE.size, STAGE.size, STAGE.size) and x.dtype == torch.float32
    assert tuple(heat.shape) == (8, 3, n, n, n) and tuple(disp.shape) == (8, 3, 3, n, n, n)
    assert tuple(mask.shape) == (8, 3, n, n, n)
    ch = LANDMARK_NAMES.index("Modiolus base")
    for b in range(8):
        v = x[b, 0].numpy()
        bright = v >= v.max() - 0.35 * (v.max() - np.median(v))
        blob_ijk = np.argwhere(bright)[:, ::-1].mean(axis=0)  # cube voxel (i, j, k) of the blob
        cell = np.array(np.unravel_index(int(torch.argmax(heat[b, ch])), heat.shape[2:]))[::-1]
        assert np.linalg.norm(cell * OUTPUT_STRIDE - blob_ijk) <= 2.0, f"cube {b}: target off the blob"
        # and the displacements of the peak cell point at the blob too
        k, j, i = cell[::-1]
        vote = cell * OUTPUT_STRIDE + disp[b, ch, :, k, j, i].numpy() * DISPLACEMENT_SCALE
        assert np.linalg.norm(vote - blob_ijk) <= 1.0


def test_unaugmented_fine_cubes_are_canonical_and_centred_near_a_landmark():
    vol, base = _blob_volume()
    rng = np.random.default_rng(2)
    x, heat, disp, mask = sample_batch([vol], FINE, rng, 6, augment=False)
    assert tuple(x.shape) == (6, 1, 16, 16, 16)
    # each fine cube holds at least one landmark (within jitter of its centre) with a heat peak near 1
    assert all(float(heat[b].max()) > 0.6 for b in range(6))
    assert float(x.min()) >= -0.5 and float(x.max()) <= 1.5


# --- reading annotated volumes -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    """Two small phantom cases (CT; left and right ear; 28 mm at 0.5 mm: the coarse cube overhangs), written once."""
    from CochleaCommonLib.phantom import generate_case

    out = tmp_path_factory.mktemp("detector_phantoms")
    for seed, side in ((1, "left"), (2, "right")):
        generate_case("ct", seed, spacing=0.5, fov_mm=28.0, side=side).write(out)
    return out


@pytest.fixture(scope="module")
def heads_dir(tmp_path_factory):
    """Two small head phantoms, each showing one ear (1 mm voxels, 80 x 80 x 48 mm)."""
    from CochleaCommonLib.phantom.heads import generate_head_case, write_head_case

    out = tmp_path_factory.mktemp("detector_heads")
    for seed, offset in ((3, (60.0, 0.0, 0.0)), (4, (-60.0, 0.0, 0.0))):
        case = generate_head_case("ct", seed, spacing=1.0, fov_mm=(80.0, 80.0, 48.0), offset_mm=offset)
        assert len(case.ears) == 1
        write_head_case(case, out)
    return out


def test_load_landmark_volumes_reads_volumes_and_truth(phantom_dir):
    volumes = load_landmark_volumes(phantom_dir)
    assert [v.case_id for v in volumes] == ["phantom_ct_00001", "phantom_ct_00002"]
    for v in volumes:
        folder = phantom_dir / v.case_id
        image = read_image(folder / f"{v.case_id}.nrrd")
        np.testing.assert_array_equal(v.array, image.array)
        np.testing.assert_allclose(v.ijk_to_ras, image.ijk_to_ras)
        truth = read_ground_truth(folder / f"{v.case_id}_landmarks.fcsv")
        assert set(v.points) == set(LANDMARK_NAMES) and v.window is None
        for name in LANDMARK_NAMES:
            np.testing.assert_allclose(v.points[name], truth[name][None])


def test_load_head_volumes_pools_to_the_global_spacing_and_keeps_every_ear(heads_dir):
    volumes = load_head_volumes(heads_dir, 2.0)
    assert len(volumes) == 2
    for v in volumes:
        folder = heads_dir / v.case_id
        (landmarks,) = sorted(folder.glob("*_landmarks.fcsv"))
        np.testing.assert_allclose(v.points[COCHLEA_CHANNEL], read_ground_truth(landmarks)["Modiolus base"][None])
        assert v.array.shape == (24, 40, 40)
        np.testing.assert_allclose(np.linalg.norm(v.ijk_to_ras[:3, :3], axis=0), [2.0, 2.0, 2.0])
        low, high = v.window
        assert low < high


# --- weight file ---------------------------------------------------------------------------------------------
def _tiny_networks(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    nets = {"coarse": build_network(3, STAGE.widths), "fine": build_network(3, FINE.widths)}
    for net in nets.values():  # non-trivial running statistics, so BatchNorm buffers must round-trip too
        net.train()
        with torch.no_grad():
            net(torch.rand(2, 1, 16, 16, 16))
        net.eval()
    return nets


def test_weights_round_trip_gives_identical_outputs(tmp_path):
    nets = _tiny_networks()
    stages = {"coarse": STAGE, "fine": FINE}
    path = save_detector_weights(nets, stages, tmp_path / "tiny.pt", source={"note": "test", "steps": 2})
    loaded, geometries, source = load_detector_weights(path)
    assert set(loaded) == {"coarse", "fine"} and geometries == stages
    assert source == {"note": "test", "steps": 2}
    x = torch.rand(1, 1, 16, 16, 16)
    for name, net in nets.items():
        assert not loaded[name].training
        with torch.no_grad():
            for a, b in zip(net(x), loaded[name](x)):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


class NotAWeight:
    """Unpickling this would construct an arbitrary object: a weights-only load must refuse it."""


@pytest.mark.parametrize("kind", ["text", "random-dict", "tensor", "pickled-object", "missing"])
def test_a_file_that_is_not_detector_weights_is_a_clear_error(tmp_path, kind):
    path = tmp_path / "weights.pt"
    if kind == "text":
        path.write_text("these are not weights\n")
    elif kind == "random-dict":
        torch.save({"conv.weight": torch.zeros(3, 3)}, path)
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "pickled-object":
        torch.save({"architecture": NotAWeight()}, path)
    with pytest.raises(ModelWeightsError, match=r"not a (readable|CochleaToolkit) 3D-detector weight file") as info:
        load_detector_weights(path)
    assert str(path) in str(info.value)


def test_weights_of_another_architecture_version_are_refused(tmp_path):
    path = save_detector_weights(_tiny_networks(), {"coarse": STAGE, "fine": FINE}, tmp_path / "w.pt", source={})
    payload = torch.load(path, weights_only=True)
    payload["architecture_version"] = 99
    torch.save(payload, path)
    with pytest.raises(ModelWeightsError, match="version 99"):
        load_detector_weights(path)


def test_a_missing_local_pass_is_refused(tmp_path):
    nets = _tiny_networks()
    path = save_detector_weights({"coarse": nets["coarse"]}, {"coarse": STAGE}, tmp_path / "w.pt", source={})
    with pytest.raises(ModelWeightsError, match="lacks the fine pass"):
        load_detector_weights(path)
    path = save_detector_weights({"fine": nets["fine"]}, {"fine": FINE}, tmp_path / "w2.pt", source={})
    with pytest.raises(ModelWeightsError, match="coarse"):
        load_detector_weights(path)


def test_a_state_dict_that_does_not_match_its_geometry_is_refused(tmp_path):
    nets = _tiny_networks()
    wrong = StageGeometry(**{**FINE.to_dict(), "channels": tuple(FINE.channels), "widths": (8, 8, 8)})
    path = save_detector_weights(nets, {"coarse": STAGE, "fine": wrong}, tmp_path / "w.pt", source={})
    with pytest.raises(ModelWeightsError, match="fine pass .* does not match"):
        load_detector_weights(path)


# --- training run ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(phantom_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("detector_training")
    cfg = DetectorTrainingConfig(model_id="detector-test", steps={"coarse": 2, "fine": 2}, batch_size=2,
                                 val_cubes=2, eval_every=1, device="cpu", threads=1)
    return train_detector(phantom_dir, out, cfg), out


def test_train_detector_writes_weights_registry_entry_and_history(trained):
    result, out = trained
    model, entry_path, history = out / "detector-test.pt", out / "detector-test.json", out / "history.csv"
    assert result["model"] == model and result["entry"] == entry_path and result["history"] == history
    entry = ModelEntry.from_dict(json.loads(entry_path.read_text()))
    assert entry.format == DETECTOR_FORMAT == "cochlea-detector-pt"
    assert entry.id == "detector-test" and entry.file == "detector-test.pt"
    assert entry.sha256 == sha256_file(model)
    assert entry.input["patch"] == [STAGES["coarse"].size, STAGES["fine"].size]
    assert entry.input["spacing_mm"] == [STAGES["coarse"].spacing_mm, STAGES["fine"].spacing_mm]
    with open(history, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == HISTORY_FIELDS
    assert [(r["stage"], r["step"]) for r in rows] == [("coarse", "1"), ("coarse", "2"), ("fine", "1"), ("fine", "2")]
    networks, geometries, source = load_detector_weights(model)
    assert set(networks) == {"coarse", "fine"} and geometries == {"coarse": STAGES["coarse"], "fine": STAGES["fine"]}
    cases = source["cases"]["local"]
    assert sorted(cases["train"] + cases["validation"]) == ["phantom_ct_00001", "phantom_ct_00002"]
    assert len(cases["validation"]) == 1
    assert set(source["validation"]) == {"coarse", "fine"}
    assert all("best_error_mm" in v for v in source["validation"].values())


def test_the_global_pass_needs_head_volumes(tmp_path):
    cfg = DetectorTrainingConfig(stages=("coarse", "fine", "global"), device="cpu")
    with pytest.raises(InvalidInputError, match="--heads"):
        train_detector(tmp_path / "no-such-folder", tmp_path / "out", cfg)
    assert not (tmp_path / "out").exists()


def test_a_global_pass_trained_on_heads_joins_the_passes_of_a_base_detector(trained, heads_dir, tmp_path):
    result, _ = trained
    cfg = DetectorTrainingConfig(model_id="detector-heads", stages=("global",), steps={"global": 2}, batch_size=2,
                                 val_cubes=2, eval_every=2, device="cpu", threads=1)
    out = train_detector(tmp_path / "unused", tmp_path / "out", cfg, heads=heads_dir, base=result["model"])
    networks, geometries, source = load_detector_weights(out["model"])
    assert set(networks) == {"global", "coarse", "fine"} and geometries["global"] == STAGES["global"]
    assert source["base"]["passes_kept"] == ["coarse", "fine"]
    base_networks, _, _ = load_detector_weights(result["model"])
    for name in ("coarse", "fine"):  # kept bit for bit
        for key, value in base_networks[name].state_dict().items():
            torch.testing.assert_close(networks[name].state_dict()[key], value, rtol=0, atol=0)
    assert sorted(source["cases"]["global"]["train"] + source["cases"]["global"]["validation"]) == \
        ["head_ct_00003", "head_ct_00004"]
    assert ModelEntry.from_dict(json.loads(out["entry"].read_text())).input["passes"] == ["global", "coarse", "fine"]

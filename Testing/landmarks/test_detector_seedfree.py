"""The 3D detector at work: seeded detection through a weight file, seed-free search, and naming the ear's side.

Two stand-in networks make the pipeline's geometry checkable without a trained model:

* a **constant** network (a real :func:`build_network` whose heat is a per-channel constant and whose
  displacement is a constant vector), saved to a weight file: its read-out lands on a cube index we
  choose, so the seeded result must be the seed plus a known step along the cube's L, P, S axes, on any
  input geometry, and the fine pass, the fine-reach fallback and the Modiolus-base anchor rule are
  checked exactly;
* a **marker** network (heat on the voxels clipped at the top of the window, i.e. a tiny very bright
  marker; no displacement): volumes with markers at known RAS positions must give candidates and
  results at those positions, via the global pass (head-size volume) or the tiled coarse pass
  (temporal-bone volume), and none on featureless soft tissue.

The side rule is checked on the phantom generator's own anatomy (both ears of many cases and poses).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from CochleaCommonLib.errors import InputFileError, InvalidInputError, ModelWeightsError
from CochleaCommonLib.geometry import make_ijk_to_ras, rotation_matrix
from CochleaCommonLib.image import Image
from CochleaCommonLib.phantom.anatomy import Scene
from CochleaCommonLib.phantom.params import draw_params
from CochleaLandmarksLib.landmark_dataset import HeadCase, find_head_cases
from CochleaLandmarksLib.landmark_result import LANDMARK_NAMES

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")

from CochleaLandmarksLib.detector_geometry import CLIP_RANGE  # noqa: E402
from CochleaLandmarksLib.detector_inference import FINE_REACH_MM, Detector3D  # noqa: E402
from CochleaLandmarksLib.detector_model import DISPLACEMENT_SCALE, build_network  # noqa: E402
from CochleaLandmarksLib.detector_seedfree import (  # noqa: E402
    SMALL_VOLUME_MM,
    TILE_STEP_MM,
    find_candidates,
    side_of_ear,
)
from CochleaLandmarksLib.detector_stages import COCHLEA_CHANNEL, StageGeometry  # noqa: E402
from CochleaLandmarksLib.detector_weights import save_detector_weights  # noqa: E402
from CochleaLandmarksLib.landmark_detection import detect_cochleae, detect_landmarks, ear_name  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COARSE = StageGeometry("coarse", 24, 0.75, LANDMARK_NAMES, window_radius_mm=8.0, widths=(4, 4, 4))
FINE = StageGeometry("fine", 16, 0.25, LANDMARK_NAMES, window_radius_mm=8.0, widths=(4, 4, 4))
GLOBAL = StageGeometry("global", 48, 2.0, (COCHLEA_CHANNEL,), window_radius_mm=0.0, widths=(4, 4, 4))
LPS = np.diag([-1.0, -1.0, 1.0])  # canonical cube axes: i -> L, j -> P, k -> S
OBLIQUE = rotation_matrix([1.0, 2.0, 3.0], 27.0)
FLIPPED = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # i -> S, j -> A, k -> R (det < 0)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Never read or write the developer's real model cache."""
    monkeypatch.setenv("COCHLEA_TOOLKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("COCHLEA_TOOLKIT_MODEL_DIRS", raising=False)


def _soft_tissue(shape_kji, seed: int = 0) -> np.ndarray:
    """Smooth noise around 40 HU (features about 4 voxels wide): soft tissue with nothing in it."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.normal(size=tuple(max(2, s // 4) for s in shape_kji)).astype(np.float32))
    smooth = torch.nn.functional.interpolate(coarse[None, None], size=tuple(shape_kji), mode="trilinear",
                                             align_corners=True)[0, 0].numpy()
    return (40.0 + 10.0 * smooth).astype(np.float32)


def _volume(direction, spacing, size_mm, seed=0) -> Image:
    spacing = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))
    n = np.round(np.broadcast_to(size_mm, (3,)) / spacing).astype(int)
    m = make_ijk_to_ras(spacing, (0.0, 0.0, 0.0), direction)
    m[:3, 3] = np.array([12.5, -31.0, 47.0]) - m[:3, :3] @ ((n - 1) / 2.0)  # centred on an off-origin point
    return Image(_soft_tissue(tuple(n[::-1]), seed), m)


def _with_markers(image: Image, points_ras) -> tuple[Image, np.ndarray]:
    """``image`` with a tiny, very bright marker on the voxel nearest each point; returns the markers' RAS."""
    array = image.array.copy()
    centres = []
    for p in np.atleast_2d(points_ras):
        i, j, k = image.ras_to_index(p)
        array[k, j, i] = 1e5
        centres.append(image.index_to_ras([i, j, k]))
    return image.with_array(array), np.array(centres)


# --- stand-in networks --------------------------------------------------------------------------------------------
def _constant_network(stage: StageGeometry, heat_logits, target_ijk):
    """A real network with uniform heat ``sigmoid(heat_logits[ch])`` whose read-out lands on cube index ``target_ijk``.

    Uniform heat peaks at cell (0, 0, 0) (the first maximum); cells 0..2 (centres 0, 2, 4) vote with equal
    weights, so their mean centre is 2 and a displacement of ``(target - 2) / DISPLACEMENT_SCALE`` lands on target.
    """
    net = build_network(len(stage.channels), stage.widths)
    shift = (np.asarray(target_ijk, dtype=np.float64) - 2.0) / DISPLACEMENT_SCALE
    with torch.no_grad():
        net.heat.weight.zero_()
        net.heat.bias.copy_(torch.tensor(heat_logits, dtype=torch.float32))
        net.disp.weight.zero_()
        net.disp.bias.copy_(torch.tensor(np.tile(shift, len(stage.channels)), dtype=torch.float32))
    return net.eval()


COARSE_STEP = np.array([2.0, -1.0, 1.0])  # cube voxels from the cube's centre, i, j, k
FINE_STEP = np.array([0.0, 2.0, -2.0])


def _constant_weights(tmp_path, coarse_logits=(4.0, 4.0, 4.0), fine_step=FINE_STEP, name="constant.pt"):
    centre = lambda stage: (stage.size - 1) / 2.0  # noqa: E731
    nets = {"coarse": _constant_network(COARSE, coarse_logits, centre(COARSE) + COARSE_STEP),
            "fine": _constant_network(FINE, (4.0, 4.0, 4.0), centre(FINE) + np.asarray(fine_step))}
    return save_detector_weights(nets, {"coarse": COARSE, "fine": FINE}, tmp_path / name, source={"test": True})


class MarkerNet(torch.nn.Module):
    """Heat peaked on voxels clipped at the top of the window (a tiny, very bright marker); zero displacement.

    The share of marker voxels per cell is smoothed twice (a tent, peaked on the marker), scaled by its local
    maximum (each marker peaks at sigmoid(4)), and given a 1e-4 ramp so no two cells tie, as no two outputs of
    a trained network do.
    """

    def __init__(self, n_landmarks: int) -> None:
        super().__init__()
        self.n_landmarks = n_landmarks

    def forward(self, x):
        F = torch.nn.functional
        hot = (x >= CLIP_RANGE[1] - 1e-3).float()
        s = F.avg_pool3d(F.avg_pool3d(F.avg_pool3d(hot, 2), 3, stride=1, padding=1), 3, stride=1, padding=1)
        s = s * (1.0 + 1e-4 * torch.linspace(0.0, 1.0, s[0, 0].numel()).view(s.shape[2:]))
        top = F.max_pool3d(s, 9, stride=1, padding=4)
        logits = torch.where(top > 0, 8.0 * s / top.clamp_min(1e-12) - 4.0, torch.full_like(s, -4.0))
        n, _, d, h, w = logits.shape
        return logits.expand(n, self.n_landmarks, d, h, w).contiguous(), torch.zeros(n, self.n_landmarks, 3, d, h, w)


def _marker_detector(with_global: bool = True) -> Detector3D:
    networks = {"coarse": MarkerNet(3), "fine": MarkerNet(3)}
    stages = {"coarse": COARSE, "fine": FINE}
    if with_global:
        networks["global"], stages["global"] = MarkerNet(1), GLOBAL
    return Detector3D("marker", "cpu", networks, stages, 0.0)


# --- seeded detection through a weight file --------------------------------------------------------------------
@pytest.mark.parametrize("direction", [OBLIQUE, FLIPPED], ids=["oblique", "flipped"])
def test_detector_result_is_the_seed_plus_the_read_out_steps_along_the_cube_axes(tmp_path, direction):
    image = _volume(direction, (0.4, 0.45, 0.5), 20.0)
    seed = image.center_ras() + [0.3, -0.2, 0.1]
    weights = _constant_weights(tmp_path)
    result = detect_landmarks(image, seed, method="detector", model=weights, device="cpu")
    expected = seed + LPS @ (COARSE.spacing_mm * COARSE_STEP) + LPS @ (FINE.spacing_mm * FINE_STEP)
    confidence = 1.0 / (1.0 + np.exp(-4.0))
    assert result.method == "detector" and result.mode == "fast" and result.device == "cpu"
    assert result.model_id == str(weights)
    np.testing.assert_allclose(result.seed_ras, seed)
    assert result.found_names == list(LANDMARK_NAMES) and result.missing_reasons == {}
    for name in LANDMARK_NAMES:
        np.testing.assert_allclose(result.positions_ras[name], expected, atol=1e-5)
        assert result.confidences[name] == pytest.approx(confidence, abs=1e-6)
    assert result.patches == 0 and result.search_box_mm == pytest.approx(COARSE.field_of_view_mm)
    assert result.side is None and not result.seed_free
    assert {"load_model", "coarse", "fine", "total"} <= set(result.timings)
    # probability maps: one per landmark, on the input's own lattice, holding the coarse heat
    assert set(result.probability_maps) == set(LANDMARK_NAMES)
    for prob in result.probability_maps.values():
        np.testing.assert_allclose(prob.spacing, image.spacing, atol=1e-9)
        np.testing.assert_allclose(prob.direction, image.direction, atol=1e-9)
        origin_index = image.ras_to_continuous_index(prob.origin)
        np.testing.assert_allclose(origin_index, np.round(origin_index), atol=1e-6)  # voxels coincide
        assert prob.array.dtype == np.float32 and prob.array.min() >= 0.0 and prob.array.max() <= 1.0
        assert float(prob.value_at(seed)[0]) == pytest.approx(confidence, abs=1e-4)


def test_a_fine_answer_beyond_its_reach_falls_back_to_the_coarse_point(tmp_path):
    image = _volume(OBLIQUE, 0.4, 20.0)
    seed = image.center_ras()
    far = np.array([4.0 * FINE_REACH_MM / FINE.spacing_mm, 0.0, 0.0])  # 12 mm along i: beyond the fine reach
    weights = _constant_weights(tmp_path, fine_step=far)
    result = detect_landmarks(image, seed, method="detector", model=weights, device="cpu", output_maps=False)
    coarse = seed + LPS @ (COARSE.spacing_mm * COARSE_STEP)
    for name in LANDMARK_NAMES:
        np.testing.assert_allclose(result.positions_ras[name], coarse, atol=1e-5)
        assert result.confidences[name] == pytest.approx(0.5 / (1.0 + np.exp(-4.0)), abs=1e-6)
    assert result.probability_maps == {}


def test_a_landmark_below_threshold_is_missing_with_its_reason(tmp_path):
    image = _volume(OBLIQUE, 0.4, 20.0)
    weights = _constant_weights(tmp_path, coarse_logits=(4.0, 4.0, -4.0))
    result = detect_landmarks(image, image.center_ras(), method="detector", model=weights, device="cpu",
                              output_maps=False)
    assert result.positions_ras["Round Window"] is None
    assert result.found_names == ["Helicotrema", "Modiolus base"]
    assert "Round Window" in result.missing_reasons and "0.02" in result.missing_reasons["Round Window"]


def test_without_the_modiolus_base_nothing_is_trusted(tmp_path):
    image = _volume(OBLIQUE, 0.4, 20.0)
    weights = _constant_weights(tmp_path, coarse_logits=(4.0, -4.0, 4.0))
    with pytest.raises(InvalidInputError, match="No cochlea found within"):
        detect_landmarks(image, image.center_ras(), method="detector", model=weights, device="cpu")


def test_the_detector_has_no_parity_mode(tmp_path):
    image = _volume(OBLIQUE, 0.4, 20.0)
    with pytest.raises(InvalidInputError, match="no parity mode"):  # refused before any model is looked for
        detect_landmarks(image, image.center_ras(), method="detector", mode="parity",
                         model=tmp_path / "does-not-exist.pt")


def test_a_foreign_weight_file_is_refused_by_the_detector_method(tmp_path):
    image = _volume(OBLIQUE, 0.4, 20.0)
    path = tmp_path / "other.pt"
    torch.save({"conv1.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ModelWeightsError, match="not a CochleaToolkit 3D-detector weight file"):
        detect_landmarks(image, image.center_ras(), method="detector", model=path, device="cpu")


# --- seed-free search --------------------------------------------------------------------------------------------
def test_tiled_search_of_a_temporal_bone_volume_finds_the_marker():
    image, (marker,) = _with_markers(_volume(FLIPPED, 0.5, 40.0), [[20.0, -27.0, 40.0]])
    lo, hi = image.world_bounds()
    assert np.all(hi - lo <= SMALL_VOLUME_MM)
    candidates, info = find_candidates(image, _marker_detector(with_global=False))
    assert info["how"] == "tiled coarse pass"
    assert info["tiles"] == int(np.prod(np.ceil((hi - lo) / TILE_STEP_MM)))
    assert len(candidates) == 1
    np.testing.assert_allclose(candidates[0][0], marker, atol=1.0)
    assert candidates[0][1] > 0.9


def test_global_search_of_a_head_finds_both_markers():
    image, markers = _with_markers(_volume(OBLIQUE, 1.0, (110.0, 90.0, 70.0)), [[45.5, -30.0, 52.0],
                                                                                [-20.5, -32.0, 43.0]])
    candidates, info = find_candidates(image, _marker_detector())
    assert info["how"] == "global pass at 2 mm" and info["heat"].array.ndim == 3
    assert len(candidates) == 2
    found = np.array([c[0] for c in candidates])
    order = np.argsort(found[:, 0])[::-1]
    np.testing.assert_allclose(found[order], markers, atol=2.5)


def test_a_head_without_a_global_pass_is_a_clear_error():
    image = _volume(OBLIQUE, 1.0, (110.0, 90.0, 70.0))
    with pytest.raises(ModelWeightsError, match="no global pass"):
        detect_cochleae(image, detector=_marker_detector(with_global=False))


def test_detect_cochleae_names_two_ears_by_their_position():
    image, markers = _with_markers(_volume(OBLIQUE, 1.0, (110.0, 90.0, 70.0)), [[-20.5, -32.0, 43.0],
                                                                                [45.5, -30.0, 52.0]])
    results = detect_cochleae(image, detector=_marker_detector(), output_maps=False)
    assert [r.side for r in results] == ["right", "left"]
    assert all(r.seed_free for r in results)
    assert [ear_name(r) for r in results] == ["Landmarks right", "Landmarks left"]
    np.testing.assert_allclose(results[0].positions_ras["Modiolus base"], markers[1], atol=0.6)
    np.testing.assert_allclose(results[1].positions_ras["Modiolus base"], markers[0], atol=0.6)


def test_detect_cochleae_on_a_temporal_bone_volume_finds_the_one_ear():
    image, (marker,) = _with_markers(_volume(FLIPPED, 0.5, 40.0), [[8.0, -36.0, 52.0]])
    (result,) = detect_cochleae(image, detector=_marker_detector(with_global=False), output_maps=False)
    np.testing.assert_allclose(result.positions_ras["Modiolus base"], marker, atol=0.6)
    assert result.seed_free and result.side is None  # the three stand-in landmarks coincide: no triangle


@pytest.mark.parametrize("size_mm", [40.0, (110.0, 90.0, 70.0)], ids=["temporal-bone", "head"])
def test_featureless_soft_tissue_has_no_cochlea(size_mm):
    image = _volume(OBLIQUE, 0.5 if size_mm == 40.0 else 1.0, size_mm, seed=7)
    with pytest.raises(InvalidInputError, match="No cochlea found in the volume"):
        detect_cochleae(image, detector=_marker_detector(), output_maps=False)


# --- the ear's side ------------------------------------------------------------------------------------------------
OTHER_SIDE = {"left": "right", "right": "left"}


@pytest.fixture(scope="module")
def phantom_ears():
    """(side, landmarks) of both ears of phantom cases in their drawn pose and posed 30 deg about several axes,
    including the axis that tilts the landmark triangle's normal furthest from superior."""
    rng = np.random.default_rng(0)
    ears = []
    for seed in [*range(12), 32]:  # seed 32 has the most tilted cochlea of the first 40
        p = draw_params("ct", seed)
        scene = Scene(p)
        lm = scene.ear.cochlea.landmarks()
        apex, rw = lm["Helicotrema"] - lm["Modiolus base"], lm["Round Window"] - lm["Modiolus base"]
        worst = np.cross(scene.ear.R @ np.cross(apex, rw), [0.0, 0.0, 1.0])  # tilts the unmirrored ear's normal
        axes = [worst, -worst, *rng.normal(size=(3, 3))]
        poses = [p] + [dataclasses.replace(p, pose_angle_deg=30.0, pose_axis=tuple(a / np.linalg.norm(a)))
                       for a in axes]
        for q in poses:
            posed = Scene(q, ear=scene.ear)
            ears.append((p.side, posed.landmarks_world(False)))
            ears.append((OTHER_SIDE[p.side], posed.landmarks_world(True)))
    return ears


def test_side_of_every_phantom_ear_in_every_pose(phantom_ears):
    assert {side for side, _ in phantom_ears} == {"left", "right"}
    wrong = [(side, side_of_ear(lm)) for side, lm in phantom_ears if side_of_ear(lm) != side]
    assert not wrong, f"{len(wrong)} of {len(phantom_ears)} ears named wrongly"


def test_a_mirrored_ear_is_the_other_side(phantom_ears):
    mirror = np.array([-1.0, 1.0, 1.0])
    for side, lm in phantom_ears[:40]:
        assert side_of_ear({k: v * mirror for k, v in lm.items()}) == OTHER_SIDE[side]


def test_side_needs_all_three_landmarks(phantom_ears):
    _, lm = phantom_ears[0]
    for name in LANDMARK_NAMES:
        assert side_of_ear({**lm, name: None}) is None
        assert side_of_ear({k: v for k, v in lm.items() if k != name}) is None


# --- head-case folders -----------------------------------------------------------------------------------------------
def test_find_head_cases_pairs_volumes_with_one_landmark_file_per_side(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b" / "deeper"
    a.mkdir()
    b.mkdir(parents=True)
    for path in (a / "X.nrrd", a / "X_left_landmarks.fcsv", a / "X_right_landmarks.mrk.json",
                 b / "Y.nii.gz", b / "Y_right_landmarks.fcsv",
                 tmp_path / "Z.nrrd", tmp_path / "Z_landmarks.fcsv",  # a single-ear case: not a head
                 tmp_path / "W.mha", tmp_path / "W_left.fcsv"):  # not the naming rule
        path.write_text("")
    cases = find_head_cases(tmp_path)
    assert cases == [
        HeadCase("X", a / "X.nrrd", (a / "X_left_landmarks.fcsv", a / "X_right_landmarks.mrk.json"), ("left", "right")),
        HeadCase("Y", b / "Y.nii.gz", (b / "Y_right_landmarks.fcsv",), ("right",)),
    ]


def test_find_head_cases_states_the_naming_rule_when_nothing_matches(tmp_path):
    (tmp_path / "Z.nrrd").write_text("")
    (tmp_path / "Z_landmarks.fcsv").write_text("")
    with pytest.raises(InputFileError, match="X_left_landmarks.fcsv") as info:
        find_head_cases(tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(InputFileError, match="does not exist"):
        find_head_cases(tmp_path / "missing")

"""CochleaLandmarksLogic with the 3D detector on a real MRML scene: seeded, seed-free, options, training.

Why these tests and where the network is real:

* The Logic's contract (which nodes, named how, refilled by re-runs, nothing left behind on an
  error, files per ear) is checked with deterministic stand-ins: ``detector_maps`` (one seeded
  detection) or ``detect_cochleae`` (the seed-free search) is replaced by code that "finds" planted
  landmarks. Everything else (input checks, ``detect_landmarks``, the mapping of maps onto the CT's
  lattice, ``write_landmark_outputs``, slicer_io) is the real code. What is tested there is the
  Slicer layer, not the network's accuracy (that is the module self-test's job, on the phantom,
  with the bundled ``detector-phantom`` weights).
* A tiny detector trained for two steps on two phantom cases (a real ``.pt`` file) is loaded
  through the Logic for real, runs for real seeded, and runs for real seed-free on a featureless
  volume, where the only right answer is the clean "No cochlea found in the volume" error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core wheel not installed (pip install -e '.[test]')")
vtk = pytest.importorskip("vtk")
import slicer_harness  # noqa: E402,F401  (after the importorskip above)
from landmarks_scene import LANDMARKS, load_landmarks_module  # noqa: E402
from landmarks_scene import node_ids as _node_ids  # noqa: E402
from landmarks_scene import rows as _rows  # noqa: E402
from landmarks_scene import seeds as _seeds  # noqa: E402
from landmarks_scene import world as _world  # noqa: E402

pytestmark = pytest.mark.mrml

#: Planted landmarks of the right ear (world RAS, mm); the left ear is its mirror image 10 mm to the left.
RIGHT_EAR = {"Helicotrema": np.array([6.0, 2.0, 3.0]), "Modiolus base": np.array([4.0, -1.0, 0.0]),
             "Round Window": np.array([7.5, -3.0, -1.5])}
LEFT_EAR = {k: v * [-1.0, 1.0, 1.0] for k, v in RIGHT_EAR.items()}

try:  # the tests share two CPU cores with everything else
    import torch

    torch.set_num_threads(1)
except ImportError:
    torch = None


@pytest.fixture(scope="module")
def module():
    """The CochleaLandmarks Python module, loaded as Slicer loads it (CochleaCommon first)."""
    return load_landmarks_module()

@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory) -> Path:
    """A real detector weight file: both local passes trained for two steps on two small phantom cases."""
    if torch is None:
        pytest.skip("PyTorch is not installed")
    from CochleaCommonLib.phantom import generate_case
    from CochleaLandmarksLib.detector_training import DetectorTrainingConfig, train_detector

    root = tmp_path_factory.mktemp("tiny-detector")
    data = root / "data"
    for seed in (5, 6):
        generate_case("ct", seed, spacing=0.4, fov_mm=30).write(data)
    config = DetectorTrainingConfig(model_id="detector-tiny", steps={"coarse": 2, "fine": 2}, batch_size=2,
                                    val_cubes=2, eval_every=1, threads=1)
    return Path(train_detector(data, root / "out", config)["model"])


def _volume(name: str = "CT", array=None):
    """70 x 60 x 50 voxels of 0.4 mm with CT-like noise, centred near the origin (no cochlea in it)."""
    if array is None:
        array = np.random.default_rng(0).normal(300.0, 400.0, size=(50, 60, 70)).astype(np.int16)
    node = slicer.util.addVolumeFromArray(array, name=name)
    node.SetSpacing(0.4, 0.4, 0.4)
    node.SetOrigin(-14.0, -12.0, -10.0)
    return node


def _blob_maps(centre: np.ndarray, truth: dict, box_mm: float = 12.0) -> dict:
    """Gaussian "probability maps" on a 0.5 mm grid around ``centre``, peaked on each landmark."""
    from CochleaCommonLib.image import Image

    spacing = 0.5
    n = int(round(box_mm / spacing)) + 1
    origin = np.asarray(centre, dtype=float) - box_mm / 2.0
    grid = Image.from_geometry(np.zeros((n, n, n), dtype=np.float32), (spacing,) * 3, origin)
    i, j, k = np.meshgrid(*(np.arange(n) * spacing for _ in range(3)), indexing="ij")
    ras = np.stack([i, j, k], axis=-1).transpose(2, 1, 0, 3) + origin  # KJI order
    return {name: grid.with_array(np.exp(-np.sum((ras - p) ** 2, axis=-1) / (2 * 0.8**2)).astype(np.float32))
            for name, p in truth.items()}


class FakeDetector:
    """Stands in for the 3D detector's network: loads nothing, records what it was asked."""

    def __init__(self) -> None:
        self.loads: list = []
        self.seeds: list = []

    def load_detector(self, method="smicnet", model=None, *, device="auto", registry=None, allow_download=False,
                      progress=None):
        from CochleaLandmarksLib.detector_inference import Detector3D

        self.loads.append((method, model, device))
        return Detector3D(str(model), "cpu", networks={}, stages={}, load_seconds=0.01)

    def detector_maps(self, image, seed_ras, detector, *, progress, window=None):
        """Finds whichever planted ear lies within 15 mm of the seed, like the coarse cube would."""
        self.seeds.append(np.asarray(seed_ras, dtype=float))
        progress.update(0.5, "Coarse pass")
        truth = RIGHT_EAR if np.linalg.norm(seed_ras - RIGHT_EAR["Modiolus base"]) < 15.0 else LEFT_EAR
        maps = _blob_maps(seed_ras, truth)
        found = {name: (p.copy(), 0.91) for name, p in truth.items()}
        return {"maps": maps, "found": found, "patches": 0, "timings": {"sample": 0.01, "coarse": 0.1, "fine": 0.05},
                "box_mm": 30.0, "notes": [], "thresholds": 0.3, "reasons": {}}


@pytest.fixture
def fake(monkeypatch, module) -> FakeDetector:
    from CochleaLandmarksLib import landmark_detection

    stand_in = FakeDetector()
    monkeypatch.setattr(landmark_detection, "load_detector", stand_in.load_detector)
    monkeypatch.setattr(landmark_detection, "detector_maps", stand_in.detector_maps)
    return stand_in


def _ear_result(side, truth: dict, seed_free: bool = True, maps: bool = True):
    """A ``LandmarkResult`` as ``detect_cochleae`` returns it for one ear."""
    from CochleaLandmarksLib.landmark_result import LandmarkResult

    centre = truth["Modiolus base"]
    return LandmarkResult(
        method="detector", mode="fast", model_id="detector-phantom", device="cpu", seed_ras=centre.copy(),
        positions_ras={k: v.copy() for k, v in truth.items()}, confidences={k: 0.88 for k in truth},
        probability_maps=_blob_maps(centre, truth) if maps else {},
        timings={"find_candidates": 0.2, "coarse": 0.1, "fine": 0.05, "total": 0.4}, search_box_mm=30.0,
        side=side, seed_free=seed_free)


@pytest.fixture
def both_ears(monkeypatch, fake):
    """``detect_cochleae`` replaced: it "finds" the planted ears listed in ``found`` (right first)."""
    from CochleaCommonLib.errors import InvalidInputError
    from CochleaLandmarksLib import landmark_detection

    state = {"found": ["right", "left"], "calls": []}

    def detect_cochleae(image, *, model=None, detector=None, device="auto", registry=None, allow_download=False,
                        output_maps=True, progress=None):
        state["calls"].append({"detector": detector, "output_maps": output_maps})
        progress.update(0.5, "Searching the volume with the coarse pass")
        if not state["found"]:
            raise InvalidInputError("No cochlea found in the volume (tiled coarse pass, 0 candidate region(s) "
                                    "checked, none confirmed by the local passes).")
        ears = {"right": RIGHT_EAR, "left": LEFT_EAR, None: RIGHT_EAR}
        return [_ear_result(side, ears[side], maps=output_maps) for side in state["found"]]

    monkeypatch.setattr(landmark_detection, "detect_cochleae", detect_cochleae)
    return state


# --- the module and the core agree --------------------------------------------------------------------
def test_detector_choices_match_the_core(module) -> None:
    from CochleaLandmarksLib import detector_training, detector_weights, landmark_detection

    assert module.MODEL_TASKS["detector"] == detector_weights.TASK
    assert module.CochleaLandmarksLogic.defaultModel("detector") == landmark_detection.DEFAULT_MODELS["detector"]
    defaults = detector_training.DetectorTrainingConfig().steps
    assert module.DEFAULT_DETECTOR_TRAIN_STEPS == defaults["coarse"] == defaults["fine"]
    assert set(module.METHOD_LABELS) == set(module.METHODS)
    parameters = module.CochleaLandmarksLogic().getParameterNode()
    assert (parameters.detectBothEars, parameters.trainMethod, parameters.trainSteps) == (False, "smicnet", 1500)


# --- seeded ------------------------------------------------------------------------------------------------
def test_detector_seeded_with_a_model_file(module, tiny_detector: Path, monkeypatch) -> None:
    """A weights file chosen for the detector: loaded for real, the detection's nodes as for SMICNet."""
    from CochleaLandmarksLib import landmark_detection
    from CochleaLandmarksLib.detector_inference import Detector3D

    fake = FakeDetector()  # the real loader reads the tiny file; only the passes are stood in for
    monkeypatch.setattr(landmark_detection, "detector_maps", fake.detector_maps)
    logic = module.CochleaLandmarksLogic()
    volume = _volume("Patient 2 CT")
    seeds = _seeds(("Cochlea seed-1", (4.5, -0.5, 0.5)))
    reports = []
    output = logic.process(volume, seeds, method="detector", model=str(tiny_detector), device="cpu",
                           progressCallback=lambda f, m: reports.append(f))

    assert isinstance(logic._detector, Detector3D) and logic._detector.method == "detector"
    assert set(logic._detector.networks) == {"coarse", "fine"} and not logic._detector.seed_free
    assert reports[-1] == 1.0 and reports == sorted(reports)
    assert len(fake.seeds) == 1 and np.allclose(fake.seeds[0], (4.5, -0.5, 0.5))
    landmarks = output.landmarks
    assert landmarks.GetName() == "Patient 2 CT landmarks" and not output.seedFree
    for n, name in enumerate(LANDMARKS):
        assert landmarks.GetNthControlPointLabel(n) == name
        assert np.allclose(_world(landmarks, n), RIGHT_EAR[name], atol=1e-6)
        assert landmarks.GetNthControlPointDescription(n) == "detector confidence 0.910"
    assert sorted(output.probabilityVolumes) == sorted(LANDMARKS)
    assert output.probabilityVolumes["Round Window"].GetName() == "Patient 2 CT Round Window probability"
    rows = _rows(output.table)
    assert [r[1] for r in rows] == [*LANDMARKS, "Run", "Time"]
    assert rows[3][7] == f"detector, model {tiny_detector}, device cpu, 30.0 mm search cube"
    assert "3 of 3 landmarks found" in output.summary() and "3D detector" in output.summary()
    assert "mode" not in output.summary().splitlines()[0]

    # The same file again: not reloaded. SMICNet's search region is not the detector's: a warning says so.
    again = logic.process(volume, seeds, method="detector", model=str(tiny_detector), device="cpu", roiSizeMm=12.0)
    assert again.landmarks is landmarks
    assert any("applies to SMICNet only" in w for w in again.warnings)


def test_detector_seeded_bundled_weights_on_a_phantom(module) -> None:
    """The bundled detector-phantom for real, through the Logic: three landmarks within 1 mm of the phantom's truth
    (the evaluation gives a p95 below 0.8 mm), one point list named after the volume, world positions."""
    from CochleaCommonLib import slicer_io
    from CochleaCommonLib.model_registry import ModelRegistry
    from CochleaCommonLib.phantom import generate_case

    if ModelRegistry.load().find("detector-phantom") is None:
        pytest.fail("the bundled detector-phantom weights are missing from CochleaCommon/Resources/Models")
    case = generate_case("ct", 4242, spacing=0.35, fov_mm=32.0)
    volume = slicer_io.image_to_volume_node(case.image, "Phantom")
    seeds = _seeds(("S", tuple(case.seed_point.positions_ras[0])))
    output = module.CochleaLandmarksLogic().process(volume, seeds, method="detector", device="cpu",
                                                    createProbabilityMaps=False)
    assert output.landmarks.GetName() == "Phantom landmarks" and output.result.method == "detector"
    assert output.landmarks.GetNumberOfControlPoints() == 3 and output.probabilityVolumes == {}
    for n in range(3):
        label = output.landmarks.GetNthControlPointLabel(n)
        error = float(np.linalg.norm(_world(output.landmarks, n) - case.landmarks.position(label)))
        assert error < 1.0, f"{label}: {error:.2f} mm from the truth"


# --- seed-free -----------------------------------------------------------------------------------------
def test_both_ears_give_one_point_list_per_side(module, both_ears, fake) -> None:
    logic = module.CochleaLandmarksLogic()
    volume = _volume("Head CT")
    unused = _seeds(("S", (100.0, 0.0, 0.0)), name="Unused seed")  # outside the volume: not even checked
    reports = []
    output = logic.process(volume, unused, method="detector", device="cpu", detectBothEars=True,
                           progressCallback=lambda f, m: reports.append((f, m)))

    assert output.seedFree and len(both_ears["calls"]) == 1
    assert both_ears["calls"][0]["detector"] is logic._detector and both_ears["calls"][0]["output_maps"] is True
    assert fake.loads == [("detector", "detector-phantom", "cpu")]
    assert any(m == "Searching the volume with the coarse pass" for _f, m in reports) and reports[-1][0] == 1.0
    names = [d.landmarks.GetName() for d in output.detections]
    assert names == ["Head CT landmarks right", "Head CT landmarks left"]
    assert [d.seedLabel for d in output.detections] == ["right", "left"]
    assert output.detection("left") is output.detections[1] and output.landmarks is output.detections[0].landmarks
    for detection, truth in ((output.detections[0], RIGHT_EAR), (output.detections[1], LEFT_EAR)):
        side = detection.seedLabel
        for n, name in enumerate(LANDMARKS):
            assert np.allclose(_world(detection.landmarks, n), truth[name], atol=1e-6)
            assert detection.probabilityVolumes[name].GetName() == f"Head CT {name} probability {side}"
    rows = _rows(output.table)
    assert output.table.GetName() == "Head CT landmarks table"
    assert [r[0] for r in rows] == ["right"] * 5 + ["left"] * 5
    assert "found without a seed (search centre R 4.0, A -1.0, S 0.0)" in rows[3][7]
    summary = output.summary()
    assert "Head CT landmarks right: 3 of 3 landmarks found" in summary and "found without a seed" in summary
    assert unused.GetNumberOfControlPoints() == 1  # the seed list is left alone
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLMarkupsFiducialNode").GetNumberOfItems() == 3

    # Again: the same nodes are refilled. Then only the left ear: the right ear's nodes go.
    ids = {d.landmarks.GetID() for d in output.detections}
    count = slicer.mrmlScene.GetNumberOfNodes()
    again = logic.process(volume, None, method="detector", device="cpu", detectBothEars=True)
    assert {d.landmarks.GetID() for d in again.detections} == ids and slicer.mrmlScene.GetNumberOfNodes() == count
    assert len(fake.loads) == 1  # the network was loaded once
    both_ears["found"] = ["left"]
    single = logic.process(volume, None, method="detector", device="cpu", detectBothEars=True,
                           createProbabilityMaps=False)
    assert [d.landmarks.GetName() for d in single.detections] == ["Head CT landmarks left"]
    assert single.detection("right") is None and single.detections[0].landmarks.GetID() in ids
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLMarkupsFiducialNode").GetNumberOfItems() == 2  # unused + left
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 1  # the CT only


def test_an_ear_of_unknown_side_is_named_so(module, both_ears, fake) -> None:
    both_ears["found"] = [None]
    output = module.CochleaLandmarksLogic().process(_volume(), None, method="detector", device="cpu",
                                                    detectBothEars=True)
    assert output.landmarks.GetName() == "CT landmarks (side unknown)"
    assert output.probabilityVolumes["Helicotrema"].GetName() == "CT Helicotrema probability (side unknown)"
    assert _rows(output.table)[0][0] == "side unknown"


def test_both_ears_saved_per_side(module, both_ears, fake, tmp_path: Path) -> None:
    from CochleaCommonLib.markups_io import read_markups

    both_ears["found"] = ["right", "left"]
    output = module.CochleaLandmarksLogic().process(_volume("Head 7"), None, method="detector", device="cpu",
                                                    detectBothEars=True, outputDirectory=tmp_path / "out")
    for detection, truth in zip(output.detections, (RIGHT_EAR, LEFT_EAR)):
        folder = tmp_path / "out" / "Head_7" / detection.seedLabel
        assert {p.parent for p in detection.files.values()} == {folder}
        saved = read_markups(folder / "landmarks.mrk.json")
        assert list(saved.labels) == list(LANDMARKS)
        assert np.allclose(saved.position("Round Window"), truth["Round Window"], atol=1e-3)
        report = json.loads((folder / "report.json").read_text())
        assert report["side"] == detection.seedLabel and report["seed_free"] is True
        assert (folder / "probability_Modiolus_base.nrrd").is_file()
    # One ear found alone still goes into its side's folder (the path does not depend on what else was found).
    both_ears["found"] = ["left"]
    single = module.CochleaLandmarksLogic().process(_volume("Head 8"), None, method="detector", device="cpu",
                                                    detectBothEars=True, outputDirectory=tmp_path / "out")
    assert {p.parent for p in single.detections[0].files.values()} == {tmp_path / "out" / "Head_8" / "left"}


def test_no_cochlea_found_leaves_no_node(module, both_ears, fake) -> None:
    from CochleaCommonLib.errors import InvalidInputError

    both_ears["found"] = []
    volume = _volume()
    before = _node_ids()
    with pytest.raises(InvalidInputError, match="No cochlea found in the volume"):
        module.CochleaLandmarksLogic().process(volume, None, method="detector", device="cpu", detectBothEars=True)
    assert _node_ids() == before


def test_featureless_volume_no_cochlea_found_for_real(module, tiny_detector: Path) -> None:
    """The real seed-free search with a real (tiny) network on noise: the clean error, no new node."""
    from CochleaCommonLib.errors import InvalidInputError

    volume = _volume("Noise")
    before = _node_ids()
    with pytest.raises(InvalidInputError, match=r"No cochlea found in the volume \(tiled coarse pass"):
        module.CochleaLandmarksLogic().process(volume, None, method="detector", model=str(tiny_detector),
                                               device="cpu", detectBothEars=True)
    assert _node_ids() == before


# --- options of the other method are refused before any work ---------------------------------------------------
def test_options_of_the_other_method_are_refused(module, fake) -> None:
    from CochleaCommonLib.errors import InvalidInputError

    logic = module.CochleaLandmarksLogic()
    volume, seeds = _volume(), _seeds(("S", (0.5, 0.0, 0.5)))
    mine = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "My landmarks")
    empty = _seeds(name="Empty")
    before = _node_ids()
    with pytest.raises(InvalidInputError, match="The 3D detector has no 'parity' mode"):
        logic.process(volume, seeds, method="detector", mode="parity")
    with pytest.raises(InvalidInputError, match=r"'Detect both ears' \(no seed\) needs the 3D detector"):
        logic.process(volume, None, method="smicnet", detectBothEars=True)
    with pytest.raises(InvalidInputError, match="No point list is selected as 'Seed point'. Select or place one "
                                                "first.$"):
        logic.process(volume, None, method="smicnet")
    with pytest.raises(InvalidInputError, match="No point list is selected as 'Seed point'.*Or choose 'Detect "
                                                r"both ears' \(detectBothEars=True\)"):
        logic.process(volume, None, method="detector")
    with pytest.raises(InvalidInputError, match="has no placed point.*'Detect both ears'"):
        logic.process(volume, empty, method="detector")
    with pytest.raises(InvalidInputError, match="each ear gets its own point list, named by side"):
        logic.process(volume, None, mine, method="detector", detectBothEars=True)
    assert _node_ids() == before and fake.loads == []  # refused before loading any network


def test_gui_parameters_map_to_process_arguments(module, monkeypatch, tmp_path: Path) -> None:
    """What Apply passes: options follow the method; a model of the other method falls back to the default."""
    monkeypatch.setenv("COCHLEA_TOOLKIT_CACHE", str(tmp_path / "cache"))
    logic = module.CochleaLandmarksLogic()
    volume, seeds = _volume(), _seeds(("S", (0.5, 0.0, 0.5)))
    mine = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "My landmarks")
    p = logic.getParameterNode()
    p.inputVolume, p.seedPoints, p.outputLandmarks = volume, seeds, mine
    p.mode, p.roiSizeMm, p.model = "parity", 14.0, "smicnet-published-5"

    smicnet = logic.processArguments(p)
    assert (smicnet["method"], smicnet["mode"], smicnet["roiSizeMm"], smicnet["model"]) == (
        "smicnet", "parity", 14.0, "smicnet-published-5")
    assert smicnet["seedPoints"] is seeds and smicnet["outputLandmarks"] is mine
    assert smicnet["detectBothEars"] is False and smicnet["outputDirectory"] is None
    p.detectBothEars = True  # ticked, but only the detector has it
    assert logic.processArguments(p)["detectBothEars"] is False and not logic.seedFree(p)

    p.method = "detector"
    detector = logic.processArguments(p)
    assert (detector["mode"], detector["roiSizeMm"], detector["model"], detector["detectBothEars"]) == (
        "fast", None, None, True)
    assert detector["seedPoints"] is None and detector["outputLandmarks"] is None
    if logic.processingAvailable:
        assert logic.canProcess(p) == (True, "Find every cochlea in the volume (no seed needed) and detect the "
                                             "landmarks of each ear.")
    p.detectBothEars = False
    p.model = str(tmp_path / "my-detector.pt")  # a file: passed on (loading checks it)
    seeded = logic.processArguments(p)
    assert seeded["seedPoints"] is seeds and seeded["model"] == str(tmp_path / "my-detector.pt")
    p.seedPoints = None
    if logic.processingAvailable:
        assert logic.canProcess(p) == (False, "Place a seed point on the cochlea (one per ear), or tick 'Detect "
                                              "both ears'.")


def test_model_list_follows_the_method(module, monkeypatch, tmp_path: Path) -> None:
    from CochleaCommonLib.model_registry import ModelEntry, register_user_model

    monkeypatch.setenv("COCHLEA_TOOLKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COCHLEA_TOOLKIT_MODEL_DIRS", "")
    logic = module.CochleaLandmarksLogic()
    models = logic.availableModels("detector")
    assert models[0][0] == "detector-phantom" and "(default)" in models[0][1]
    assert not any(model.startswith("smicnet") for model, _label in models)
    assert not any(model.startswith("detector") for model, _label in logic.availableModels("smicnet"))
    entry = ModelEntry(id="detector-ours", version="1.0", task="landmarks-detector", input={}, file="detector-ours.pt",
                       sha256="0" * 64, source="test", license="Apache-2.0", format="cochlea-detector-pt")
    register_user_model(entry, tmp_path / "cache" / "user-models.json")
    assert dict(logic.availableModels("detector"))["detector-ours"] == "detector-ours (trained here) (missing)"
    assert logic.modelMatchesMethod("detector-ours", "detector")
    assert not logic.modelMatchesMethod("detector-ours", "smicnet")
    assert not logic.modelMatchesMethod("smicnet-published-5", "detector")


# --- training ----------------------------------------------------------------------------------------------
def test_train_detector_checks_its_inputs_before_training(module, tmp_path: Path) -> None:
    from CochleaCommonLib.errors import InvalidInputError

    logic = module.CochleaLandmarksLogic()
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(InvalidInputError, match="Unknown landmark method 'magic'"):
        logic.train(data, tmp_path / "out", "x", method="magic")
    with pytest.raises(InvalidInputError, match="steps per pass, not epochs"):
        logic.train(data, tmp_path / "out", "detector-ours", 5, method="detector")
    with pytest.raises(InvalidInputError, match="steps per pass must be a whole number from 1 to 100000"):
        logic.train(data, tmp_path / "out", "detector-ours", method="detector", steps=0)
    with pytest.raises(InvalidInputError, match="model id 'Our Detector' may only use lower-case"):
        logic.train(data, tmp_path / "out", "Our Detector", method="detector")
    with pytest.raises(InvalidInputError, match="heads folder .* does not exist"):
        logic.train(data, tmp_path / "out", "detector-ours", method="detector", headsDirectory=tmp_path / "nowhere")
    with pytest.raises(InvalidInputError, match="apply to the 3D detector"):
        logic.train(data, tmp_path / "out", "smicnet-ours", 5, steps=100)
    with pytest.raises(InvalidInputError, match="Unknown compute device 'gpu9'"):
        logic.train(data, tmp_path / "out", "detector-ours", method="detector", device="gpu9")
    assert not (tmp_path / "out").exists()


def test_train_detector_calls_the_core_and_registers(module, monkeypatch, tmp_path: Path) -> None:
    from CochleaCommonLib.model_registry import ModelEntry, ModelRegistry
    from CochleaLandmarksLib import detector_training

    if torch is None:
        pytest.skip("PyTorch is not installed")
    monkeypatch.setenv("COCHLEA_TOOLKIT_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_train(data, out_dir, config, *, heads=None, base=None, progress=None):
        calls.append((data, out_dir, config, heads))
        progress.update(0.5, "Training the coarse pass: step 1 of 2")
        out_dir.mkdir(parents=True, exist_ok=True)
        model = out_dir / f"{config.model_id}.pt"
        model.write_bytes(b"weights")
        entry = ModelEntry(id=config.model_id, version="1.0", task="landmarks-detector", input={}, file=model.name,
                           sha256="0" * 64, source="test", license="Apache-2.0", format="cochlea-detector-pt")
        record = {"validation": {"coarse": {"best_error_mm": 1.234}, "fine": {"best_error_mm": 0.456}}}
        return {"model": model, "entry": out_dir / f"{config.model_id}.json", "entry_obj": entry,
                "history": out_dir / "history.csv", "record": record}

    monkeypatch.setattr(detector_training, "train_detector", fake_train)
    data, heads = tmp_path / "data", tmp_path / "heads"
    data.mkdir()
    heads.mkdir()
    reports = []
    logic = module.CochleaLandmarksLogic()
    trained = logic.train(data, tmp_path / "out", "detector-ours", device="cpu", method="detector", steps=300,
                          progressCallback=lambda f, m: reports.append(m))
    (got_data, got_out, config, got_heads), = calls
    assert got_data == data and got_out == tmp_path / "out" and got_heads is None
    assert (config.model_id, config.device, config.stages) == ("detector-ours", "cpu", ("coarse", "fine"))
    assert config.steps == {"coarse": 300, "fine": 300}
    assert reports == ["Training the coarse pass: step 1 of 2"]
    assert isinstance(trained, module.DetectorTrainingResult) and trained.entry.id == "detector-ours"
    assert trained.registry_path == tmp_path / "cache" / "user-models.json"
    assert "detector-ours" in ModelRegistry.load(trained.registry_path)
    assert dict(logic.availableModels("detector"))["detector-ours"] == "detector-ours (trained here)"
    summary = module.CochleaLandmarksLogic.trainingSummary(trained)
    assert "coarse pass 1.23 mm, fine pass 0.46 mm" in summary and "choose 'detector-ours' as the model" in summary

    calls.clear()
    logic.train(data, tmp_path / "out2", "detector-heads", method="detector", headsDirectory=heads, register=False)
    (_d, _o, config, got_heads), = calls
    assert got_heads == heads and config.stages == ("coarse", "fine", "global")
    assert config.steps == {s: module.DEFAULT_DETECTOR_TRAIN_STEPS for s in ("coarse", "fine", "global")}

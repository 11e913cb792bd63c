"""CochleaLandmarksLogic on a real MRML scene: the nodes a run creates, re-runs, errors and files.

Why a stand-in network here: what these tests check is the Logic's contract (names, world
coordinates under transforms, one point list per seed, re-runs that refill instead of piling up,
nothing left behind on an error or a cancel, files, the model cache), and a real sweep costs
minutes of CPU per run. So the network is replaced by an oracle that "finds" planted landmarks
within the searched cube; everything else (input checks, ``detect_landmarks``, the mapping of the
maps onto the CT's lattice, ``write_landmark_outputs``, slicer_io) is the real code. The real
network runs on a phantom in the module self-test (``CochleaLandmarksTest.test_DetectionOnPhantom``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
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


try:  # the tests share two CPU cores with everything else
    import torch

    torch.set_num_threads(1)
except ImportError:
    torch = None


@pytest.fixture(scope="module")
def module():
    """The CochleaLandmarks Python module, loaded as Slicer loads it (CochleaCommon first)."""
    return load_landmarks_module()

@dataclass
class Oracle:
    """Stands in for the SMICNet sweep: landmarks at ``truth`` (world RAS) are found when inside the cube."""

    truth: dict = field(default_factory=lambda: {"Helicotrema": np.array([1.0, 2.0, 3.0]),
                                                 "Modiolus base": np.array([-1.0, -1.0, 0.0]),
                                                 "Round Window": np.array([2.5, -3.0, -1.5])})
    loads: list = field(default_factory=list)
    sweeps: int = 0
    notes: list = field(default_factory=list)

    def load_detector(self, method="smicnet", model=None, *, device="auto", registry=None, allow_download=False,
                      progress=None):
        from CochleaLandmarksLib.smicnet_detector import LoadedDetector

        self.loads.append((method, model, device, registry, allow_download))
        return LoadedDetector("smicnet", str(model), "cpu", network=None, load_seconds=0.01)

    def smicnet_maps(self, image, seed_ras, detector, *, mode, box_mm, progress):
        from CochleaCommonLib.image import Image

        self.sweeps += 1
        box = float(box_mm or 21.0)
        progress.update(0.5, "Sweeping the patch classifier")
        spacing = 0.5
        n = int(round(box / spacing)) + 1
        origin = np.asarray(seed_ras, dtype=float) - box / 2.0
        grid = Image.from_geometry(np.zeros((n, n, n), dtype=np.float32), (spacing,) * 3, origin)
        i, j, k = np.meshgrid(*(np.arange(n) * spacing for _ in range(3)), indexing="ij")
        ras = np.stack([i, j, k], axis=-1).transpose(2, 1, 0, 3) + origin  # KJI order
        maps, found = {}, {}
        for name in LANDMARKS:
            p = self.truth[name]
            inside = bool(np.all(np.abs(p - seed_ras) <= box / 2.0))
            blob = np.exp(-np.sum((ras - p) ** 2, axis=-1) / (2 * 0.8**2)).astype(np.float32)
            maps[name] = grid.with_array(blob if inside else np.zeros_like(blob))
            found[name] = (p.copy(), 0.97) if inside else (None, 0.0)
        return {"maps": maps, "found": found, "patches": 4321, "box_mm": box, "notes": list(self.notes),
                "timings": {"preprocess": 0.01, "sweep": 0.5, "extract": 0.001}, "thresholds": 0.5}


@pytest.fixture
def oracle(monkeypatch, module) -> Oracle:
    from CochleaLandmarksLib import landmark_detection

    fake = Oracle()
    monkeypatch.setattr(landmark_detection, "load_detector", fake.load_detector)
    monkeypatch.setattr(landmark_detection, "smicnet_maps", fake.smicnet_maps)
    return fake


def _volume(name: str = "CT", transform=None):
    """70 x 60 x 50 voxels of 0.4 mm with CT-like noise, centred near the origin."""
    array = np.random.default_rng(0).normal(300.0, 400.0, size=(50, 60, 70)).astype(np.int16)
    node = slicer.util.addVolumeFromArray(array, name=name)
    node.SetSpacing(0.4, 0.4, 0.4)
    node.SetOrigin(-14.0, -12.0, -10.0)
    if transform is not None:
        node.SetAndObserveTransformNodeID(transform.GetID())
    return node


def _transform(rotate_z: float = 0.0, translate=(0.0, 0.0, 0.0)):
    t = vtk.vtkTransform()
    t.Translate(*translate)
    t.RotateZ(rotate_z)
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Pose")
    node.SetMatrixTransformToParent(t.GetMatrix())
    return node


# --- the module and the core agree --------------------------------------------------------------------
def test_module_choices_match_the_core(module) -> None:
    from CochleaCommonLib.devices import DEVICE_CHOICES
    from CochleaLandmarksLib import detector_weights, landmark_detection, smicnet_detector, smicnet_training

    assert module.METHODS == landmark_detection.METHODS
    assert set(module.MODEL_TASKS) == set(module.METHODS)
    assert module.MODEL_TASKS["detector"] == detector_weights.TASK
    assert module.MODES == landmark_detection.MODES
    assert module.DEFAULT_ROI_MM == smicnet_detector.FAST_BOX_MM
    assert set(module.DEVICES) <= set(DEVICE_CHOICES)
    assert module.MODEL_TASKS["smicnet"] == smicnet_training.TASK
    assert module.CochleaLandmarksLogic.defaultModel() == landmark_detection.DEFAULT_MODELS["smicnet"]
    for method in module.METHODS:
        assert module.CochleaLandmarksLogic.defaultModel(method) == landmark_detection.DEFAULT_MODELS[method]
    parameters = module.CochleaLandmarksLogic().getParameterNode()
    assert parameters.roiSizeMm == module.DEFAULT_ROI_MM
    assert parameters.trainEpochs == smicnet_training.SmicnetTrainingConfig().epochs


# --- one seed: the nodes, in world coordinates ----------------------------------------------------------
def test_one_seed_gives_named_point_list_maps_and_table(module, oracle) -> None:
    from CochleaCommonLib import slicer_io

    logic = module.CochleaLandmarksLogic()
    volume = _volume("Patient 1 CT")
    seeds = _seeds(("Cochlea seed-1", (0.5, 0.0, 0.5)))
    reports = []
    output = logic.process(volume, seeds, device="cpu", progressCallback=lambda f, m: reports.append((f, m)))

    assert reports[-1][0] == 1.0 and [f for f, _ in reports] == sorted(f for f, _ in reports)
    landmarks = output.landmarks
    assert landmarks.GetName() == "Patient 1 CT landmarks"
    assert [landmarks.GetNthControlPointLabel(n) for n in range(3)] == list(LANDMARKS)
    for n, name in enumerate(LANDMARKS):
        assert np.allclose(_world(landmarks, n), oracle.truth[name], atol=1e-6)
        assert not landmarks.GetNthControlPointLocked(n)
        assert "confidence 0.970" in landmarks.GetNthControlPointDescription(n)
    assert output.result.found_names == list(LANDMARKS)

    ct = slicer_io.volume_node_to_image(volume)
    assert sorted(output.probabilityVolumes) == sorted(LANDMARKS)
    for name, node in output.probabilityVolumes.items():
        assert node.GetName() == f"Patient 1 CT {name} probability"
        assert node.GetDisplayNode().GetApplyThreshold()
        image = slicer_io.volume_node_to_image(node)
        relative = np.linalg.inv(ct.ijk_to_ras) @ image.ijk_to_ras
        assert np.allclose(relative[:3, :3], np.eye(3), atol=1e-9)
        assert np.allclose(relative[:3, 3], np.round(relative[:3, 3]), atol=1e-6)  # voxels coincide
        peak = np.unravel_index(np.argmax(image.array), image.array.shape)[::-1]
        assert np.linalg.norm(image.index_to_ras(peak) - oracle.truth[name]) < 0.4

    rows = _rows(output.table)
    assert output.table.GetName() == "Patient 1 CT landmarks table"
    assert [r[1] for r in rows] == [*LANDMARKS, "Run", "Time"]
    for row, name in zip(rows, LANDMARKS):
        assert row[0] == "Cochlea seed-1" and row[2] == "yes" and row[6] == "0.970"
        assert np.allclose([float(v) for v in row[3:6]], oracle.truth[name], atol=0.006)
    assert "4321 patches" in rows[3][7] and "device cpu" in rows[3][7]
    assert rows[4][7].startswith("total ") and "sweep 0.50 s" in rows[4][7]
    assert "Patient 1 CT landmarks: 3 of 3 landmarks found" in output.summary()


def test_results_follow_the_volume_transform(module, oracle) -> None:
    """A rotated, shifted volume: landmarks and maps sit under its transform, at the right world positions."""
    from CochleaCommonLib import slicer_io

    pose = _transform(rotate_z=30.0, translate=(40.0, -10.0, 5.0))
    volume = _volume(transform=pose)
    matrix = vtk.vtkMatrix4x4()
    pose.GetMatrixTransformToWorld(matrix)
    to_world = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    oracle.truth = {k: (to_world @ np.append(v, 1.0))[:3] for k, v in oracle.truth.items()}
    seed_world = (to_world @ np.array([0.5, 0.0, 0.5, 1.0]))[:3]
    output = module.CochleaLandmarksLogic().process(volume, _seeds(("S", seed_world)), device="cpu")

    assert output.landmarks.GetParentTransformNode() is pose
    for n, name in enumerate(LANDMARKS):
        assert np.allclose(_world(output.landmarks, n), oracle.truth[name], atol=1e-6)
    ct = slicer_io.volume_node_to_image(volume)
    for node in output.probabilityVolumes.values():
        assert node.GetParentTransformNode() is pose
        relative = np.linalg.inv(ct.ijk_to_ras) @ slicer_io.volume_node_to_image(node).ijk_to_ras
        assert np.allclose(relative[:3, :3], np.eye(3), atol=1e-9)
        assert np.allclose(relative[:3, 3], np.round(relative[:3, 3]), atol=1e-6)
    # Moving the volume later moves its landmarks with it.
    moved = vtk.vtkMatrix4x4()
    moved.DeepCopy(pose.GetMatrixTransformToParent())
    moved.SetElement(0, 3, moved.GetElement(0, 3) + 7.0)
    pose.SetMatrixTransformToParent(moved)
    assert np.allclose(_world(output.landmarks, 0), oracle.truth["Helicotrema"] + [7.0, 0.0, 0.0], atol=1e-6)


# --- several seeds, re-runs ------------------------------------------------------------------------------
def test_two_ears_give_one_point_list_each_and_reruns_refill_them(module, oracle, monkeypatch) -> None:
    logic = module.CochleaLandmarksLogic()
    volume = _volume("Head CT")
    right = {k: v + [0.0, 0.0, 0.0] for k, v in oracle.truth.items()}
    left = {k: v * [-1.0, 1.0, 1.0] + [-8.0, 0.0, 0.0] for k, v in oracle.truth.items()}
    oracle.truth = right
    seeds = _seeds(("right", (0.5, 0.0, 0.5)), ("left", (-8.5, 0.0, 0.5)))

    # The oracle answers by position, so give it both ears: whichever is in the cube is found.
    def both(image, seed_ras, detector, *, mode, box_mm, progress):
        oracle.truth = right if seed_ras[0] > -4.0 else left
        return Oracle.smicnet_maps(oracle, image, seed_ras, detector, mode=mode, box_mm=box_mm, progress=progress)

    from CochleaLandmarksLib import landmark_detection

    monkeypatch.setattr(landmark_detection, "smicnet_maps", both)
    output = logic.process(volume, seeds, device="cpu", roiSizeMm=12.0)
    names = [d.landmarks.GetName() for d in output.detections]
    assert names == ["Head CT landmarks (right)", "Head CT landmarks (left)"]
    assert output.detections[1].probabilityVolumes["Helicotrema"].GetName() == "Head CT Helicotrema probability (left)"
    assert np.allclose(_world(output.detections[1].landmarks, 0), left["Helicotrema"], atol=1e-6)
    assert [r[0] for r in _rows(output.table)] == ["right"] * 5 + ["left"] * 5
    first_ids = {d.landmarks.GetID() for d in output.detections} | {output.table.GetID()}
    count = slicer.mrmlScene.GetNumberOfNodes()

    again = logic.process(volume, seeds, device="cpu", roiSizeMm=12.0)
    assert {d.landmarks.GetID() for d in again.detections} | {again.table.GetID()} == first_ids
    assert slicer.mrmlScene.GetNumberOfNodes() == count
    assert oracle.loads and len(oracle.loads) == 1  # the network was loaded once

    # One seed left: the other ear's nodes from the previous run are removed, the list is refilled.
    seeds.RemoveNthControlPoint(1)
    single = logic.process(volume, seeds, device="cpu", roiSizeMm=12.0, createProbabilityMaps=False)
    assert single.landmarks.GetName() == "Head CT landmarks"
    assert single.landmarks.GetID() in first_ids
    assert single.probabilityVolumes == {}
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLMarkupsFiducialNode").GetNumberOfItems() == 2  # seeds + result
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 1  # the CT only


def test_output_list_choice(module, oracle) -> None:
    """A user's list is filled (name kept); a list holding another volume's landmarks is left alone."""
    logic = module.CochleaLandmarksLogic()
    first, second = _volume("CT A"), _volume("CT B")
    seeds = _seeds(("S", (0.5, 0.0, 0.5)))
    mine = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "My landmarks")
    output = logic.process(first, seeds, outputLandmarks=mine, device="cpu")
    assert output.landmarks is mine and mine.GetName() == "My landmarks"
    assert mine.GetNumberOfControlPoints() == 3

    before = _world(mine, 0)
    other = logic.process(second, seeds, outputLandmarks=mine, device="cpu")
    assert other.landmarks is not mine and other.landmarks.GetName() == "CT B landmarks"
    assert np.allclose(_world(mine, 0), before)


# --- what is not found, and errors -------------------------------------------------------------------
def test_landmark_not_found_stays_unplaced_with_its_reason(module, oracle) -> None:
    from CochleaCommonLib import slicer_io

    oracle.truth["Round Window"] = np.array([9.0, -3.0, -1.5])  # outside a 12 mm cube around the seed
    output = module.CochleaLandmarksLogic().process(_volume(), _seeds(("S", (0.5, 0.0, 0.5))), device="cpu",
                                                    roiSizeMm=12.0)
    landmarks = output.landmarks
    assert landmarks.GetNumberOfControlPoints() == 3
    assert landmarks.GetNthControlPointLabel(2) == "Round Window"
    assert landmarks.GetNthControlPointPositionStatus(2) == landmarks.PositionMissing
    assert list(slicer_io.point_list_node_to_points(landmarks).labels) == ["Helicotrema", "Modiolus base"]
    row = _rows(output.table)[2]
    assert row[1:4] == ["Round Window", "no", ""] and "within 6.0 mm of the seed" in row[7]
    assert "Round Window not found: no region scored above 0.5" in output.summary()


def test_no_cochlea_near_the_seed_changes_nothing(module, oracle) -> None:
    from CochleaCommonLib.errors import InvalidInputError

    oracle.truth = {k: v + [20.0, 0.0, 0.0] for k, v in oracle.truth.items()}  # out of reach
    volume, seeds = _volume(), _seeds(("S", (-8.0, 0.0, 0.5)))
    before = _node_ids()
    with pytest.raises(InvalidInputError, match=r"No cochlea found within 3\.0 mm of the seed"):
        module.CochleaLandmarksLogic().process(volume, seeds, device="cpu", roiSizeMm=6.0)
    assert _node_ids() == before


def test_one_bad_seed_of_two_names_it_and_changes_nothing(module, oracle) -> None:
    from CochleaCommonLib.errors import InvalidInputError

    volume, seeds = _volume(), _seeds(("right", (0.5, 0.0, 0.5)), ("left", (-12.0, 0.0, 0.5)))
    before = _node_ids()
    with pytest.raises(InvalidInputError, match=r"Seed point 'left': No cochlea found"):
        module.CochleaLandmarksLogic().process(volume, seeds, device="cpu", roiSizeMm=8.0)
    assert _node_ids() == before


def test_cancel_changes_nothing(module, oracle) -> None:
    from CochleaCommonLib.errors import OperationCancelled
    from CochleaCommonLib.progress import CancelToken

    logic = module.CochleaLandmarksLogic()
    volume, seeds = _volume(), _seeds(("S", (0.5, 0.0, 0.5)))
    before = _node_ids()
    with pytest.raises(OperationCancelled):  # the callback asks to stop once the sweep reports
        logic.process(volume, seeds, device="cpu", progressCallback=lambda f, m: m.startswith("Sweeping"))
    assert _node_ids() == before
    token = CancelToken()
    token.cancel()
    with pytest.raises(OperationCancelled):
        logic.process(volume, seeds, device="cpu", cancelToken=token)
    assert _node_ids() == before and oracle.sweeps == 1


def test_warnings_reach_table_and_summary(module, oracle) -> None:
    oracle.notes = ["Metal artefacts were detected."]
    volume = _volume()
    volume.SetSpacing(0.7, 0.7, 0.7)
    volume.SetOrigin(-24.0, -21.0, -17.0)
    output = module.CochleaLandmarksLogic().process(volume, _seeds(("S", (0.5, 0.0, 0.5))), device="cpu")
    notes = [r[7] for r in _rows(output.table) if r[1] == "Warning"]
    assert any("coarser than 0.6 mm" in n for n in notes) and "Metal artefacts were detected." in notes
    assert "Warning: The voxel size is 0.70, 0.70, 0.70 mm" in output.summary()


# --- files -----------------------------------------------------------------------------------------------
def test_results_saved_as_files(module, oracle, tmp_path: Path) -> None:
    from CochleaCommonLib.markups_io import read_markups

    output = module.CochleaLandmarksLogic().process(_volume("CT 1/left"), _seeds(("S", (0.5, 0.0, 0.5))),
                                                    device="cpu", outputDirectory=str(tmp_path / "out"))
    folder = tmp_path / "out" / "CT_1_left"
    files = output.detections[0].files
    assert {p.parent for p in files.values()} == {folder}
    assert sorted(p.name for p in folder.iterdir()) == [
        "landmarks.fcsv", "landmarks.mrk.json", "probability_Helicotrema.nrrd", "probability_Modiolus_base.nrrd",
        "probability_Round_Window.nrrd", "report.json"]
    saved = read_markups(folder / "landmarks.mrk.json")
    assert list(saved.labels) == list(LANDMARKS)
    assert np.allclose(saved.position("Helicotrema"), oracle.truth["Helicotrema"], atol=1e-3)
    assert "# CoordinateSystem = LPS" in (folder / "landmarks.fcsv").read_text()
    assert json.loads((folder / "report.json").read_text())["model"] == "smicnet-phantom"
    assert f"Saved in {folder}" in output.summary()


def test_bad_output_folder_is_refused_before_any_work(module, oracle, tmp_path: Path) -> None:
    from CochleaCommonLib.errors import InvalidInputError

    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    volume, seeds = _volume(), _seeds(("S", (0.5, 0.0, 0.5)))
    before = _node_ids()
    with pytest.raises(InvalidInputError, match="is a file; choose a folder"):
        module.CochleaLandmarksLogic().process(volume, seeds, device="cpu", outputDirectory=a_file)
    assert _node_ids() == before and oracle.sweeps == 0


# --- the network: cache, weights, PyTorch -------------------------------------------------------------------
def test_network_is_loaded_once_per_model_and_device(module, oracle) -> None:
    logic = module.CochleaLandmarksLogic()
    volume, seeds = _volume(), _seeds(("S", (0.5, 0.0, 0.5)))
    for _ in range(3):
        logic.process(volume, seeds, device="cpu", createProbabilityMaps=False)
    assert len(oracle.loads) == 1 and oracle.loads[0][:3] == ("smicnet", "smicnet-phantom", "cpu")
    logic.process(volume, seeds, device="auto", createProbabilityMaps=False)
    logic.process(volume, seeds, model="smicnet-published-5", device="auto", createProbabilityMaps=False)
    assert [load[1:3] for load in oracle.loads] == [("smicnet-phantom", "cpu"), ("smicnet-phantom", "auto"),
                                                   ("smicnet-published-5", "auto")]


def test_missing_weights_are_a_clear_error(module, monkeypatch, tmp_path: Path) -> None:
    """Real loading: an absent file and a registered model whose weights are nowhere."""
    from CochleaCommonLib.errors import InputFileError, ModelWeightsError

    if torch is None:
        pytest.skip("PyTorch is not installed")
    monkeypatch.setenv("COCHLEA_TOOLKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COCHLEA_TOOLKIT_MODEL_DIRS", "")
    logic = module.CochleaLandmarksLogic()
    volume, seeds = _volume(), _seeds(("S", (0.5, 0.0, 0.5)))
    before = _node_ids()
    with pytest.raises(InputFileError, match="The model file .*missing.pt does not exist"):
        logic.process(volume, seeds, model=str(tmp_path / "missing.pt"), device="cpu")
    with pytest.raises(ModelWeightsError, match="The weights of model 'smicnet-published-1' .* were not found"):
        logic.process(volume, seeds, model="smicnet-published-1", device="cpu")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a weights file")
    with pytest.raises(ModelWeightsError):
        logic.process(volume, seeds, model=str(corrupt), device="cpu")
    assert _node_ids() == before
    assert logic.modelDownloadUrl("smicnet-published-1").startswith("https://github.com/HearSys/")
    assert logic.modelDownloadUrl(str(corrupt)) is None


def test_without_pytorch_the_user_is_told_how_to_install_it(module, monkeypatch) -> None:
    from CochleaCommonLib import devices
    from CochleaCommonLib.errors import MissingDependencyError

    logic = module.CochleaLandmarksLogic()
    volume, seeds = _volume(), _seeds(("S", (0.5, 0.0, 0.5)))
    monkeypatch.setattr(devices, "torch_installed", lambda: False)
    assert logic.processingAvailable is False
    parameters = logic.getParameterNode()
    parameters.inputVolume, parameters.seedPoints = volume, seeds
    can, reason = logic.canProcess(parameters)
    assert can is False and reason == module.TORCH_MISSING and "PyTorch Utils" in reason
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now fails
    before = _node_ids()
    with pytest.raises(MissingDependencyError, match="install the 'PyTorch' extension.*'PyTorch Utils'"):
        logic.process(volume, seeds, device="cpu")
    assert _node_ids() == before


def test_model_list_offers_registered_and_trained_models(module, monkeypatch, tmp_path: Path) -> None:
    from CochleaCommonLib.model_registry import ModelEntry, register_user_model

    monkeypatch.setenv("COCHLEA_TOOLKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COCHLEA_TOOLKIT_MODEL_DIRS", "")
    logic = module.CochleaLandmarksLogic()
    models = dict(logic.availableModels("smicnet"))
    assert "smicnet-published-5" in models and "(download needed)" in models["smicnet-published-5"]
    weights = tmp_path / "cache" / "models" / "smicnet-ours-v1.0" / "smicnet-ours.pt"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    entry = ModelEntry(id="smicnet-ours", version="1.0", task="landmarks-smicnet", input={}, file="smicnet-ours.pt",
                       sha256="0" * 64, source="test", license="Apache-2.0", format="smicnet-pt")
    register_user_model(entry, tmp_path / "cache" / "user-models.json")
    models = dict(logic.availableModels("smicnet"))
    assert models["smicnet-ours"] == "smicnet-ours (trained here)"
    assert logic._registryFor("smicnet-ours").path == tmp_path / "cache" / "user-models.json"
    assert logic._registryFor("smicnet-published-5") is None


# --- training ----------------------------------------------------------------------------------------------
def test_train_checks_its_inputs_before_training(module, tmp_path: Path) -> None:
    from CochleaCommonLib.errors import InvalidInputError

    logic = module.CochleaLandmarksLogic()
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(InvalidInputError, match="training data folder .* does not exist"):
        logic.train(tmp_path / "nowhere", tmp_path / "out", "smicnet-ours", 5)
    with pytest.raises(InvalidInputError, match="epochs must be a whole number from 1 to 1000"):
        logic.train(data, tmp_path / "out", "smicnet-ours", 0)
    with pytest.raises(InvalidInputError, match="model id 'Our Model' may only use lower-case"):
        logic.train(data, tmp_path / "out", "Our Model", 5)
    with pytest.raises(InvalidInputError, match="Unknown compute device 'gpu9'"):
        logic.train(data, tmp_path / "out", "smicnet-ours", 5, device="gpu9")
    assert not (tmp_path / "out").exists()


def test_train_calls_the_core_with_the_settings(module, monkeypatch, tmp_path: Path) -> None:
    from CochleaCommonLib.errors import InvalidInputError
    from CochleaLandmarksLib import smicnet_training

    if torch is None:
        pytest.skip("PyTorch is not installed")
    calls = []

    def fake_train(data, out_dir, config, *, progress=None, register=False, registry_path=None):
        calls.append((data, out_dir, config, register))
        progress.update(0.5, "Epoch 1")
        return smicnet_training.SmicnetTrainingResult(
            model_path=Path(out_dir) / "smicnet-ours.pt", entry_path=Path(out_dir) / "smicnet-ours.json",
            entry=type("Entry", (), {"id": config.model_id})(), history_path=Path(out_dir) / "history.csv",
            curves_path=None, history=[], best_epoch=2, epochs_run=3, stopped_early=True,
            val_metrics={"accuracy": 0.9, "f1_macro": 0.8}, train_cases=["a"], val_cases=["b"], validation="by case",
            device="cpu", registry_path=Path("/tmp/user-models.json"))

    monkeypatch.setattr(smicnet_training, "train_smicnet", fake_train)
    data = tmp_path / "data"
    data.mkdir()
    reports = []
    trained = module.CochleaLandmarksLogic().train(data, tmp_path / "out", "smicnet-ours", 3, "cpu",
                                                   progressCallback=lambda f, m: reports.append(m))
    (got_data, got_out, config, register), = calls
    assert got_data == data and got_out == tmp_path / "out" and register is True
    assert (config.epochs, config.device, config.model_id, config.init) == (3, "cpu", "smicnet-ours", None)
    assert reports == ["Epoch 1"]
    # Fine-tuning published weights (the few-shot route) reaches the core as its init; the detector refuses it.
    module.CochleaLandmarksLogic().train(data, tmp_path / "out", "smicnet-ours", 3, "cpu",
                                         initialModel="smicnet-published-5")
    assert calls[-1][2].init == "smicnet-published-5"
    with pytest.raises(InvalidInputError, match="Starting from existing weights applies to SMICNet"):
        module.CochleaLandmarksLogic().train(data, tmp_path / "out", "detector-ours", method="detector",
                                             initialModel="smicnet-published-5")
    summary = module.CochleaLandmarksLogic.trainingSummary(trained)
    assert "Best epoch 2 of 3 (stopped early); validation accuracy 0.900, macro F1 0.800." in summary
    assert "choose 'smicnet-ours' as the model" in summary

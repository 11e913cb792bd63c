"""The Slicer modules, loaded and self-tested headless, as Slicer's SelfTests module runs them.

Why: ``<Module>Test`` is what Slicer's CTest (``slicer_add_python_unittest``) and the SelfTests
module execute inside Slicer; CI has no Slicer application, so the harness
(``Testing/harness``) supplies ``slicer.ScriptedLoadableModule`` & co over a real MRML scene and
these tests run the very same entry point: ``<Module>(parent).runTest()``. The Logic classes are
also tested directly (nodes in, ``CochleaError`` out), and the harness itself is checked: its
file IO shim and the rule that a VTK/MRML error fails the test that caused it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core wheel not installed (pip install -e '.[test]')")
vtk = pytest.importorskip("vtk")
import slicer_harness  # noqa: E402  (after the importorskip above)

pytestmark = pytest.mark.mrml

REPO = Path(__file__).resolve().parents[2]
MODULES = ("CochleaCommon", "CochleaLandmarks", "CochleaSegmentation", "ElectrodeAnnotation")
VISIBLE = MODULES[1:]


@pytest.fixture(scope="module")
def modules() -> dict:
    """Each module loaded like Slicer's module factory does (CochleaCommon first, as a dependency)."""
    return {name: slicer_harness.load_scripted_module(REPO / name / f"{name}.py") for name in MODULES}


# --- module metadata and self-tests -------------------------------------------------------------------
@pytest.mark.parametrize("name", MODULES)
def test_module_description(modules, name: str) -> None:
    parent = modules[name]
    assert parent.title and parent.categories == ["Cochlea"]
    assert parent.hidden is (name == "CochleaCommon")
    assert parent.dependencies == ([] if name == "CochleaCommon" else ["CochleaCommon"])
    assert len(parent.helpText) > 100 and parent.contributors
    assert parent.icon == str(REPO / name / "Resources" / "Icons" / f"{name}.png")
    assert slicer.selfTests[name] == parent.self().runTest


@pytest.mark.parametrize(("name", "citation"), [
    ("CochleaLandmarks", "doi:10.1145/3632047.3632048"),
    ("CochleaLandmarks", "Otol Neurotol 2010;31(5):722-730"),
    ("CochleaSegmentation", "IEEE Trans Biomed Eng 2011;58(9):2625-2632"),
    ("CochleaSegmentation", "Escudé B"),
    ("CochleaSegmentation", "Otol Neurotol 2015;36(5):904-907"),
    ("ElectrodeAnnotation", "doi:10.1007/978-3-319-24571-3_19"),
])
def test_acknowledgement_cites_the_method(modules, name: str, citation: str) -> None:
    assert citation in modules[name].acknowledgementText


@pytest.mark.parametrize("name", MODULES)
def test_self_test_passes(modules, name: str) -> None:
    """Exactly what Slicer's SelfTests runs: ``slicer.selfTests[<Module>]()``."""
    slicer.selfTests[name]()


def test_run_test_without_test_class_fails_clearly(modules, tmp_path: Path) -> None:
    module_file = tmp_path / "NoTestModule.py"
    module_file.write_text(textwrap.dedent("""
        from slicer.ScriptedLoadableModule import *

        class NoTestModule(ScriptedLoadableModule):
            pass
    """), encoding="utf-8")
    parent = slicer_harness.load_scripted_module(module_file)
    with pytest.raises(AssertionError, match="Test case class not found: NoTestModule.NoTestModuleTest"):
        parent.self().runTest()


# --- the Logic classes, directly -------------------------------------------------------------------
def _volume(name: str = "CT", spacing: float = 0.3) -> object:
    node = slicer.util.addVolumeFromArray(np.zeros((20, 30, 40), dtype=np.int16), name=name)
    node.SetSpacing(spacing, spacing, spacing)
    node.SetOrigin(10.0, -5.0, 2.0)
    return node


def _points(name: str, *labelled) -> object:
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    for label, position in labelled:
        node.AddControlPoint(vtk.vtkVector3d(*position), label)
    return node


def _translation(dx: float) -> object:
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Shift")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, dx)
    node.SetMatrixTransformToParent(matrix)
    return node


def test_visible_modules_are_honest_about_processing(modules) -> None:
    """Apply is refused with the same sentence the tooltip shows; nothing pretends to work.

    A module whose processing has landed drops ``PROCESSING_NOT_AVAILABLE`` and is tested in its own
    file (CochleaLandmarks: ``test_cochlea_landmarks_logic.py``).
    """
    for name in VISIBLE:
        pymodule = modules[name].module
        if not hasattr(pymodule, "PROCESSING_NOT_AVAILABLE"):
            continue
        logic = getattr(pymodule, f"{name}Logic")()
        assert logic.processingAvailable is False
        can, reason = logic.canProcess(logic.getParameterNode())
        assert can is False and reason == pymodule.PROCESSING_NOT_AVAILABLE
        assert "not available in this version" in reason


def test_landmarks_logic_checks_inputs_in_world_coordinates(modules) -> None:
    """A volume moved by a transform: the seed must be inside where the volume *is*, not where it was."""
    from CochleaCommonLib.errors import CochleaError, InvalidInputError

    logic = modules["CochleaLandmarks"].module.CochleaLandmarksLogic()
    volume = _volume()
    ct = np.random.default_rng(0).normal(300.0, 400.0, size=(20, 30, 40)).astype(np.int16)  # a CT, not a blank
    slicer.util.updateVolumeFromArray(volume, ct)
    volume.SetAndObserveTransformNodeID(_translation(100.0).GetID())
    with pytest.raises(InvalidInputError, match=r"'S-1' of 'Seed' \(Seed point\) at R=13.0.*outside the volume 'CT'"):
        logic.process(volume, _points("Seed", ("S-1", (13.0, 0.0, 4.0))))  # inside the untransformed volume
    moved = _points("Moved seed", ("S-1", (113.0, 0.0, 4.0)))
    with pytest.raises(CochleaError, match="selected both as the seed point list and as the output"):
        logic.process(volume, moved, outputLandmarks=moved)  # the seed check passed; the next check refuses


def test_landmarks_logic_rejects_missing_volume_and_bad_options(modules) -> None:
    from CochleaCommonLib.errors import InvalidInputError

    logic = modules["CochleaLandmarks"].module.CochleaLandmarksLogic()
    seeds = _points("Seed", ("S-1", (13.0, 0.0, 4.0)))
    with pytest.raises(InvalidInputError, match="No volume is selected as 'Input volume'"):
        logic.process(None, seeds)
    with pytest.raises(InvalidInputError, match="Unknown compute device 'gpu9'"):
        logic.process(_volume(), seeds, device="gpu9")
    with pytest.raises(InvalidInputError, match="The volume 'Empty' has no image data"):
        logic.process(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Empty"), seeds)


def test_segmentation_logic_requires_the_three_named_landmarks(modules) -> None:
    from CochleaCommonLib.errors import InvalidInputError

    logic = modules["CochleaSegmentation"].module.CochleaSegmentationLogic()
    generic = _points("Generic labels", ("F-1", (13.0, 0.0, 4.0)), ("F-2", (14.0, 0.0, 4.0)), ("F-3", (15.0, 0, 4)))
    with pytest.raises(InvalidInputError, match="No point labelled 'Helicotrema'.*Available labels: 'F-1', 'F-2'"):
        logic.process(_volume(), generic)


def test_electrode_logic_rejects_impossible_contact_counts(modules) -> None:
    from CochleaCommonLib.errors import InvalidInputError

    logic = modules["ElectrodeAnnotation"].module.ElectrodeAnnotationLogic()
    for bad in (0, 40, "12", None):
        with pytest.raises(InvalidInputError, match="number of electrode contacts must be a whole number from 1 to 32"):
            logic.process(_volume(), bad)


def test_parameter_node_survives_scene_close(modules) -> None:
    """After File > Close Scene the singleton parameter node is reset to its defaults, as in Slicer."""
    pymodule = modules["CochleaLandmarks"].module
    logic = pymodule.CochleaLandmarksLogic()
    parameters = logic.getParameterNode()
    parameters.roiSizeMm = 33.0
    parameters.inputVolume = _volume()
    slicer.mrmlScene.Clear()
    fresh = logic.getParameterNode()
    assert fresh.roiSizeMm == pymodule.DEFAULT_ROI_MM and fresh.inputVolume is None
    assert fresh.parameterNode.GetAttribute("ModuleName") == "CochleaLandmarks"


# --- the harness itself ------------------------------------------------------------------------------
def test_harness_io_shim_round_trips_real_files(tmp_path: Path) -> None:
    """slicer.util.saveNode/load* work through the shim, with Slicer's own readers and writers."""
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    volume = slicer.util.addVolumeFromArray(array, name="Ramp")
    volume.SetSpacing(0.5, 0.4, 0.3)
    assert slicer.util.saveNode(volume, str(tmp_path / "ramp.nrrd"))
    loaded = slicer.util.loadVolume(str(tmp_path / "ramp.nrrd"))
    assert loaded.GetName() == "ramp" and np.array_equal(slicer.util.arrayFromVolume(loaded), array)
    assert np.allclose(loaded.GetSpacing(), (0.5, 0.4, 0.3))
    label = slicer.util.loadLabelVolume(str(tmp_path / "ramp.nrrd"))
    assert label.IsA("vtkMRMLLabelMapVolumeNode")

    points = _points("Landmarks", ("Helicotrema", (1.0, 2.0, 3.0)))
    for suffix in (".mrk.json", ".fcsv"):
        path = tmp_path / f"landmarks{suffix}"
        assert slicer.util.saveNode(points, str(path))
        back = slicer.util.loadMarkups(str(path))
        assert back.GetNthControlPointLabel(0) == "Helicotrema"
        assert np.allclose(back.GetNthControlPointPosition(0), (1.0, 2.0, 3.0))
    assert "# CoordinateSystem = LPS" in (tmp_path / "landmarks.fcsv").read_text(encoding="utf-8")

    labels = np.zeros((4, 5, 6), dtype=np.int16)
    labels[1:3, 1:4, 2:5] = 1
    labelmap = slicer.util.addVolumeFromArray(labels, name="Labels", nodeClassName="vtkMRMLLabelMapVolumeNode")
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Seg")
    assert slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentation)
    assert slicer.util.saveNode(segmentation, str(tmp_path / "seg.seg.nrrd"))
    loadedSegmentation = slicer.util.loadSegmentation(str(tmp_path / "seg.seg.nrrd"))
    assert loadedSegmentation.GetName() == "seg" and loadedSegmentation.GetSegmentation().GetNumberOfSegments() == 1
    segmentId = loadedSegmentation.GetSegmentation().GetNthSegmentID(0)
    assert slicer.util.arrayFromSegmentBinaryLabelmap(loadedSegmentation, segmentId, labelmap).sum() == labels.sum()

    sphere = vtk.vtkSphereSource()
    sphere.Update()
    model = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLModelNode", "Sphere")
    model.SetAndObservePolyData(sphere.GetOutput())
    assert slicer.util.saveNode(model, str(tmp_path / "sphere.vtk"))
    assert slicer.util.loadModel(str(tmp_path / "sphere.vtk")).GetPolyData().GetNumberOfPoints() == \
        sphere.GetOutput().GetNumberOfPoints()


@pytest.mark.expected_vtk_errors  # ITK and MRML log a dozen errors for one unreadable file
def test_harness_load_failure_is_an_exception_and_logged(tmp_path: Path, vtk_messages) -> None:
    bad = tmp_path / "broken.nrrd"
    bad.write_text("this is not a NRRD file\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match="Failed to load node from file"):
        slicer.util.loadVolume(str(bad))
    assert any("Failed to read node" in e for e in vtk_messages.errors)


def test_expected_vtk_errors_marker_rules(request) -> None:
    """The marker logic: no marker fails on any error; patterns must match and must be met."""
    conftest = next(p for p in request.config.pluginmanager.get_plugins()
                    if getattr(p, "unexpected_vtk_errors", None) is not None)
    check = conftest.unexpected_vtk_errors
    errors = ["ERROR: In vtkMRMLStorageNode.cxx: Failed to read node X", "ERROR: something else"]
    assert check(errors, None) == errors
    assert check(errors, pytest.mark.expected_vtk_errors.mark) == []
    assert check(errors, pytest.mark.expected_vtk_errors("Failed to read", "something").mark) == []
    assert check(errors, pytest.mark.expected_vtk_errors("Failed to read").mark) == ["ERROR: something else"]
    unmet = check([], pytest.mark.expected_vtk_errors("Failed to read").mark)
    assert unmet == ["(expected a VTK error matching 'Failed to read', none was logged)"]
    assert check([], pytest.mark.expected_vtk_errors("Failed to read").mark, require_matches=False) == []


def test_a_vtk_error_fails_the_test_that_caused_it(tmp_path: Path) -> None:
    """End to end, in a separate pytest run with this conftest: an unexpected MRML error is a failure."""
    (tmp_path / "conftest.py").write_text((REPO / "Testing" / "conftest.py").read_text(encoding="utf-8"),
                                              encoding="utf-8")
    (tmp_path / "test_errors.py").write_text(textwrap.dedent("""
        import pytest
        import slicer

        def _read_missing_file():
            storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
            storage.SetFileName("/nonexistent/volume.nrrd")
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
            assert not storage.ReadData(node)

        def test_unexpected_error():
            _read_missing_file()

        @pytest.mark.expected_vtk_errors
        def test_expected_error():
            _read_missing_file()

        @pytest.mark.expected_vtk_errors("this never happens")
        def test_expectation_not_met():
            pass
    """), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-o",
         f"pythonpath={REPO / 'Testing' / 'harness'}", "-o", "markers=expected_vtk_errors", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "FAILED test_errors.py::test_unexpected_error" in out and "Failed to read node" in out
    assert "FAILED test_errors.py::test_expectation_not_met" in out
    assert "2 failed, 1 passed" in out

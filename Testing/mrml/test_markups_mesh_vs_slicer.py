"""Our markups and mesh files against Slicer's own storage nodes (slicer-core), both directions.

Files we write must load in Slicer at the same RAS positions with the same labels, and files
Slicer writes must load in our readers identically. These fail if either side gets the LPS flip,
the SPACE tag, label quoting or the fcsv column layout wrong.
"""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core wheel not installed (pip install -e .[test])")
vtk = pytest.importorskip("vtk")

from CochleaCommonLib.markups_io import read_markups, write_markups  # noqa: E402
from CochleaCommonLib.mesh_io import MESH_SUFFIXES, Mesh, mesh_to_polydata, read_mesh, write_mesh  # noqa: E402
from CochleaCommonLib.points import PointList  # noqa: E402
from vtkmodules.util.numpy_support import vtk_to_numpy  # noqa: E402

pytestmark = pytest.mark.mrml

REPO_ROOT = Path(__file__).resolve().parents[2]
REFERENCE = REPO_ROOT.parent / "shared" / "reference" / "smicnet_case0002"
CS_FLAG = {"RAS": 0, "LPS": 1}  # vtkMRMLStorageNode::CoordinateSystemRAS / LPS
MARKUP_SUFFIXES = (".fcsv", ".mrk.json")
#: Slicer-side and our reads of one file must agree to this (mm); they run the same arithmetic.
AGREE = 1e-6


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def tricky_points() -> PointList:
    return PointList(
        np.array([[-130.75634090678676, -100.68547973257667, -80.07242698303585], [1.0, -2.5, 3.0],
                  [1 / 3, 2e-7, -1e4]]),
        ["Helicotrema", "a, b", 'say "hi"'],
        name="Landmarks",
        descriptions=["apex", 'd"q, with comma', ""],
    )


# ----------------------------------------------------------------------------- markups helpers


def _markups_storage(scene, path):
    if str(path).endswith(".fcsv"):
        return scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialStorageNode")
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()  # not registered for AddNewNodeByClass in slicer-core
    scene.AddNode(storage)
    return storage


def slicer_read_points(scene, path):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    storage = _markups_storage(scene, path)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    positions = []
    for i in range(node.GetNumberOfControlPoints()):
        p = [0.0, 0.0, 0.0]
        node.GetNthControlPointPosition(i, p)
        positions.append(p)
    n = node.GetNumberOfControlPoints()
    return (
        np.array(positions).reshape(-1, 3),
        [node.GetNthControlPointLabel(i) for i in range(n)],
        [node.GetNthControlPointDescription(i) for i in range(n)],
        node.GetName(),
    )


def slicer_write_points(scene, points, path, cs):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", points.name)
    for pos, label, description in zip(points.positions_ras, points.labels, points.descriptions):
        index = node.AddControlPoint(vtk.vtkVector3d(*pos), label)
        node.SetNthControlPointDescription(index, description)
    storage = _markups_storage(scene, path)
    storage.SetCoordinateSystem(CS_FLAG[cs])
    storage.SetFileName(str(path))
    assert storage.WriteData(node) == 1
    return path


# ----------------------------------------------------------------------------- markups tests


@pytest.mark.shared
@pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"the SMICNet reference files are not at {REFERENCE}")
@pytest.mark.parametrize("name", ["Cochlea_left.fcsv", "Cochlea_right.fcsv"])
def test_reference_files_load_identically(scene, name):
    ours = read_markups(REFERENCE / name)
    positions, labels, descriptions, _ = slicer_read_points(scene, REFERENCE / name)
    np.testing.assert_allclose(ours.positions_ras, positions, rtol=0, atol=1e-9)
    assert ours.labels == labels
    assert ours.descriptions == descriptions


@pytest.mark.parametrize("cs", ["LPS", "RAS"])
@pytest.mark.parametrize("suffix", MARKUP_SUFFIXES)
def test_slicer_reads_our_markups(scene, tmp_path, suffix, cs):
    points = tricky_points()
    path = write_markups(points, tmp_path / f"ours{suffix}", coordinate_system=cs)
    positions, labels, descriptions, name = slicer_read_points(scene, path)
    np.testing.assert_allclose(positions, points.positions_ras, rtol=0, atol=AGREE)
    assert labels == points.labels
    assert descriptions == points.descriptions
    if suffix == ".mrk.json":
        assert name == points.name


@pytest.mark.parametrize("cs", ["LPS", "RAS"])
@pytest.mark.parametrize("suffix", MARKUP_SUFFIXES)
def test_we_read_slicers_markups(scene, tmp_path, suffix, cs):
    points = tricky_points()
    path = slicer_write_points(scene, points, tmp_path / f"slicer{suffix}", cs)
    ours = read_markups(path)
    np.testing.assert_allclose(ours.positions_ras, points.positions_ras, rtol=0, atol=AGREE)
    positions, _, _, _ = slicer_read_points(scene, path)
    np.testing.assert_allclose(ours.positions_ras, positions, rtol=0, atol=AGREE)
    assert ours.labels == points.labels
    assert ours.descriptions == points.descriptions
    if suffix == ".mrk.json":
        assert json.loads(path.read_text())["markups"][0]["coordinateSystem"] == cs


@pytest.mark.parametrize("cs", ["LPS", "RAS"])
def test_fcsv_matches_slicer_line_for_line(scene, tmp_path, cs):
    points = tricky_points()
    theirs = slicer_write_points(scene, points, tmp_path / "slicer.fcsv", cs).read_text(encoding="utf-8")
    ours = write_markups(points, tmp_path / "ours.fcsv", coordinate_system=cs).read_text(encoding="utf-8")
    # Line 1 is the writing application's version; everything after must be byte-identical.
    assert ours.split("\n")[1:] == theirs.split("\n")[1:]


def test_headerless_modern_fcsv_agrees(scene, tmp_path):
    path = tmp_path / "nocs.fcsv"
    path.write_text("# Markups fiducial file version = 5.2\n1,10,20,30,0,0,0,1,1,1,0,p,,,2,0\n")
    positions, _, _, _ = slicer_read_points(scene, path)
    np.testing.assert_allclose(read_markups(path).positions_ras, positions, rtol=0, atol=AGREE)
    np.testing.assert_array_equal(positions, [[-10, -20, 30]])


# ----------------------------------------------------------------------------- mesh helpers


def sample_mesh() -> Mesh:
    """A closed octahedron far from the origin, with a scalar and a normals array."""
    centre = np.array([-130.756340906, 100.685479732, -80.072426983])
    offsets = np.array([[3.1, 0, 0], [-2.2, 0, 0], [0, 1.7, 0], [0, -2.9, 0], [0, 0, 4.3], [0, 0, -1.1]])
    triangles = [[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]]
    return Mesh(
        centre + offsets,
        triangles,
        name="octa",
        point_data={"thickness": np.linspace(0.1, 0.6, 6),
                    "Normals": offsets / np.linalg.norm(offsets, axis=1, keepdims=True)},
    )


def slicer_read_model(scene, path):
    node = scene.AddNewNodeByClass("vtkMRMLModelNode")
    storage = scene.AddNewNodeByClass("vtkMRMLModelStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return node.GetPolyData()


def slicer_write_model(scene, mesh, path, cs):
    node = scene.AddNewNodeByClass("vtkMRMLModelNode", mesh.name)
    node.SetAndObservePolyData(mesh_to_polydata(mesh))
    storage = scene.AddNewNodeByClass("vtkMRMLModelStorageNode")
    storage.SetCoordinateSystem(CS_FLAG[cs])
    storage.SetFileName(str(path))
    assert storage.WriteData(node) == 1
    return path


def points_of(polydata) -> np.ndarray:
    return vtk_to_numpy(polydata.GetPoints().GetData()).astype(np.float64)


def corner_tolerance(suffix: str) -> float:
    return 1e-4 if suffix in (".stl", ".ply") else 1e-9  # float32 formats


@functools.lru_cache(maxsize=1)
def slicer_obj_export_works() -> bool:
    """Slicer writes OBJ through a render window; probe it in a child process (a missing GL can crash)."""
    code = (
        "import slicer, vtk\n"
        "s = slicer.vtkMRMLScene(); src = vtk.vtkSphereSource(); src.Update()\n"
        "n = s.AddNewNodeByClass('vtkMRMLModelNode'); n.SetAndObservePolyData(src.GetOutput())\n"
        "st = s.AddNewNodeByClass('vtkMRMLModelStorageNode'); st.SetFileName(sys_path)\n"
        "assert st.WriteData(n) == 1\n"
    )
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        target = os.path.join(folder, "probe.obj")
        env = dict(os.environ, VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow")
        result = subprocess.run([sys.executable, "-c", f"sys_path = {target!r}\n" + code], env=env,
                                capture_output=True, timeout=120)
        return result.returncode == 0 and os.path.exists(target)


def needs_slicer_writer(suffix, monkeypatch):
    if suffix == ".obj":
        if not slicer_obj_export_works():
            pytest.skip("Slicer's OBJ writer needs an OpenGL render window (EGL), which this machine cannot open")
        monkeypatch.setenv("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


# ----------------------------------------------------------------------------- mesh tests


@pytest.mark.parametrize("cs", ["LPS", "RAS"])
@pytest.mark.parametrize("suffix", MESH_SUFFIXES)
def test_slicer_reads_our_meshes(scene, tmp_path, suffix, cs):
    mesh = sample_mesh()
    path = write_mesh(mesh, tmp_path / f"ours{suffix}", coordinate_system=cs)
    polydata = slicer_read_model(scene, path)
    ours = read_mesh(path)
    np.testing.assert_allclose(points_of(polydata), ours.vertices_ras, rtol=0, atol=AGREE)
    corners = points_of(polydata)[ours.triangles]
    np.testing.assert_allclose(corners, mesh.vertices_ras[mesh.triangles], rtol=0, atol=corner_tolerance(suffix))
    if suffix in (".vtk", ".vtp"):
        for key, values in mesh.point_data.items():
            np.testing.assert_allclose(vtk_to_numpy(polydata.GetPointData().GetArray(key)), values, atol=1e-12)


@pytest.mark.parametrize("cs", ["LPS", "RAS"])
@pytest.mark.parametrize("suffix", MESH_SUFFIXES)
def test_we_read_slicers_meshes(scene, tmp_path, suffix, cs, monkeypatch):
    needs_slicer_writer(suffix, monkeypatch)
    mesh = sample_mesh()
    path = slicer_write_model(scene, mesh, tmp_path / f"slicer{suffix}", cs)
    ours = read_mesh(path)
    theirs = slicer_read_model(scene, path)
    np.testing.assert_allclose(ours.vertices_ras, points_of(theirs), rtol=0, atol=AGREE)
    # Slicer exports OBJ through a render pipeline that holds float32 points (7e-6 mm off here).
    tolerance = 1e-4 if suffix == ".obj" else corner_tolerance(suffix)
    np.testing.assert_allclose(
        ours.vertices_ras[ours.triangles], mesh.vertices_ras[mesh.triangles], rtol=0, atol=tolerance
    )
    if suffix in (".vtk", ".vtp"):
        for key, values in mesh.point_data.items():
            np.testing.assert_allclose(ours.point_data[key], values, atol=1e-12)
            np.testing.assert_allclose(vtk_to_numpy(theirs.GetPointData().GetArray(key)), values, atol=1e-12)


def test_untagged_stl_is_lps_for_both(scene, tmp_path):
    mesh = sample_mesh()
    writer = vtk.vtkSTLWriter()
    writer.SetInputData(mesh_to_polydata(mesh))
    writer.SetFileName(str(tmp_path / "other.stl"))
    assert writer.Write() == 1
    ours = read_mesh(tmp_path / "other.stl")
    np.testing.assert_allclose(ours.vertices_ras, points_of(slicer_read_model(scene, tmp_path / "other.stl")),
                               rtol=0, atol=AGREE)
    assert ours.vertices_ras[0, 0] == pytest.approx(-mesh.vertices_ras[0, 0], abs=1e-4)  # x flipped: read as LPS

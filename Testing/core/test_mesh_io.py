"""Mesh IO: Slicer's SPACE tags per format, RAS/LPS flips, point data, broken files.

The files are also read and written by Slicer's own vtkMRMLModelStorageNode in
``Testing/mrml/test_markups_mesh_vs_slicer.py``.
"""

import subprocess
import sys

import numpy as np
import pytest

vtk = pytest.importorskip("vtk")
from CochleaCommonLib.errors import InputFileError, InvalidInputError  # noqa: E402
from CochleaCommonLib.geometry import ras_to_lps  # noqa: E402
from CochleaCommonLib.mesh_io import (  # noqa: E402
    MESH_SUFFIXES,
    Mesh,
    mesh_from_polydata,
    mesh_to_polydata,
    read_mesh,
    write_mesh,
)
from vtkmodules.util.numpy_support import vtk_to_numpy  # noqa: E402

#: float32 formats lose about 1e-5 mm at these coordinates; the double formats are exact.
FLOAT32_FORMATS = (".stl", ".ply")


def sample_mesh() -> Mesh:
    """A closed, lopsided octahedron far from the origin (x and y flips are visible), with point data."""
    centre = np.array([-130.756340906, 100.685479732, -80.072426983])
    offsets = np.array([[3.1, 0, 0], [-2.2, 0, 0], [0, 1.7, 0], [0, -2.9, 0], [0, 0, 4.3], [0, 0, -1.1]])
    vertices = centre + offsets
    triangles = np.array(
        [[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]], dtype=np.int64
    )
    normals = offsets / np.linalg.norm(offsets, axis=1, keepdims=True)
    return Mesh(
        vertices,
        triangles,
        name="octa",
        point_data={
            "thickness": np.linspace(0.1, 0.6, 6),
            "Normals": normals,
            "region": np.arange(6, dtype=np.int32),
        },
    )


def raw_polydata(path):
    """What the file stores, read by plain VTK with no coordinate handling."""
    readers = {
        ".vtk": vtk.vtkPolyDataReader, ".vtp": vtk.vtkXMLPolyDataReader, ".stl": vtk.vtkSTLReader,
        ".ply": vtk.vtkPLYReader, ".obj": vtk.vtkOBJReader,
    }
    reader = readers[path.suffix]()
    reader.SetFileName(str(path))
    reader.Update()
    return reader


def corners(mesh: Mesh) -> np.ndarray:
    """Triangle corner coordinates (M, 3, 3): comparable even when a reader renumbers vertices."""
    return mesh.vertices_ras[mesh.triangles]


# ----------------------------------------------------------------------------- the Mesh type


def test_mesh_normalises_types():
    mesh = Mesh([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]])
    assert mesh.vertices_ras.dtype == np.float64
    assert mesh.triangles.dtype == np.int64
    assert mesh.point_data == {}
    empty = Mesh(np.zeros((0, 3)), [])
    assert empty.triangles.shape == (0, 3)


@pytest.mark.parametrize(
    "vertices, triangles, point_data, message",
    [
        ([[0, 0], [1, 0], [0, 1]], [[0, 1, 2]], {}, r"vertices must be an \(N, 3\)"),
        ([[0, 0, np.nan], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]], {}, "non-finite"),
        ([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1]], {}, r"triangles must be an \(M, 3\)"),
        ([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 3]], {}, "must lie in 0..2"),
        ([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[-1, 1, 2]], {}, "must lie in 0..2"),
        ([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 1.5]], {}, "must be integers"),
        ([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]], {"t": np.zeros(2)}, "one value .* per vertex"),
        ([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]], {"t": np.array(["a", "b", "c"])}, "use numbers"),
    ],
)
def test_invalid_meshes_are_refused(vertices, triangles, point_data, message):
    with pytest.raises(InvalidInputError, match=message):
        Mesh(vertices, triangles, point_data=point_data)


def test_polydata_round_trip_keeps_ras_and_point_data():
    mesh = sample_mesh()
    polydata = mesh_to_polydata(mesh)
    assert polydata.GetPoint(0) == tuple(mesh.vertices_ras[0])  # no coordinate change
    assert polydata.GetPointData().GetNormals().GetName() == "Normals"
    back = mesh_from_polydata(polydata, name="x")
    np.testing.assert_array_equal(back.vertices_ras, mesh.vertices_ras)
    np.testing.assert_array_equal(back.triangles, mesh.triangles)
    assert back.name == "x"
    assert sorted(back.point_data) == ["Normals", "region", "thickness"]
    for key, values in mesh.point_data.items():
        np.testing.assert_array_equal(back.point_data[key], values)
    assert back.point_data["region"].dtype == np.int32


def test_polygons_and_strips_are_triangulated():
    points = vtk.vtkPoints()
    for p in [(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 1)]:
        points.InsertNextPoint(p)
    polys = vtk.vtkCellArray()
    polys.InsertNextCell(4, [0, 1, 2, 3])  # a quad
    strips = vtk.vtkCellArray()
    strips.InsertNextCell(3, [4, 5, 6])  # a one-triangle strip
    lines = vtk.vtkCellArray()
    lines.InsertNextCell(2, [0, 4])  # ignored
    polydata = vtk.vtkPolyData()
    polydata.SetPoints(points)
    polydata.SetPolys(polys)
    polydata.SetStrips(strips)
    polydata.SetLines(lines)
    mesh = mesh_from_polydata(polydata)
    assert mesh.triangles.shape == (3, 3)
    assert len(mesh.vertices_ras) == 7
    assert {frozenset(t) for t in mesh.triangles.tolist()} >= {frozenset((4, 5, 6))}


def test_mesh_from_non_polydata_is_refused():
    with pytest.raises(InvalidInputError, match="vtkPolyData"):
        mesh_from_polydata(vtk.vtkUnstructuredGrid())


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize("cs", ["LPS", "RAS"])
@pytest.mark.parametrize("suffix", MESH_SUFFIXES)
def test_round_trip(tmp_path, suffix, cs):
    mesh = sample_mesh()
    back = read_mesh(write_mesh(mesh, tmp_path / f"octa{suffix}", coordinate_system=cs))
    assert back.name == "octa"
    assert back.triangles.shape == mesh.triangles.shape
    atol = 1e-4 if suffix in FLOAT32_FORMATS else 0.0
    np.testing.assert_allclose(corners(back), corners(mesh), rtol=0, atol=atol)
    if suffix in (".vtk", ".vtp"):
        for key, values in mesh.point_data.items():
            np.testing.assert_array_equal(back.point_data[key], values)


@pytest.mark.parametrize("cs", ["LPS", "RAS"])
@pytest.mark.parametrize("suffix", MESH_SUFFIXES)
def test_file_holds_the_requested_space_and_tag(tmp_path, suffix, cs):
    mesh = sample_mesh()
    path = write_mesh(mesh, tmp_path / f"octa{suffix}", coordinate_system=cs)
    reader = raw_polydata(path)
    stored = mesh_from_polydata(reader.GetOutput())
    expected = ras_to_lps(mesh.vertices_ras) if cs == "LPS" else mesh.vertices_ras
    atol = 1e-4 if suffix in FLOAT32_FORMATS else 0.0
    np.testing.assert_allclose(stored.vertices_ras[stored.triangles], expected[mesh.triangles], rtol=0, atol=atol)
    tag = f"SPACE={cs}"
    if suffix == ".vtk":
        assert reader.GetHeader() == f"3D Slicer output. {tag}"
    elif suffix == ".stl":
        assert reader.GetHeader().startswith(f"3D Slicer output. {tag}")
    elif suffix == ".ply":
        comments = reader.GetComments()
        assert tag in [comments.GetValue(i) for i in range(comments.GetNumberOfValues())]
    elif suffix == ".obj":
        assert path.read_text().split("\n", 1)[0] == f"# 3D Slicer output. {tag}"
    else:
        assert reader.GetOutput().GetFieldData().GetAbstractArray("SPACE").GetValue(0) == cs


def test_normals_are_flipped_with_the_points_in_lps_files(tmp_path):
    mesh = sample_mesh()
    reader = raw_polydata(write_mesh(mesh, tmp_path / "octa.vtk"))
    stored = vtk_to_numpy(reader.GetOutput().GetPointData().GetNormals())
    np.testing.assert_allclose(stored, ras_to_lps(mesh.point_data["Normals"]), atol=1e-15)
    thickness = vtk_to_numpy(reader.GetOutput().GetPointData().GetArray("thickness"))
    np.testing.assert_array_equal(thickness, mesh.point_data["thickness"])  # scalars are not flipped


def _plain_vtk_write(polydata, path, header):
    writer = vtk.vtkPolyDataWriter()
    writer.SetFileTypeToBinary()  # ASCII legacy files keep only 11 significant digits
    writer.SetHeader(header)
    writer.SetInputData(polydata)
    writer.SetFileName(str(path))
    assert writer.Write() == 1


@pytest.mark.parametrize(
    "header, flipped",
    [("3D Slicer output. SPACE=RAS", False), ("3D Slicer output. SPACE=LPS", True), ("vtk output", True),
     ("made elsewhere, SPACE=RAS noted", False)],
)
def test_vtk_header_decides_the_space(tmp_path, header, flipped):
    mesh = sample_mesh()
    path = tmp_path / "m.vtk"
    _plain_vtk_write(mesh_to_polydata(mesh), path, header)
    expected = ras_to_lps(mesh.vertices_ras) if flipped else mesh.vertices_ras
    np.testing.assert_array_equal(read_mesh(path).vertices_ras, expected)


def test_untagged_stl_is_read_as_lps(tmp_path):
    mesh = sample_mesh()
    writer = vtk.vtkSTLWriter()
    writer.SetInputData(mesh_to_polydata(mesh))
    writer.SetFileName(str(tmp_path / "other.stl"))
    writer.Write()
    back = read_mesh(tmp_path / "other.stl")
    np.testing.assert_allclose(corners(back), ras_to_lps(mesh.vertices_ras)[mesh.triangles], atol=1e-4)


# ----------------------------------------------------------------------------- broken inputs


@pytest.fixture
def vtk_messages():
    """Errors and warnings reaching VTK's global output window (they must not: we raise instead)."""
    seen = []
    window = vtk.vtkOutputWindow.GetInstance()
    tags = [window.AddObserver(event, lambda *_: seen.append(1)) for event in (vtk.vtkCommand.ErrorEvent,
                                                                                vtk.vtkCommand.WarningEvent)]
    yield seen
    for tag in tags:
        window.RemoveObserver(tag)


@pytest.mark.parametrize("suffix", MESH_SUFFIXES)
@pytest.mark.parametrize("kind", ["empty", "junk", "truncated"])
def test_broken_files_raise_input_file_error(tmp_path, suffix, kind, vtk_messages):
    path = tmp_path / f"broken{suffix}"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "junk":
        path.write_bytes(b"this is not a mesh at all\x00\x01\x02\n" * 3)
    else:
        # ASCII variants truncate mid-data in every format; binary ones are written by write_mesh.
        good = write_mesh(sample_mesh(), tmp_path / f"good{suffix}")
        if suffix in (".vtk", ".stl", ".ply"):
            good = tmp_path / f"ascii{suffix}"
            writer = {".vtk": vtk.vtkPolyDataWriter, ".stl": vtk.vtkSTLWriter, ".ply": vtk.vtkPLYWriter}[suffix]()
            writer.SetFileTypeToASCII()
            plain = sample_mesh()
            writer.SetInputData(mesh_to_polydata(Mesh(plain.vertices_ras, plain.triangles)))
            writer.SetFileName(str(good))
            writer.Write()
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match="broken"):
        read_mesh(path)
    assert vtk_messages == []


def test_missing_file_folder_and_extension(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        read_mesh(tmp_path / "nope.stl")
    (tmp_path / "dir.vtk").mkdir()
    with pytest.raises(InputFileError, match="is a folder"):
        read_mesh(tmp_path / "dir.vtk")
    with pytest.raises(InputFileError, match="unsupported mesh format '.off'"):
        read_mesh(tmp_path / "mesh.off")


def test_unstructured_grid_vtk_is_refused(tmp_path):
    grid = vtk.vtkUnstructuredGrid()
    points = vtk.vtkPoints()
    for p in [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]:
        points.InsertNextPoint(p)
    grid.SetPoints(points)
    grid.InsertNextCell(vtk.VTK_TETRA, 4, [0, 1, 2, 3])
    writer = vtk.vtkUnstructuredGridWriter()
    writer.SetInputData(grid)
    writer.SetFileName(str(tmp_path / "grid.vtk"))
    writer.Write()
    with pytest.raises(InputFileError, match="not a VTK surface mesh"):
        read_mesh(tmp_path / "grid.vtk")


@pytest.mark.parametrize("suffix", MESH_SUFFIXES)
def test_failed_write_leaves_no_file(tmp_path, suffix, vtk_messages):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(InputFileError):
        write_mesh(sample_mesh(), blocker / f"m{suffix}")
    (tmp_path / f"target{suffix}").mkdir()  # the target is a folder: moving into place fails
    with pytest.raises(InputFileError, match="Could not write"):
        write_mesh(sample_mesh(), tmp_path / f"target{suffix}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["not_a_folder", f"target{suffix}"])
    assert vtk_messages == []


def test_write_argument_checks(tmp_path):
    with pytest.raises(InvalidInputError, match="'LPS' or 'RAS'"):
        write_mesh(sample_mesh(), tmp_path / "m.vtk", coordinate_system="IJK")
    with pytest.raises(InvalidInputError, match="no triangles"):
        write_mesh(Mesh(np.zeros((0, 3)), []), tmp_path / "m.vtk")
    with pytest.raises(InvalidInputError, match="no triangles"):
        write_mesh(Mesh([[0.0, 0.0, 0.0]], []), tmp_path / "m.stl")
    with pytest.raises(InputFileError, match="unsupported mesh format"):
        write_mesh(sample_mesh(), tmp_path / "m.off")
    with pytest.raises(InvalidInputError, match="Expected a Mesh"):
        write_mesh(np.zeros((3, 3)), tmp_path / "m.vtk")
    assert list(tmp_path.iterdir()) == []


def test_points_without_triangles_are_refused(tmp_path, vtk_messages):
    # A legacy file cut after its POINTS section reads without any VTK complaint.
    polydata = mesh_to_polydata(Mesh([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], []))
    _plain_vtk_write(polydata, tmp_path / "cloud.vtk", "3D Slicer output. SPACE=LPS")
    with pytest.raises(InputFileError, match="no surface triangles"):
        read_mesh(tmp_path / "cloud.vtk")
    assert vtk_messages == []


# ----------------------------------------------------------------------------- PLY integrity


def _ply(tmp_path, polydata, name, binary=True, big_endian=False):
    writer = vtk.vtkPLYWriter()
    writer.SetFileTypeToBinary() if binary else writer.SetFileTypeToASCII()
    if big_endian:
        writer.SetDataByteOrderToBigEndian()
    writer.SetInputData(polydata)
    writer.SetFileName(str(tmp_path / name))
    assert writer.Write() == 1
    return tmp_path / name


def _quad_and_triangle():
    points = vtk.vtkPoints()
    for p in [(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0), (2, 0, 0)]:
        points.InsertNextPoint(p)
    polys = vtk.vtkCellArray()
    polys.InsertNextCell(4, [0, 1, 2, 3])
    polys.InsertNextCell(3, [1, 4, 2])
    polydata = vtk.vtkPolyData()
    polydata.SetPoints(points)
    polydata.SetPolys(polys)
    return polydata


def read_in_child(path) -> str:
    """read_mesh in a child process: if the PLY guard ever regresses, VTK's segfault must not kill pytest."""
    code = (
        "import sys\n"
        "from CochleaCommonLib.errors import InputFileError\n"
        "from CochleaCommonLib.mesh_io import read_mesh\n"
        "try:\n    m = read_mesh(sys.argv[1])\n    print('read', m.triangles.shape)\n"
        "except InputFileError as exc:\n    print('refused:', exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"the reader crashed (exit code {result.returncode}): {result.stderr[-500:]}"
    return result.stdout


@pytest.mark.parametrize("binary, big_endian", [(True, False), (True, True), (False, False)])
def test_ply_with_mixed_polygons_and_byte_orders(tmp_path, binary, big_endian):
    path = _ply(tmp_path, _quad_and_triangle(), "mixed.ply", binary, big_endian)
    mesh = read_mesh(path)
    assert mesh.triangles.shape == (3, 3)
    data = path.read_bytes()
    cut = tmp_path / "cut.ply"
    cut.write_bytes(data[:-4])
    assert "refused: cut.ply ends before the 5 vertex, 2 face its header declares" in read_in_child(cut)


@pytest.mark.parametrize(
    "header, message",
    [
        (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\n", "no 'ply ... end_header' header"),
        (b"ply\nformat text 1.0\nelement vertex 0\nend_header\n", "unknown format 'text'"),
        (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty quad x\nend_header\n0\n", "unknown property type"),
        (b"ply\nformat ascii 1.0\nelement vertex one\nend_header\n", "unexpected header line"),
    ],
)
def test_ply_broken_headers(tmp_path, header, message):
    (tmp_path / "h.ply").write_bytes(header)
    with pytest.raises(InputFileError, match=message):
        read_mesh(tmp_path / "h.ply")


def test_truncated_binary_ply_does_not_crash_the_process(tmp_path):
    # vtkPLYReader alone dies with a segmentation fault on these files.
    data = write_mesh(sample_mesh(), tmp_path / "full.ply").read_bytes()
    header_end = data.index(b"end_header\n") + len(b"end_header\n")
    for cut in (header_end, header_end + 7, (header_end + len(data)) // 2, len(data) - 1):
        (tmp_path / "cut.ply").write_bytes(data[:cut])
        assert "refused: cut.ply ends before" in read_in_child(tmp_path / "cut.ply"), cut

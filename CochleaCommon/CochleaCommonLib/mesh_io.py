"""Read and write surface meshes (.vtk, .vtp, .stl, .ply, .obj) with Slicer's coordinate rules.

Why this module: since Slicer 4.11, model files are written in LPS and tagged with the space they
use; a mesh read without honouring that tag lands mirrored through the patient's midline, which
for a cochlea means the wrong ear. The rules below are those of Slicer's
``vtkMRMLModelStorageNode`` (checked against slicer-core 5.13 in ``Testing/mrml``):

============  ==========================================  ======================================
format        where the space is stored                   what we write
============  ==========================================  ======================================
``.vtk``      header line ``3D Slicer output. SPACE=LPS``  legacy 4.2 binary polydata
``.vtp``      field-data string array ``SPACE``            XML, zlib-compressed, appended
``.stl``      header / solid name ``... SPACE=LPS``        binary STL (float32 coordinates)
``.ply``      a ``comment SPACE=LPS`` line                 binary PLY (float32 coordinates)
``.obj``      first comment ``# 3D Slicer output. ...``    text OBJ (full double precision)
============  ==========================================  ======================================

A file without a tag is read as **LPS**, as Slicer does (its storage node's default); meshes from
other software are therefore assumed to be in LPS (DICOM/ITK convention).

The flip between RAS and LPS uses ``vtkTransformPolyDataFilter`` exactly like Slicer, so normals
(the point array named ``Normals``) are flipped with the points and triangle winding is kept (the
flip is a 180 degree rotation about the S axis).

VTK reports bad files through its global output window, not exceptions; reading and writing
capture those messages and turn them into :class:`InputFileError`, so nothing leaks into logs or
test error observers.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .atomic import atomic_output, full_suffix
from .errors import InputFileError, InvalidInputError

if TYPE_CHECKING:  # pragma: no cover
    from vtkmodules.vtkCommonDataModel import vtkPolyData

#: Mesh formats we read and write.
MESH_SUFFIXES = (".vtk", ".vtp", ".stl", ".ply", ".obj")
#: Header text Slicer writes before ``SPACE=...``.
SLICER_HEADER = "3D Slicer output."
_SPACE_TAG = "SPACE"


@dataclass
class Mesh:
    """A triangle surface in RAS millimetres.

    ``vertices_ras`` (N, 3) float64, ``triangles`` (M, 3) int64 indices into the vertices,
    ``point_data`` per-vertex arrays of length N (kept through ``.vtk``/``.vtp`` files). Validated
    on construction so every consumer can trust the shapes.
    """

    vertices_ras: np.ndarray
    triangles: np.ndarray
    name: str = ""
    point_data: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"Mesh '{self.name}'" if self.name else "The mesh"
        try:
            vertices = np.array(self.vertices_ras, dtype=np.float64, copy=True)
            triangles = np.array(self.triangles, copy=True)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"{where}: vertices and triangles must be numeric arrays ({exc}).") from exc
        if vertices.size == 0:
            vertices = vertices.reshape(0, 3)
        if triangles.size == 0:
            triangles = triangles.reshape(0, 3).astype(np.int64)
        if vertices.ndim != 2 or vertices.shape[1] != 3:
            raise InvalidInputError(f"{where}: vertices must be an (N, 3) array, got shape {vertices.shape}.")
        if not np.all(np.isfinite(vertices)):
            raise InvalidInputError(f"{where}: a vertex has a non-finite coordinate (NaN or infinity).")
        if triangles.ndim != 2 or triangles.shape[1] != 3:
            raise InvalidInputError(f"{where}: triangles must be an (M, 3) array, got shape {triangles.shape}.")
        if triangles.dtype.kind not in "iu":
            if triangles.dtype.kind == "f" and np.all(triangles == np.round(triangles)):
                triangles = triangles.astype(np.int64)
            else:
                raise InvalidInputError(f"{where}: triangle indices must be integers, got {triangles.dtype}.")
        triangles = triangles.astype(np.int64)
        if triangles.size and (triangles.min() < 0 or triangles.max() >= len(vertices)):
            raise InvalidInputError(
                f"{where}: triangle indices must lie in 0..{len(vertices) - 1}, "
                f"found {triangles.min()}..{triangles.max()}."
            )
        point_data = {}
        for key, values in dict(self.point_data).items():
            arr = np.ascontiguousarray(values)
            if arr.ndim not in (1, 2) or arr.shape[0] != len(vertices):
                raise InvalidInputError(
                    f"{where}: point array {key!r} has shape {arr.shape}; it needs one value (or row) per vertex "
                    f"({len(vertices)})."
                )
            if arr.dtype.kind not in "iuf":
                raise InvalidInputError(f"{where}: point array {key!r} has type {arr.dtype}; use numbers.")
            point_data[str(key)] = arr
        self.vertices_ras = vertices
        self.triangles = triangles
        self.point_data = point_data
        self.name = "" if self.name is None else str(self.name)


# ----------------------------------------------------------------------------- VTK plumbing


class _VtkLog:
    """Messages VTK emitted while captured (empty when all went well)."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self.messages)

    def watch(self, algorithm: Any) -> Any:
        """Collect ``algorithm``'s own errors and warnings (and its executive's) without printing them."""
        from vtkmodules.util.misc import calldata_type
        from vtkmodules.util.vtkConstants import VTK_STRING
        from vtkmodules.vtkCommonCore import vtkCommand

        @calldata_type(VTK_STRING)
        def on_message(_caller: Any, _event: str, text: str) -> None:
            self.messages.append(text or "")

        for target in (algorithm, algorithm.GetExecutive()):
            target.AddObserver(vtkCommand.ErrorEvent, on_message)
            target.AddObserver(vtkCommand.WarningEvent, on_message)
        return algorithm

    def first_message(self) -> str:
        """The first message without VTK's 'ERROR: In file, line' preamble and object address."""
        for block in re.split(r"\n\s*\n", self.text.strip()):
            lines = [ln.strip() for ln in block.strip().splitlines() if ln.strip()]
            body = lines[1:] if lines and re.match(r"^(ERROR|Warning|Generic Warning): In ", lines[0]) else lines
            if body:
                return re.sub(r"^\w+ \(0x[0-9a-fA-F]+\): ", "", body[0])
        return "unknown VTK error"


@contextlib.contextmanager
def _captured_vtk_messages() -> Iterator[_VtkLog]:
    """Collect VTK messages for the duration instead of letting them reach the global output window.

    Watched algorithms report to their own observers (nothing printed); messages from helper
    objects (XML parser, generic warnings) go to a temporary string output window, and the
    previous window is restored afterwards.
    """
    from vtkmodules.vtkCommonCore import vtkOutputWindow, vtkStringOutputWindow

    log = _VtkLog()
    previous = vtkOutputWindow.GetInstance()
    capture = vtkStringOutputWindow()
    vtkOutputWindow.SetInstance(capture)
    try:
        yield log
    finally:
        vtkOutputWindow.SetInstance(previous)
        if capture.GetOutput():
            log.messages.insert(0, capture.GetOutput())  # helper objects explain more (e.g. the XML parser)


def _flip_ras_lps(polydata: vtkPolyData) -> vtkPolyData:
    """Negate x and y (RAS <-> LPS) the way Slicer does, carrying normals and vectors along."""
    from vtkmodules.vtkCommonTransforms import vtkTransform
    from vtkmodules.vtkFiltersGeneral import vtkTransformPolyDataFilter

    transform = vtkTransform()
    transform.Scale(-1.0, -1.0, 1.0)
    flt = vtkTransformPolyDataFilter()
    flt.SetTransform(transform)
    flt.SetInputData(polydata)
    flt.Update()
    out = flt.GetOutput()
    result = type(polydata)()
    result.ShallowCopy(out)
    return result


def mesh_to_polydata(mesh: Mesh) -> vtkPolyData:
    """A new ``vtkPolyData`` holding ``mesh`` (coordinates unchanged: RAS stays RAS).

    A point array named ``Normals`` with 3 components becomes the active normals, so VTK filters
    (and the LPS flip on writing) treat it as normals.
    """
    from vtkmodules.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData

    if not isinstance(mesh, Mesh):
        raise InvalidInputError(f"Expected a Mesh, got {type(mesh).__name__}.")
    polydata = vtkPolyData()
    points = vtkPoints()
    points.SetData(numpy_to_vtk(np.ascontiguousarray(mesh.vertices_ras), deep=True))
    polydata.SetPoints(points)
    cells = vtkCellArray()
    offsets = np.arange(0, 3 * len(mesh.triangles) + 1, 3, dtype=np.int64)
    connectivity = np.ascontiguousarray(mesh.triangles.ravel(), dtype=np.int64)
    cells.SetData(numpy_to_vtkIdTypeArray(offsets, deep=True), numpy_to_vtkIdTypeArray(connectivity, deep=True))
    polydata.SetPolys(cells)
    point_data = polydata.GetPointData()
    for key, values in mesh.point_data.items():
        arr = numpy_to_vtk(np.ascontiguousarray(values), deep=True)
        arr.SetName(key)
        if key == "Normals" and values.ndim == 2 and values.shape[1] == 3:
            point_data.SetNormals(arr)
        else:
            point_data.AddArray(arr)
    return polydata


def _needs_triangulation(polydata: vtkPolyData) -> bool:
    from vtkmodules.util.numpy_support import vtk_to_numpy

    if polydata.GetNumberOfStrips() > 0:
        return True
    offsets = vtk_to_numpy(polydata.GetPolys().GetOffsetsArray())
    return bool(offsets.size > 1 and np.any(np.diff(offsets) != 3))


def mesh_from_polydata(polydata: vtkPolyData, name: str = "") -> Mesh:
    """A :class:`Mesh` from a ``vtkPolyData`` (no coordinate change); polygons and strips are triangulated.

    Vertices and lines are ignored; named per-point numeric arrays become ``point_data``.
    """
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkCommonDataModel import vtkPolyData
    from vtkmodules.vtkFiltersCore import vtkTriangleFilter

    if not isinstance(polydata, vtkPolyData):
        raise InvalidInputError(f"Expected a vtkPolyData, got {type(polydata).__name__}.")
    if polydata.GetPoints() is None or polydata.GetNumberOfPoints() == 0:
        return Mesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), name=name)
    surface = polydata
    if _needs_triangulation(polydata):
        tri = vtkTriangleFilter()
        tri.PassVertsOff()
        tri.PassLinesOff()
        tri.SetInputData(polydata)
        tri.Update()
        surface = tri.GetOutput()
    vertices = vtk_to_numpy(surface.GetPoints().GetData()).astype(np.float64)
    connectivity = vtk_to_numpy(surface.GetPolys().GetConnectivityArray()).astype(np.int64)
    point_data = {}
    pd = surface.GetPointData()
    for i in range(pd.GetNumberOfArrays()):
        arr = pd.GetArray(i)  # None for string and other non-numeric arrays
        if arr is None or not arr.GetName():
            continue
        try:
            point_data[arr.GetName()] = np.array(vtk_to_numpy(arr), copy=True)
        except (AssertionError, TypeError, ValueError):  # e.g. bit arrays, which numpy cannot view
            continue
    return Mesh(vertices, connectivity.reshape(-1, 3), name=name, point_data=point_data)


# ----------------------------------------------------------------------------- readers


def _space_in_text(text: str | None) -> str | None:
    """Slicer's rule: the first of ``SPACE=RAS`` / ``SPACE=LPS`` found in a header or comment."""
    if not text:
        return None
    if f"{_SPACE_TAG}=RAS" in text:
        return "RAS"
    if f"{_SPACE_TAG}=LPS" in text:
        return "LPS"
    return None


def _read_vtk(path: Path, log: _VtkLog) -> tuple[Any, str | None]:
    from vtkmodules.vtkIOLegacy import vtkPolyDataReader

    reader = log.watch(vtkPolyDataReader())
    reader.SetFileName(str(path))
    if not reader.IsFilePolyData():
        raise InputFileError(
            f"{path.name} is not a VTK surface mesh (legacy polydata); it may hold a volume or a volumetric "
            "grid. Export the surface as a model from Slicer."
        )
    for switch in ("Scalars", "Vectors", "Normals", "Tensors", "ColorScalars", "TCoords", "Fields"):
        getattr(reader, f"ReadAll{switch}On")()
    reader.Update()
    return reader.GetOutput(), _space_in_text(reader.GetHeader())


def _read_vtp(path: Path, log: _VtkLog) -> tuple[Any, str | None]:
    from vtkmodules.vtkIOXML import vtkXMLPolyDataReader

    reader = log.watch(vtkXMLPolyDataReader())
    reader.SetFileName(str(path))
    reader.Update()
    polydata = reader.GetOutput()
    space = None
    field_data = polydata.GetFieldData()
    tag = field_data.GetAbstractArray(_SPACE_TAG) if field_data is not None else None
    if tag is not None and tag.GetNumberOfValues() > 0:
        value = str(tag.GetVariantValue(0).ToString())
        space = "RAS" if "RAS" in value else "LPS" if "LPS" in value else None
        field_data.RemoveArray(_SPACE_TAG)
    return polydata, space


def _read_stl(path: Path, log: _VtkLog) -> tuple[Any, str | None]:
    from vtkmodules.vtkIOGeometry import vtkSTLReader

    reader = log.watch(vtkSTLReader())
    reader.SetFileName(str(path))
    reader.Update()
    return reader.GetOutput(), _space_in_text(reader.GetHeader())


_PLY_TYPES = {
    "char": "b", "int8": "b", "uchar": "B", "uint8": "B", "short": "h", "int16": "h", "ushort": "H",
    "uint16": "H", "int": "i", "int32": "i", "uint": "I", "uint32": "I", "float": "f", "float32": "f",
    "double": "d", "float64": "d",
}


def _ply_header(path: Path, data: bytes) -> tuple[str, list[tuple[str, int, list[tuple[str, ...]]]], bytes]:
    """Format, elements ``(name, count, properties)`` and body of a PLY file; InputFileError if malformed."""

    def bad(why: str) -> InputFileError:
        return InputFileError(
            f"{path.name} is not a complete PLY mesh ({why}). The file may be truncated; export it again."
        )

    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise bad("no 'ply ... end_header' header")
    newline = data.find(b"\n", end)
    body = data[newline + 1 :] if newline >= 0 else b""
    fmt = ""
    elements: list[tuple[str, int, list[tuple[str, ...]]]] = []
    for line in data[:end].decode("ascii", errors="replace").splitlines()[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format" and len(words) >= 2:
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property" and elements and len(words) >= 3:
            types = tuple(words[2:4]) if words[1] == "list" and len(words) == 5 else (words[1],)
            if any(t not in _PLY_TYPES for t in types):
                raise bad(f"unknown property type in '{line.strip()}'")
            elements[-1][2].append(("list", *types) if words[1] == "list" else ("scalar", *types))
        else:
            raise bad(f"unexpected header line '{line.strip()}'")
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise bad(f"unknown format '{fmt}'")
    return fmt, elements, body


def _ply_binary_size(elements: list[tuple[str, int, list[tuple[str, ...]]]], body: bytes, endian: str) -> int:
    """Bytes the elements need; lists are walked (fast path: every record has the first record's size)."""
    import struct

    pos = 0
    for _name, count, props in elements:
        if all(p[0] == "scalar" for p in props):
            pos += count * sum(struct.calcsize(_PLY_TYPES[p[1]]) for p in props)
            continue
        done = 0
        if count:
            record_start, size, list_offsets = pos, 0, []
            for p in props:  # the first record, to guess a uniform record layout
                if p[0] == "scalar":
                    size += struct.calcsize(_PLY_TYPES[p[1]])
                    continue
                if record_start + size + struct.calcsize(_PLY_TYPES[p[1]]) > len(body):
                    return len(body) + 1
                n = struct.unpack_from(endian + _PLY_TYPES[p[1]], body, record_start + size)[0]
                list_offsets.append((size, p[1], n))
                size += struct.calcsize(_PLY_TYPES[p[1]]) + n * struct.calcsize(_PLY_TYPES[p[2]])
            uniform = size > 0 and record_start + count * size <= len(body)
            for offset, count_type, n in list_offsets if uniform else ():
                counts = np.ndarray(
                    (count,), dtype=np.dtype(endian + _PLY_TYPES[count_type]), buffer=body,
                    offset=record_start + offset, strides=(size,),
                )
                uniform = uniform and bool(np.all(counts == n))
            if uniform:
                pos, done = record_start + count * size, count
        for _ in range(done, count):  # mixed polygon sizes: walk record by record
            for p in props:
                fmt = endian + _PLY_TYPES[p[1]]
                if pos + struct.calcsize(fmt) > len(body):
                    return len(body) + 1
                if p[0] == "scalar":
                    pos += struct.calcsize(fmt)
                else:
                    n = struct.unpack_from(fmt, body, pos)[0]
                    pos += struct.calcsize(fmt) + n * struct.calcsize(_PLY_TYPES[p[2]])
    return pos


def _check_ply(path: Path) -> None:
    """Refuse PLY files VTK cannot read safely.

    Why: vtkPLYReader crashes the whole process (segmentation fault) on a truncated binary PLY,
    calls ``exit()`` on some broken headers, and silently fills a truncated ASCII PLY with
    zeros. Slicer shares these failures. So the header is checked and the body length compared
    with what the header declares before VTK sees the file; VTK still does the reading.
    """
    fmt, elements, body = _ply_header(path, path.read_bytes())
    if fmt == "ascii":
        tokens = body.split()
        pos = 0
        try:
            for _name, count, props in elements:
                for _ in range(count):
                    for p in props:
                        pos += 1 + (int(float(tokens[pos])) if p[0] == "list" else 0)
        except (IndexError, ValueError):
            pos = len(tokens) + 1
        complete = pos <= len(tokens)
    else:
        complete = _ply_binary_size(elements, body, "<" if fmt == "binary_little_endian" else ">") <= len(body)
    if not complete:
        declared = ", ".join(f"{count} {name}" for name, count, _ in elements)
        raise InputFileError(
            f"{path.name} ends before the {declared} its header declares: the file is truncated. Export it again."
        )


def _read_ply(path: Path, log: _VtkLog) -> tuple[Any, str | None]:
    from vtkmodules.vtkIOPLY import vtkPLYReader

    _check_ply(path)

    reader = log.watch(vtkPLYReader())
    reader.SetFileName(str(path))
    reader.Update()
    comments = reader.GetComments()
    space = None
    for i in range(comments.GetNumberOfValues() if comments is not None else 0):
        space = _space_in_text(comments.GetValue(i))
        if space:
            break
    return reader.GetOutput(), space


def _read_obj(path: Path, log: _VtkLog) -> tuple[Any, str | None]:
    from vtkmodules.vtkIOGeometry import vtkOBJReader

    reader = log.watch(vtkOBJReader())
    reader.SetFileName(str(path))
    reader.Update()
    return reader.GetOutput(), _space_in_text(reader.GetComment())


_READERS = {".vtk": _read_vtk, ".vtp": _read_vtp, ".stl": _read_stl, ".ply": _read_ply, ".obj": _read_obj}


def _mesh_suffix(path: Path) -> str:
    suffix = full_suffix(path)
    if suffix not in MESH_SUFFIXES:
        raise InputFileError(f"{path.name}: unsupported mesh format '{suffix}'. Use one of {', '.join(MESH_SUFFIXES)}.")
    return suffix


def read_mesh(path: str | os.PathLike) -> Mesh:
    """Read a surface mesh into RAS, honouring the file's ``SPACE`` tag (untagged files are LPS, as in Slicer).

    The mesh is named after the file. Raises :class:`InputFileError` for missing, empty, corrupt
    or non-surface files, including files with no triangles (a truncated file often reads as
    points only, without any error from VTK).
    """
    p = Path(path)
    suffix = _mesh_suffix(p)
    if not p.exists():
        raise InputFileError(f"The mesh file {p} does not exist. Check the path.")
    if p.is_dir():
        raise InputFileError(f"{p} is a folder; choose a mesh file ({', '.join(MESH_SUFFIXES)}).")
    if p.stat().st_size == 0:
        raise InputFileError(f"{p.name} is empty. Choose a mesh saved by Slicer or another program.")
    with _captured_vtk_messages() as log:
        polydata, space = _READERS[suffix](p, log)
    if log.text:
        raise InputFileError(
            f"{p.name} could not be read as a {suffix} mesh ({log.first_message()}). "
            "The file may be truncated or corrupt; export it again."
        )
    if polydata is None or polydata.GetNumberOfPoints() == 0:
        raise InputFileError(f"{p.name} contains no mesh points. Check that it is a complete {suffix} surface.")
    if (space or "LPS") == "LPS":
        polydata = _flip_ras_lps(polydata)
    try:
        mesh = mesh_from_polydata(polydata, name=_stem(p))
    except InvalidInputError as exc:
        raise InputFileError(f"{p.name} holds an unusable mesh: {exc}") from exc
    if len(mesh.triangles) == 0:
        raise InputFileError(
            f"{p.name} has points but no surface triangles; it may be truncated or hold only a point cloud. "
            "Export the surface again."
        )
    return mesh


def _stem(path: Path) -> str:
    return path.name[: len(path.name) - len(full_suffix(path))] or path.name


# ----------------------------------------------------------------------------- writers


def _write_vtk(polydata: vtkPolyData, tmp: Path, cs: str, log: _VtkLog) -> bool:
    from vtkmodules.vtkIOLegacy import vtkPolyDataWriter

    writer = log.watch(vtkPolyDataWriter())
    writer.SetFileVersion(42)  # as Slicer: 5.1 is unreadable by VTK < 9 and most other software
    writer.SetFileTypeToBinary()
    writer.SetHeader(f"{SLICER_HEADER} {_SPACE_TAG}={cs}")
    writer.SetInputData(polydata)
    writer.SetFileName(str(tmp))
    return bool(writer.Write())


def _write_vtp(polydata: vtkPolyData, tmp: Path, cs: str, log: _VtkLog) -> bool:
    from vtkmodules.vtkCommonCore import vtkStringArray
    from vtkmodules.vtkIOXML import vtkXMLPolyDataWriter

    data = type(polydata)()
    data.ShallowCopy(polydata)
    tag = vtkStringArray()
    tag.SetName(_SPACE_TAG)
    tag.InsertNextValue(cs)
    data.GetFieldData().AddArray(tag)
    writer = log.watch(vtkXMLPolyDataWriter())
    writer.SetCompressorTypeToZLib()
    writer.SetDataModeToAppended()
    writer.SetInputData(data)
    writer.SetFileName(str(tmp))
    return bool(writer.Write())


def _write_stl(polydata: vtkPolyData, tmp: Path, cs: str, log: _VtkLog) -> bool:
    from vtkmodules.vtkIOGeometry import vtkSTLWriter

    writer = log.watch(vtkSTLWriter())
    writer.SetFileTypeToBinary()
    writer.SetHeader(f"{SLICER_HEADER} {_SPACE_TAG}={cs}")
    writer.SetInputData(polydata)
    writer.SetFileName(str(tmp))
    return bool(writer.Write())


def _write_ply(polydata: vtkPolyData, tmp: Path, cs: str, log: _VtkLog) -> bool:
    from vtkmodules.vtkCommonCore import vtkFloatArray
    from vtkmodules.vtkIOPLY import vtkPLYWriter

    data = type(polydata)()
    data.ShallowCopy(polydata)
    normals = data.GetPointData().GetNormals()
    if normals is not None and normals.GetDataType() != vtkFloatArray().GetDataType():
        as_float = vtkFloatArray()  # the PLY writer stores float normals only and warns otherwise
        as_float.DeepCopy(normals)
        data.GetPointData().SetNormals(as_float)
    writer = log.watch(vtkPLYWriter())
    writer.SetFileTypeToBinary()
    writer.AddComment(f"{_SPACE_TAG}={cs}")
    writer.SetInputData(data)
    writer.SetFileName(str(tmp))
    return bool(writer.Write())


def _write_obj(polydata: vtkPolyData, tmp: Path, cs: str, log: _VtkLog) -> bool:
    """vtkOBJWriter (no render window, unlike Slicer's exporter), then Slicer's header comment on line 1."""
    from vtkmodules.vtkIOGeometry import vtkOBJWriter

    writer = log.watch(vtkOBJWriter())
    writer.SetInputData(polydata)
    writer.SetFileName(str(tmp))
    if not writer.Write():
        return False
    body = tmp.read_bytes()
    if body.startswith(b"# Generated by Visualization Toolkit\n"):
        body = body.split(b"\n", 1)[1]
    tmp.write_bytes(f"# {SLICER_HEADER} {_SPACE_TAG}={cs}\n".encode("ascii") + body)
    return True


_WRITERS = {".vtk": _write_vtk, ".vtp": _write_vtp, ".stl": _write_stl, ".ply": _write_ply, ".obj": _write_obj}


def _write_polydata(polydata: vtkPolyData, suffix: str, tmp: Path, cs: str, target: Path) -> None:
    os_error: OSError | None = None
    with _captured_vtk_messages() as log:
        try:
            ok = _WRITERS[suffix](polydata, tmp, cs, log)
        except OSError as exc:  # the OBJ header rewrite
            ok, os_error = False, exc
    if not ok or log.text or not tmp.exists():
        detail = log.first_message() if log.text else os_error.strerror if os_error else "the writer reported a failure"
        raise InputFileError(f"Could not write {target}: {detail}. Choose a folder you can write to.")


def write_mesh(mesh: Mesh, path: str | os.PathLike, coordinate_system: str = "LPS") -> Path:
    """Write ``mesh`` with Slicer's ``SPACE`` tag (LPS by project convention), atomically; returns the path.

    ``.stl`` and ``.ply`` store float32 coordinates (about 1e-5 mm at 100 mm); ``.vtk``, ``.vtp``
    and ``.obj`` keep doubles. Per-vertex arrays survive in ``.vtk`` and ``.vtp``.
    """
    if not isinstance(mesh, Mesh):
        raise InvalidInputError(f"Expected a Mesh to write, got {type(mesh).__name__}.")
    p = Path(path)
    suffix = _mesh_suffix(p)
    cs = str(coordinate_system).strip().upper()
    if cs not in ("LPS", "RAS"):
        raise InvalidInputError(f"Coordinate system must be 'LPS' or 'RAS', got {coordinate_system!r}.")
    if len(mesh.triangles) == 0:
        raise InvalidInputError(f"{_where(mesh)} has no triangles; there is no surface to write to {p.name}.")
    polydata = mesh_to_polydata(mesh)
    if cs == "LPS":
        polydata = _flip_ras_lps(polydata)
    try:
        with atomic_output(p) as tmp:
            _write_polydata(polydata, suffix, tmp, cs, p)
    except OSError as exc:  # moving into place failed (e.g. the target is a folder)
        raise InputFileError(f"Could not write {p}: {exc.strerror or exc}. Choose another file name.") from exc
    return p


def _where(mesh: Mesh) -> str:
    return f"Mesh '{mesh.name}'" if mesh.name else "The mesh"

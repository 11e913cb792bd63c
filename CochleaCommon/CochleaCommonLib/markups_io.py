"""Read and write Slicer point lists (``.fcsv`` and ``.mrk.json``) exactly as Slicer does.

Why not slicerio or a quick ``np.loadtxt``: landmark ground truth lives in these files, and the
mistakes that matter are silent ones: a missed LPS flip, a label with a comma splitting into two
columns, a missing column shifting every label by one. This module reproduces the behaviour of
Slicer's own storage nodes (``vtkMRMLMarkupsFiducialStorageNode``, ``vtkMRMLMarkupsJsonStorageNode``;
checked against slicer-core 5.13 in ``Testing/mrml``) and refuses what it cannot read exactly.

Conventions (see DESIGN.md): RAS in memory, LPS in the files we write.

Choices where Slicer is silent or lenient, and why:

* ``.fcsv`` without a ``# CoordinateSystem`` line: Slicer uses its storage node's default, which
  has been LPS since Slicer 4.11 and was RAS before. We follow the Slicer that wrote the file:
  LPS if the version line says 4.11 or newer (or is not a number, as slicer-core writes), RAS for
  older versions. Slicer 5 itself assumes LPS for every version; it only differs for header-less
  files claiming a version older than 4.11, which Slicer never wrote (it always writes the line).
* ``CoordinateSystem`` values other than ``LPS``, ``RAS``, ``0`` (RAS) and ``1`` (LPS) are refused:
  Slicer silently reads e.g. ``lps`` as RAS, which would flip the points.
* Rows need the 14 declared columns; Slicer 5 adds undeclared trailing fields (``2,0``: position
  status and a flag), which are accepted. The ``vis``/``sel``/``lock`` fields must be 0 or 1, which
  catches a missing or extra column instead of shifting labels silently.
* A point whose position status is *missing* or *undefined* (not placed in Slicer) is refused with
  its label: its stored coordinates are meaningless.
* ``.mrk.json``: the first markup of type ``Fiducial`` is read (Slicer needs it to be the first);
  ``coordinateUnits`` other than ``mm`` are refused (Slicer ignores the unit and would misplace
  points by a factor of 1000).
* Unversioned Slicer 3 ``.fcsv`` files are refused: re-save them in a current Slicer.
"""

from __future__ import annotations

import csv
import json
import os
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_output, full_suffix
from .errors import InputFileError, InvalidInputError
from .geometry import lps_to_ras, ras_to_lps
from .points import PointList

#: Version written in our ``.fcsv`` header; the row layout below is the one Slicer 5.2 to 5.13 write.
FCSV_VERSION = "5.2"
#: The declared columns of a Slicer 4.x/5.x ``.fcsv`` (rows may carry undeclared trailing fields).
FCSV_COLUMNS = ("id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel", "lock", "label", "desc", "associatedNodeID")
#: Schema URL written in ``.mrk.json`` files (readable by Slicer 5.0 and newer).
MRK_JSON_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
#: Markups file extensions, for dispatch and messages.
MARKUPS_SUFFIXES = (".fcsv", ".mrk.json", ".json")

_FCSV_CS = {"LPS": "LPS", "1": "LPS", "RAS": "RAS", "0": "RAS"}
_UNPLACED_FCSV_STATUS = {"0": "undefined", "3": "missing"}
_UNPLACED_JSON_STATUS = ("undefined", "missing")


# ----------------------------------------------------------------------------- shared helpers


def _coordinate_system_arg(coordinate_system: str) -> str:
    cs = str(coordinate_system).strip().upper()
    if cs not in ("LPS", "RAS"):
        raise InvalidInputError(f"Coordinate system must be 'LPS' or 'RAS', got {coordinate_system!r}.")
    return cs


def _file_points_to_ras(points: np.ndarray, cs: str) -> np.ndarray:
    return lps_to_ras(points) if cs == "LPS" and len(points) else points


def _ras_to_file_points(points: np.ndarray, cs: str) -> np.ndarray:
    return ras_to_lps(points) if cs == "LPS" and len(points) else points


def _check_point_list(points: Any) -> PointList:
    if not isinstance(points, PointList):
        raise InvalidInputError(f"Expected a PointList to write, got {type(points).__name__}.")
    return points


def _read_text(path: str | os.PathLike, kind: str) -> tuple[Path, str]:
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"The {kind} file {p} does not exist. Check the path.")
    if p.is_dir():
        raise InputFileError(f"{p} is a folder; choose a {kind} file.")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputFileError(f"Cannot read {p}: {exc.strerror}. Check the file permissions.") from exc
    if not data.strip():
        raise InputFileError(f"{p.name} is empty. Choose a {kind} file saved by Slicer.")
    try:
        return p, data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Old files written on Windows may hold Latin-1 labels; every byte decodes, bad files fail later.
        return p, data.decode("latin-1")


def _write_text(path: str | os.PathLike, text: str) -> Path:
    p = Path(path)
    try:
        with atomic_output(p) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    except OSError as exc:
        raise InputFileError(f"Could not write {p}: {exc.strerror or exc}. Choose a folder you can write to.") from exc
    return p


def _stem(path: Path) -> str:
    name = path.name
    suffix = full_suffix(path)
    return name[: len(name) - len(suffix)] if suffix and name.lower().endswith(suffix) else path.stem


# ----------------------------------------------------------------------------- .fcsv


def format_fcsv_number(value: float) -> str:
    """Format a coordinate the way Slicer's fcsv writer does (``itk::NumberToString``).

    That is the shortest text that reads back to the same double, in ECMAScript notation:
    ``1``, ``-0.5``, ``0.000001``, ``1e-7``, ``100000000000000000000``, ``1e+21``; ``-0`` is ``0``.
    Matching it byte for byte keeps our files diff-able against Slicer's.
    """
    v = float(value)
    if v == 0.0:
        return "0"
    sign = "-" if v < 0 else ""
    digits_tuple = Decimal(repr(abs(v))).normalize().as_tuple()
    digits = "".join(str(d) for d in digits_tuple.digits)
    k = len(digits)
    n = k + int(digits_tuple.exponent)  # position of the decimal point relative to the digits
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        exponent = n - 1
        mantissa = digits[0] + ("." + digits[1:] if k > 1 else "")
        text = f"{mantissa}e{'+' if exponent > 0 else '-'}{abs(exponent)}"
    return sign + text


def _fcsv_quote(text: str, what: str, label: str) -> str:
    if "\n" in text or "\r" in text:
        raise InvalidInputError(
            f"The {what} of point {label!r} contains a line break, which a .fcsv file cannot store. "
            "Remove it or save as .mrk.json."
        )
    if "," in text or '"' in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def _version_tuple(version: str) -> tuple[int, int] | None:
    match = re.search(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _default_fcsv_cs(version: str) -> str:
    parsed = _version_tuple(version)
    return "RAS" if parsed is not None and parsed < (4, 11) else "LPS"


def _parse_flag(field: str, column: str, p: Path, line_no: int) -> None:
    if field.strip() not in ("", "0", "1"):
        raise InputFileError(
            f"{p.name}, line {line_no}: column '{column}' should be 0 or 1 but holds {field!r}, so a column is "
            "missing or extra in this row. Compare it with the '# columns' header, fix the row, or save the "
            "points again from Slicer."
        )


def _parse_fcsv_row(fields: list[str], p: Path, line_no: int) -> tuple[list[float], str, str]:
    if len(fields) < len(FCSV_COLUMNS):
        raise InputFileError(
            f"{p.name}, line {line_no}: only {len(fields)} of the {len(FCSV_COLUMNS)} columns "
            f"({','.join(FCSV_COLUMNS)}) are present. Fix the row or save the points again from Slicer."
        )
    xyz = []
    for column, field in zip(("x", "y", "z"), fields[1:4]):
        try:
            value = float(field)
        except ValueError:
            value = float("nan")
        if not np.isfinite(value):
            raise InputFileError(
                f"{p.name}, line {line_no}: coordinate {column} is {field!r}, not a number. "
                "Fix the row or save the points again from Slicer."
            )
        xyz.append(value)
    for column, field in zip(FCSV_COLUMNS[4:8], fields[4:8]):
        if field.strip():
            try:
                float(field)
            except ValueError:
                raise InputFileError(
                    f"{p.name}, line {line_no}: orientation column '{column}' holds {field!r}, not a number, so a "
                    "column is missing or extra in this row. Fix the row or save the points again from Slicer."
                ) from None
    for column, field in zip(FCSV_COLUMNS[8:11], fields[8:11]):
        _parse_flag(field, column, p, line_no)
    label, description = fields[11], fields[12]
    if len(fields) > len(FCSV_COLUMNS):
        status = _UNPLACED_FCSV_STATUS.get(fields[len(FCSV_COLUMNS)].strip())
        if status is not None:
            raise InvalidInputError(
                f"{p.name}, line {line_no}: point {label!r} has no position (Slicer marks it '{status}'). "
                "Place the point or delete it in Slicer, then save the file again."
            )
    return xyz, label, description


def read_fcsv(path: str | os.PathLike) -> PointList:
    """Read a Slicer 4.x/5.x ``.fcsv`` point list into RAS, keeping labels and descriptions.

    The list is named after the file (``.fcsv`` stores no name). Raises :class:`InputFileError`
    for unreadable files or rows (naming the line) and :class:`InvalidInputError` for points
    that were never placed.
    """
    p, text = _read_text(path, "markups (.fcsv)")
    version: str | None = None
    cs: str | None = None
    rows: list[tuple[int, str]] = []
    for line_no, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if line.startswith("#"):
            key, sep, value = line[1:].partition("=")
            key, value = key.strip(), value.strip()
            if not sep:
                continue
            if key == "Markups fiducial file version":
                version = value
            elif key == "CoordinateSystem":
                if value not in _FCSV_CS:
                    raise InputFileError(
                        f"{p.name}, line {line_no}: unknown coordinate system {value!r}; expected LPS, RAS, 1 (LPS) "
                        "or 0 (RAS). Fix the header line so the points are not flipped."
                    )
                cs = _FCSV_CS[value]
            elif key == "columns":
                declared = [c.strip() for c in value.split(",")]
                if [c.lower() for c in declared[: len(FCSV_COLUMNS)]] != [c.lower() for c in FCSV_COLUMNS]:
                    raise InputFileError(
                        f"{p.name}, line {line_no}: the columns are '{value}', but a Slicer point file has "
                        f"'{','.join(FCSV_COLUMNS)}'. Save the points again from Slicer."
                    )
        elif line.strip():
            if version is None:
                raise InputFileError(
                    f"{p.name}, line {line_no}: a point row comes before the '# Markups fiducial file version' "
                    "header, so this is not a Slicer 4 or 5 point file (Slicer 3 files are not supported). "
                    "Open it in Slicer and save it again."
                )
            rows.append((line_no, line))
    if version is None:
        raise InputFileError(
            f"{p.name} has no '# Markups fiducial file version' header line; it is not a Slicer point file."
        )
    if cs is None:
        cs = _default_fcsv_cs(version)
    positions, labels, descriptions = [], [], []
    for line_no, line in rows:
        fields = next(csv.reader([line]))
        xyz, label, description = _parse_fcsv_row(fields, p, line_no)
        positions.append(xyz)
        labels.append(label)
        descriptions.append(description)
    file_points = np.array(positions, dtype=np.float64).reshape(-1, 3)
    return PointList(_file_points_to_ras(file_points, cs), labels, name=_stem(p), descriptions=descriptions)


def write_fcsv(points: PointList, path: str | os.PathLike, coordinate_system: str = "LPS") -> Path:
    """Write ``points`` as a Slicer 5 ``.fcsv`` (header and rows as Slicer writes them), atomically.

    ``coordinate_system`` is the one stored in the file (LPS by project convention). A label or
    description with a line break is refused, since the format cannot hold it.
    """
    pts = _check_point_list(points)
    cs = _coordinate_system_arg(coordinate_system)
    xyz = _ras_to_file_points(pts.positions_ras, cs)
    lines = [
        f"# Markups fiducial file version = {FCSV_VERSION}",
        f"# CoordinateSystem = {cs}",
        f"# columns = {','.join(FCSV_COLUMNS)}",
    ]
    assert pts.descriptions is not None
    for i, (label, description) in enumerate(zip(pts.labels, pts.descriptions)):
        coords = ",".join(format_fcsv_number(v) for v in xyz[i])
        label_field = _fcsv_quote(label, "label", label)
        desc_field = _fcsv_quote(description, "description", label)
        # id, x,y,z, orientation quaternion as Slicer writes it, vis, sel, lock, label, desc,
        # associatedNodeID, then Slicer 5's undeclared position status (2 = defined) and flag.
        lines.append(f"{i + 1},{coords},0,0,0,1,1,1,0,{label_field},{desc_field},,2,0")
    return _write_text(path, "\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- .mrk.json


def _json_error(p: Path, message: str) -> InputFileError:
    return InputFileError(f"{p.name}: {message} Save the points again from Slicer.")


def _json_coordinate_system(markup: dict, p: Path) -> str:
    cs = markup.get("coordinateSystem", "LPS")
    if cs not in ("LPS", "RAS"):
        raise _json_error(p, f"unknown coordinateSystem {cs!r}; expected \"LPS\" or \"RAS\".")
    units = markup.get("coordinateUnits", "mm")
    unit = units[0] if isinstance(units, list) and units else units
    if unit != "mm":
        raise InvalidInputError(
            f"{p.name}: point coordinates are in {units!r}, but millimetres are needed (Slicer itself ignores the "
            "unit, so the points would be misplaced). Convert them to mm."
        )
    return cs


def _json_point(cp: Any, index: int, p: Path) -> tuple[list[float], str, str]:
    if not isinstance(cp, dict):
        raise _json_error(p, f"control point {index + 1} is not an object.")
    label = cp.get("label", "")
    label = "" if label is None else str(label)
    status = cp.get("positionStatus", "defined")
    if status in _UNPLACED_JSON_STATUS:
        raise InvalidInputError(
            f"{p.name}: point {label!r} (control point {index + 1}) has no position (Slicer marks it '{status}'). "
            "Place the point or delete it in Slicer, then save the file again."
        )
    position = cp.get("position")
    valid = (
        isinstance(position, list)
        and len(position) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in position)
        and all(np.isfinite(position))
    )
    if not valid:
        raise _json_error(p, f"control point {index + 1} ({label!r}) has no valid position [x, y, z]: {position!r}.")
    description = cp.get("description", "")
    return [float(v) for v in position], label, "" if description is None else str(description)


def read_mrk_json(path: str | os.PathLike) -> PointList:
    """Read the first point list (markup of type ``Fiducial``) of a Slicer ``.mrk.json`` file, into RAS.

    Keeps labels, descriptions and the list's ``name`` (the file name when it has none). Raises
    :class:`InputFileError` for broken JSON (with line and column) or files without a point list.
    """
    p, text = _read_text(path, "markups (.mrk.json)")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(
            f"{p.name}, line {exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg}). "
            "The file may be truncated; save the points again from Slicer."
        ) from exc
    markups = doc.get("markups") if isinstance(doc, dict) else None
    if not isinstance(markups, list):
        raise _json_error(p, "is not a Slicer markups file (no \"markups\" list).")
    fiducials = [m for m in markups if isinstance(m, dict) and m.get("type") == "Fiducial"]
    if not fiducials:
        types = ", ".join(sorted({str(m.get("type")) for m in markups if isinstance(m, dict)})) or "none"
        raise InputFileError(
            f"{p.name} holds no point list (markup type 'Fiducial'); it holds: {types}. Choose a point list file."
        )
    markup = fiducials[0]
    cs = _json_coordinate_system(markup, p)
    control_points = markup.get("controlPoints") or []
    if not isinstance(control_points, list):
        raise _json_error(p, "\"controlPoints\" is not a list.")
    parsed = [_json_point(cp, i, p) for i, cp in enumerate(control_points)]
    file_points = np.array([xyz for xyz, _, _ in parsed], dtype=np.float64).reshape(-1, 3)
    name = markup.get("name")
    return PointList(
        _file_points_to_ras(file_points, cs),
        [label for _, label, _ in parsed],
        name=name if isinstance(name, str) and name else _stem(p),
        descriptions=[desc for _, _, desc in parsed],
    )


_NUMBER_ARRAY = re.compile(r"\[\s*\n\s*([-+0-9.eE]+(?:,\s*\n\s*[-+0-9.eE]+)*)\s*\n\s*\]")


def write_mrk_json(points: PointList, path: str | os.PathLike, coordinate_system: str = "LPS") -> Path:
    """Write ``points`` as a Slicer ``.mrk.json`` point list (schema v1.0.3), atomically.

    Positions are stored in ``coordinate_system`` (LPS by project convention); the list's name is
    stored too, and Slicer uses it as the node name.
    """
    pts = _check_point_list(points)
    cs = _coordinate_system_arg(coordinate_system)
    xyz = _ras_to_file_points(pts.positions_ras, cs)
    orientation = [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0] if cs == "LPS" else list(np.eye(3).ravel())
    assert pts.descriptions is not None
    control_points = [
        {
            "id": str(i + 1),
            "label": label,
            "description": description,
            "associatedNodeID": "",
            "position": [float(v) for v in xyz[i]],
            "orientation": orientation,
            "selected": True,
            "locked": False,
            "visibility": True,
            "positionStatus": "defined",
        }
        for i, (label, description) in enumerate(zip(pts.labels, pts.descriptions))
    ]
    markup: dict[str, Any] = {"type": "Fiducial"}
    if pts.name:
        markup["name"] = pts.name
    markup.update(
        {
            "coordinateSystem": cs,
            "coordinateUnits": "mm",
            "locked": False,
            "fixedNumberOfControlPoints": False,
            "labelFormat": "%N-%d",
            "lastUsedControlPointNumber": len(pts),
            "controlPoints": control_points,
            "measurements": [],
        }
    )
    text = json.dumps({"@schema": MRK_JSON_SCHEMA, "markups": [markup]}, indent=4, ensure_ascii=False)
    # Keep number arrays on one line, as Slicer does (strings cannot match: their newlines are escaped).
    text = _NUMBER_ARRAY.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)
    return _write_text(path, text + "\n")


# ----------------------------------------------------------------------------- dispatch


def _markups_format(path: str | os.PathLike) -> str:
    suffix = full_suffix(path)
    if suffix == ".fcsv":
        return "fcsv"
    if suffix in (".mrk.json", ".json"):
        return "json"
    raise InputFileError(
        f"{Path(path).name}: unsupported point file type '{suffix}'. Use .fcsv or .mrk.json (Slicer markups)."
    )


def read_markups(path: str | os.PathLike) -> PointList:
    """Read a point list from ``.fcsv`` or ``.mrk.json`` (also ``.json`` holding the markups schema)."""
    return read_fcsv(path) if _markups_format(path) == "fcsv" else read_mrk_json(path)


def write_markups(points: PointList, path: str | os.PathLike, coordinate_system: str = "LPS") -> Path:
    """Write a point list as ``.fcsv`` or ``.mrk.json`` (chosen by the extension), atomically."""
    if _markups_format(path) == "fcsv":
        return write_fcsv(points, path, coordinate_system)
    return write_mrk_json(points, path, coordinate_system)

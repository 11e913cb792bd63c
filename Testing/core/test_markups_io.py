""".fcsv and .mrk.json reading/writing: coordinate systems, Slicer's row layout, broken files.

Slicer's own storage nodes are compared with these readers/writers in
``Testing/mrml/test_markups_mesh_vs_slicer.py``; here everything runs in plain CPython.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from CochleaCommonLib.errors import InputFileError, InvalidInputError
from CochleaCommonLib.markups_io import (
    FCSV_COLUMNS,
    MRK_JSON_SCHEMA,
    format_fcsv_number,
    read_fcsv,
    read_markups,
    read_mrk_json,
    write_fcsv,
    write_markups,
    write_mrk_json,
)
from CochleaCommonLib.points import PointList

REPO_ROOT = Path(__file__).resolve().parents[2]
REFERENCE = REPO_ROOT.parent / "shared" / "reference" / "smicnet_case0002"
needs_reference = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason=f"the SMICNet reference files are not at {REFERENCE} (../shared absent)"
)

COLUMNS_LINE = "# columns = " + ",".join(FCSV_COLUMNS)


def fcsv_text(rows, version="5.2", cs="LPS", columns=COLUMNS_LINE):
    header = [f"# Markups fiducial file version = {version}"]
    if cs is not None:
        header.append(f"# CoordinateSystem = {cs}")
    if columns is not None:
        header.append(columns)
    return "\n".join(header + list(rows)) + "\n"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


def tricky_points() -> PointList:
    return PointList(
        np.array([[1.0, -2.5, 3.0], [130.75634090678676, 1e-7, -80.07242698303585], [1 / 3, -2 / 3, 0.1]]),
        ["a, b", 'say "hi"', "Ünïcode ✓"],
        name="tricky",
        descriptions=['d"q, with comma', "", " spaced "],
    )


# ----------------------------------------------------------------------------- reference files


@needs_reference
@pytest.mark.shared
def test_reference_left_file():
    pts = read_fcsv(REFERENCE / "Cochlea_left.fcsv")
    assert pts.labels == ["Helicotrema", "Modiolus base", "Round Window"]
    assert pts.name == "Cochlea_left"
    np.testing.assert_allclose(
        pts.positions_ras[0], [-130.75634090678676, -100.68547973257667, -80.07242698303585], rtol=0, atol=1e-9
    )
    assert pts.descriptions == ["", "", ""]


@needs_reference
@pytest.mark.shared
def test_reference_right_file_version_4_13():
    pts = read_markups(REFERENCE / "Cochlea_right.fcsv")
    assert pts.labels == ["Cochlea_r-1", "Cochlea_r-2", "Cochlea_r-3"]
    np.testing.assert_allclose(
        pts.positions_ras[2], [-68.264749315128, -138.1902400484744, -89.01939581507969], rtol=0, atol=1e-9
    )


# ----------------------------------------------------------------------------- reading .fcsv

ROW = '1,10,20,30,0,0,0,1,1,1,0,"a, b","d""q",vtkMRMLScalarVolumeNode1,2,0'


@pytest.mark.parametrize(
    "cs, expected",
    [("LPS", [-10, -20, 30]), ("1", [-10, -20, 30]), ("RAS", [10, 20, 30]), ("0", [10, 20, 30]),
     (" RAS ", [10, 20, 30])],
)
def test_coordinate_system_values(tmp_path, cs, expected):
    pts = read_fcsv(write(tmp_path, "p.fcsv", fcsv_text([ROW], cs=cs)))
    np.testing.assert_array_equal(pts.positions_ras, [expected])
    assert pts.labels == ["a, b"]
    assert pts.descriptions == ['d"q']


@pytest.mark.parametrize(
    "version, expected",
    [("5.2", [-10, -20, 30]), ("4.11", [-10, -20, 30]), ("4.13", [-10, -20, 30]),
     ("slicer-core-5.13.31053.0", [-10, -20, 30]), ("4.10", [10, 20, 30]), ("4.5", [10, 20, 30])],
)
def test_missing_coordinate_system_follows_the_writing_slicer(tmp_path, version, expected):
    pts = read_fcsv(write(tmp_path, "p.fcsv", fcsv_text([ROW], version=version, cs=None)))
    np.testing.assert_array_equal(pts.positions_ras, [expected])


@pytest.mark.parametrize("cs", ["lps", "2", "XYZ", ""])
def test_unknown_coordinate_system_is_refused(tmp_path, cs):
    with pytest.raises(InputFileError, match="line 2: unknown coordinate system"):
        read_fcsv(write(tmp_path, "p.fcsv", fcsv_text([ROW], cs=cs)))


def test_slicer4_row_without_trailing_fields_and_empty_lines(tmp_path):
    text = fcsv_text(["", "1,1.5,2.5,3.5,0,0,0,1,1,1,0,apex,,", "", "2,-1,-2,-3,0,0,0,1,0,1,1,base,desc,"])
    pts = read_fcsv(write(tmp_path, "p.fcsv", text))
    assert pts.labels == ["apex", "base"]
    assert pts.descriptions == ["", "desc"]
    np.testing.assert_array_equal(pts.positions_ras, [[-1.5, -2.5, 3.5], [1, 2, -3]])


def test_crlf_and_byte_order_mark(tmp_path):
    text = fcsv_text([ROW]).replace("\n", "\r\n")
    path = tmp_path / "p.fcsv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    pts = read_fcsv(path)
    assert pts.labels == ["a, b"]
    np.testing.assert_array_equal(pts.positions_ras, [[-10, -20, 30]])


def test_too_few_columns_names_file_and_line(tmp_path):
    path = write(tmp_path, "broken.fcsv", fcsv_text([ROW, "2,10,20,30,0,0,0,1,1,1,0,label"]))
    with pytest.raises(InputFileError, match=r"broken\.fcsv, line 5: only 12 of the 14 columns"):
        read_fcsv(path)


def test_missing_middle_column_is_caught_despite_trailing_fields(tmp_path):
    # The 'ow' column is gone but Slicer 5's two trailing fields keep the count at 15: the label
    # would silently become the description if flags were not checked.
    row = "1,10,20,30,0,0,1,1,1,0,Helicotrema,,vtkMRMLScalarVolumeNode1,2,0"
    with pytest.raises(InputFileError, match=r"line 4: column 'lock' should be 0 or 1 but holds 'Helicotrema'"):
        read_fcsv(write(tmp_path, "p.fcsv", fcsv_text([row])))


def test_non_numeric_coordinate(tmp_path):
    with pytest.raises(InputFileError, match=r"line 4: coordinate y is 'abc'"):
        read_fcsv(write(tmp_path, "p.fcsv", fcsv_text(["1,10,abc,30,0,0,0,1,1,1,0,x,,"])))


def test_non_standard_columns_header(tmp_path):
    columns = "# columns = id,x,y,z,ox,oy,oz,ow,vis,sel,lock,label,desc,associatedNodeID"
    with pytest.raises(InputFileError, match="line 3: the columns are"):
        read_fcsv(write(tmp_path, "p.fcsv", fcsv_text([ROW], columns=columns)))


def test_extra_declared_columns_are_accepted(tmp_path):
    columns = COLUMNS_LINE + ",positionStatus,flag"
    assert read_fcsv(write(tmp_path, "p.fcsv", fcsv_text([ROW], columns=columns))).labels == ["a, b"]


def test_unversioned_slicer3_file_is_refused(tmp_path):
    with pytest.raises(InputFileError, match="line 1: a point row comes before"):
        read_fcsv(write(tmp_path, "p.fcsv", "apex,1,2,3,1,1\n"))


def test_header_only_file_is_an_empty_list(tmp_path):
    pts = read_fcsv(write(tmp_path, "none.fcsv", fcsv_text([])))
    assert len(pts) == 0 and pts.name == "none"


@pytest.mark.parametrize("status, word", [("3", "missing"), ("0", "undefined")])
def test_unplaced_point_is_refused_with_its_label(tmp_path, status, word):
    rows = [ROW, f"2,0,0,0,0,0,0,1,1,1,0,Round Window,,,{status},0"]
    with pytest.raises(InvalidInputError, match=f"line 5: point 'Round Window' has no position.*'{word}'"):
        read_fcsv(write(tmp_path, "p.fcsv", fcsv_text(rows)))


def test_preview_point_is_read(tmp_path):
    pts = read_fcsv(write(tmp_path, "p.fcsv", fcsv_text(["1,1,2,3,0,0,0,1,1,1,0,x,,,1,0"])))
    np.testing.assert_array_equal(pts.positions_ras, [[-1, -2, 3]])


@pytest.mark.parametrize("content", [b"", b"   \n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.fcsv"
    path.write_bytes(content)
    with pytest.raises(InputFileError, match="empty.fcsv is empty"):
        read_fcsv(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        read_markups(tmp_path / "nope.fcsv")
    (tmp_path / "dir.fcsv").mkdir()
    with pytest.raises(InputFileError, match="is a folder"):
        read_markups(tmp_path / "dir.fcsv")


# ----------------------------------------------------------------------------- writing .fcsv


@pytest.mark.parametrize(
    "value, text",
    [(1.0, "1"), (-2.5, "-2.5"), (0.0, "0"), (-0.0, "0"), (1e-6, "0.000001"), (1e-7, "1e-7"), (1e20, "1" + "0" * 20),
     (1e21, "1e+21"), (123456789012345678.0, "123456789012345680"), (130.75634090678676, "130.75634090678676"),
     (1 / 3, "0.3333333333333333"), (-1.5e-300, "-1.5e-300")],
)
def test_numbers_are_formatted_like_slicer(value, text):
    assert format_fcsv_number(value) == text
    assert float(text) == value


def test_fcsv_header_and_rows_are_slicers(tmp_path):
    pts = PointList([[1.0, -2.5, 3.0], [0.5, 0.25, -1.0]], ["apex", "a, b"], descriptions=["", 'd"q'])
    lines = write_fcsv(pts, tmp_path / "out.fcsv").read_text(encoding="utf-8").split("\n")
    assert lines[:3] == [
        "# Markups fiducial file version = 5.2",
        "# CoordinateSystem = LPS",
        "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID",
    ]
    assert lines[3] == "1,-1,2.5,3,0,0,0,1,1,1,0,apex,,,2,0"
    assert lines[4] == '2,-0.5,-0.25,-1,0,0,0,1,1,1,0,"a, b","d""q",,2,0'
    assert lines[5:] == [""]


@pytest.mark.parametrize("cs", ["LPS", "RAS"])
@pytest.mark.parametrize("suffix", [".fcsv", ".mrk.json"])
def test_round_trip_is_exact(tmp_path, cs, suffix):
    pts = tricky_points()
    path = write_markups(pts, tmp_path / f"out{suffix}", coordinate_system=cs)
    back = read_markups(path)
    np.testing.assert_array_equal(back.positions_ras, pts.positions_ras)
    assert back.labels == pts.labels
    assert back.descriptions == pts.descriptions
    assert back.name == ("tricky" if suffix == ".mrk.json" else "out")


@pytest.mark.parametrize("cs, sign", [("LPS", -1.0), ("RAS", 1.0)])
def test_files_hold_the_requested_coordinate_system(tmp_path, cs, sign):
    pts = PointList([[10.0, 20.0, 30.0]], ["p"])
    rows = write_fcsv(pts, tmp_path / "p.fcsv", cs).read_text().split("\n")
    assert rows[1] == f"# CoordinateSystem = {cs}"
    assert rows[3].startswith(f"1,{format_fcsv_number(sign * 10)},{format_fcsv_number(sign * 20)},30,")
    doc = json.loads(write_mrk_json(pts, tmp_path / "p.mrk.json", cs).read_text())
    markup = doc["markups"][0]
    assert markup["coordinateSystem"] == cs
    assert markup["controlPoints"][0]["position"] == [sign * 10.0, sign * 20.0, 30.0]


def test_line_break_in_label_is_refused_and_nothing_written(tmp_path):
    pts = PointList([[1.0, 2.0, 3.0]], ["two\nlines"])
    with pytest.raises(InvalidInputError, match="line break"):
        write_fcsv(pts, tmp_path / "p.fcsv")
    assert list(tmp_path.iterdir()) == []
    back = read_mrk_json(write_mrk_json(pts, tmp_path / "p.mrk.json"))  # JSON can hold it
    assert back.labels == ["two\nlines"]


@pytest.mark.parametrize("name", ["p.fcsv", "p.mrk.json"])
def test_failed_write_leaves_no_file(tmp_path, name):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(InputFileError):
        write_markups(tricky_points(), blocker / name)
    (tmp_path / "target.fcsv").mkdir()  # the target itself is a folder: os.replace fails
    with pytest.raises(InputFileError):
        write_fcsv(tricky_points(), tmp_path / "target.fcsv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_folder", "target.fcsv"]
    assert list((tmp_path / "target.fcsv").iterdir()) == []


def test_write_replaces_existing_file(tmp_path):
    path = tmp_path / "p.fcsv"
    write_fcsv(PointList([[1.0, 1.0, 1.0]], ["old"]), path)
    write_fcsv(PointList([[2.0, 2.0, 2.0]], ["new"]), path)
    assert read_fcsv(path).labels == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["p.fcsv"]


def test_writers_validate_arguments(tmp_path):
    with pytest.raises(InvalidInputError, match="'LPS' or 'RAS'"):
        write_fcsv(tricky_points(), tmp_path / "p.fcsv", coordinate_system="XYZ")
    with pytest.raises(InvalidInputError, match="PointList"):
        write_mrk_json(np.zeros((1, 3)), tmp_path / "p.mrk.json")
    with pytest.raises(InputFileError, match="unsupported point file type"):
        write_markups(tricky_points(), tmp_path / "p.csv")
    assert list(tmp_path.iterdir()) == []


def test_empty_list_round_trips(tmp_path):
    empty = PointList(np.zeros((0, 3)), [], name="none")
    assert len(read_fcsv(write_fcsv(empty, tmp_path / "e.fcsv"))) == 0
    assert len(read_mrk_json(write_mrk_json(empty, tmp_path / "e.mrk.json"))) == 0


# ----------------------------------------------------------------------------- .mrk.json


def mrk(control_points, **markup):
    body = {"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": control_points}
    body.update(markup)
    return {"@schema": MRK_JSON_SCHEMA, "markups": [body]}


def cp(label, position, **extra):
    return {"id": "1", "label": label, "position": position, **extra}


def write_json(tmp_path, doc, name="p.mrk.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_mrk_json_layout(tmp_path):
    doc = json.loads(write_mrk_json(tricky_points(), tmp_path / "p.mrk.json").read_text(encoding="utf-8"))
    assert doc["@schema"].endswith("markups-schema-v1.0.3.json#")
    markup = doc["markups"][0]
    assert (markup["type"], markup["name"], markup["coordinateUnits"]) == ("Fiducial", "tricky", "mm")
    point = markup["controlPoints"][0]
    assert point["positionStatus"] == "defined"
    assert point["orientation"] == [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0]
    assert set(point) >= {"id", "label", "description", "associatedNodeID", "position", "selected", "locked",
                          "visibility"}


@pytest.mark.parametrize("cs, expected", [("LPS", [-1, -2, 3]), ("RAS", [1, 2, 3]), (None, [-1, -2, 3])])
def test_mrk_json_coordinate_systems(tmp_path, cs, expected):
    doc = mrk([cp("p", [1, 2, 3])])
    if cs is None:
        del doc["markups"][0]["coordinateSystem"]  # the schema default is LPS, as Slicer reads it
    else:
        doc["markups"][0]["coordinateSystem"] = cs
    np.testing.assert_array_equal(read_mrk_json(write_json(tmp_path, doc)).positions_ras, [expected])


def test_mrk_json_reads_the_first_point_list_and_plain_json(tmp_path):
    doc = mrk([cp("apex", [1, 2, 3], description="top")], name="Landmarks")
    doc["markups"].insert(0, {"type": "Line", "controlPoints": [cp("l", [9, 9, 9])]})
    pts = read_markups(write_json(tmp_path, doc, name="points.json"))
    assert pts.labels == ["apex"] and pts.descriptions == ["top"] and pts.name == "Landmarks"


def test_mrk_json_without_name_uses_the_file_name(tmp_path):
    assert read_mrk_json(write_json(tmp_path, mrk([cp("p", [1, 2, 3])]), name="case7.mrk.json")).name == "case7"


def test_mrk_json_syntax_error_gives_line(tmp_path):
    path = tmp_path / "bad.mrk.json"
    path.write_text('{\n  "markups": [\n    {"type": "Fiducial",,}\n  ]\n}\n')
    with pytest.raises(InputFileError, match=r"bad\.mrk\.json, line 3, column \d+: not valid JSON"):
        read_mrk_json(path)


def test_mrk_json_truncated(tmp_path):
    text = write_mrk_json(tricky_points(), tmp_path / "p.mrk.json").read_text(encoding="utf-8")
    path = tmp_path / "cut.mrk.json"
    path.write_text(text[: len(text) // 2], encoding="utf-8")
    with pytest.raises(InputFileError, match="not valid JSON"):
        read_mrk_json(path)


@pytest.mark.parametrize(
    "doc, error, message",
    [
        ({"markups": [{"type": "Line"}, {"type": "Curve"}]}, InputFileError, "holds no point list.*Curve, Line"),
        ({"something": 1}, InputFileError, "not a Slicer markups file"),
        ([1, 2], InputFileError, "not a Slicer markups file"),
        (mrk([cp("p", [1, 2, 3])], coordinateSystem="lps"), InputFileError, "unknown coordinateSystem 'lps'"),
        (mrk([cp("p", [1, 2, 3])], coordinateUnits="um"), InvalidInputError, "'um'.*millimetres"),
        (mrk([cp("p", [1, 2])]), InputFileError, r"control point 1 \('p'\) has no valid position"),
        (mrk([cp("p", "")]), InputFileError, "no valid position"),
        (mrk([cp("p", [1, "2", 3])]), InputFileError, "no valid position"),
        (mrk([cp("Round Window", "", positionStatus="missing")]), InvalidInputError, "'Round Window'.*'missing'"),
        (mrk("nope"), InputFileError, "controlPoints"),
    ],
)
def test_mrk_json_problems(tmp_path, doc, error, message):
    with pytest.raises(error, match=message):
        read_mrk_json(write_json(tmp_path, doc))


def test_mrk_json_unit_array_in_mm_is_accepted(tmp_path):
    doc = mrk([cp("p", [1, 2, 3])], coordinateUnits=["mm", "UCUM", "millimeter"])
    assert read_mrk_json(write_json(tmp_path, doc)).labels == ["p"]


def test_unsupported_extension(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("1,2,3\n")
    with pytest.raises(InputFileError, match="unsupported point file type '.csv'"):
        read_markups(path)

"""The SimpleITK-free NRRD reader and writer give exactly what SimpleITK (and so Slicer) gives.

Why: ``nrrd_io`` exists only to skip the SimpleITK import; it is correct only while every file it
reads comes out as ITK reads it and every file it writes reads back in ITK as written. These
tests compare with SimpleITK on real files, including the headers the reader leaves to ITK.
"""

from __future__ import annotations

import bz2
import subprocess
import sys
from pathlib import Path

import CochleaCommonLib
import nrrd
import numpy as np
import pytest
from CochleaCommonLib.errors import InputFileError
from CochleaCommonLib.geometry import RAS_TO_LPS
from CochleaCommonLib.image import Image
from CochleaCommonLib.image_io import image_from_sitk, image_to_sitk, read_image, write_image
from CochleaCommonLib.nrrd_io import read_nrrd, write_nrrd
from geometry_cases import CASES

sitk = pytest.importorskip("SimpleITK")

ALL_DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]


def case_image(case: str, dtype: str = "int16") -> Image:
    image = CASES[case]()
    return image.with_array((image.array % 251).astype(dtype))  # the ramp fits every dtype


def itk_read(path: Path) -> Image:
    return image_from_sitk(sitk.ReadImage(str(path)))


def assert_same(a: Image, b: Image, atol: float = 1e-9) -> None:
    assert a.array.dtype == b.array.dtype
    assert np.array_equal(a.array, b.array)
    assert np.allclose(a.ijk_to_ras, b.ijk_to_ras, rtol=0, atol=atol)


def header_text(path: Path) -> str:
    return path.read_bytes().split(b"\n\n", 1)[0].decode("ascii")


# --- reading what SimpleITK writes ---------------------------------------------------------------
@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("dtype", ["int16", "float32", "uint8"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_reads_what_simpleitk_writes_as_simpleitk_reads_it(tmp_path, case, dtype, compress):
    path = tmp_path / "v.nrrd"
    sitk.WriteImage(image_to_sitk(case_image(case, dtype)), str(path), useCompression=compress)
    image = read_nrrd(path)
    assert image is not None, "a plain SimpleITK NRRD must not be left to SimpleITK"
    assert_same(image, itk_read(path))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_every_scalar_type_keeps_its_dtype(tmp_path, dtype):
    path = tmp_path / "v.nrrd"
    sitk.WriteImage(image_to_sitk(case_image("oblique", dtype)), str(path))
    assert_same(read_nrrd(path), itk_read(path))
    written = write_nrrd(case_image("oblique", dtype), tmp_path / "w.nrrd")
    assert_same(itk_read(written), case_image("oblique", dtype))


@pytest.mark.parametrize("compress", [True, False])
def test_detached_header_as_simpleitk_writes_it(tmp_path, compress):
    path = tmp_path / "v.nhdr"
    sitk.WriteImage(image_to_sitk(case_image("oblique")), str(path), useCompression=compress)
    assert (tmp_path / ("v.raw.gz" if compress else "v.raw")).exists()
    image = read_nrrd(path)
    assert image is not None
    assert_same(image, itk_read(path))
    assert_same(read_image(path), image)


@pytest.mark.parametrize("space, signs", [
    ("right-anterior-superior", (-1, -1, 1)), ("RAS", (-1, -1, 1)),
    ("left-anterior-superior", (1, -1, 1)), ("left-posterior-superior", (1, 1, 1)),
])
@pytest.mark.parametrize("case", sorted(CASES))
def test_ras_and_las_spaces_are_turned_into_lps(tmp_path, case, space, signs):
    """Scanners and other tools write RAS or LAS headers; ITK converts them to LPS, so must we."""
    image = case_image(case)
    ijk_to_space = np.diag([*signs, 1.0]) @ RAS_TO_LPS @ image.ijk_to_ras
    header = {"space": space, "space directions": ijk_to_space[:3, :3].T, "space origin": ijk_to_space[:3, 3],
              "kinds": ["domain"] * 3, "encoding": "gzip"}
    path = tmp_path / "v.nrrd"
    nrrd.write(str(path), image.array, header, index_order="C")
    back = read_nrrd(path)
    assert back is not None
    assert_same(back, image)
    assert_same(back, itk_read(path))


def test_missing_origin_is_zero_and_sheared_axes_are_kept(tmp_path):
    """As in ITK: no ``space origin`` means (0, 0, 0); non-orthogonal axes are not straightened."""
    path = tmp_path / "v.nrrd"
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    directions = np.array([[0.5, 0.0, 0.0], [0.2, 0.6, 0.0], [0.0, 0.1, 0.7]])  # one row per axis
    nrrd.write(str(path), data, {"space": "left-posterior-superior", "space directions": directions},
               index_order="C")
    image = read_nrrd(path)
    assert image is not None
    assert np.array_equal(image.ijk_to_ras[:3, 3], [0, 0, 0])
    assert np.allclose(image.ijk_to_ras[:3, :3], (RAS_TO_LPS[:3, :3] @ directions.T))
    assert_same(image, itk_read(path))


# --- writing what SimpleITK reads ----------------------------------------------------------------
@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("dtype", ["int16", "float32", "uint8"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_written_files_read_back_in_simpleitk(tmp_path, case, dtype, compress):
    image = case_image(case, dtype)
    path = write_nrrd(image, tmp_path / "v.nrrd", compress=compress)
    header = header_text(path)
    assert "space: left-posterior-superior" in header
    assert f"encoding: {'gzip' if compress else 'raw'}" in header
    assert_same(itk_read(path), image)
    back = read_nrrd(path)
    assert np.array_equal(back.array, image.array) and back.array.dtype == image.array.dtype
    assert np.allclose(back.ijk_to_ras, image.ijk_to_ras, rtol=1e-12, atol=0)  # 17 digits: exact


@pytest.mark.parametrize("case", sorted(CASES))
def test_header_is_the_one_simpleitk_writes(tmp_path, case):
    image = case_image(case, "float32")
    ours = header_text(write_nrrd(image, tmp_path / "ours.nrrd"))
    theirs_path = tmp_path / "theirs.nrrd"
    sitk.WriteImage(image_to_sitk(image), str(theirs_path), useCompression=True)
    theirs = header_text(theirs_path)
    if case == "translated":  # axis aligned: ITK's spacing x direction is exact, so the text is too
        assert ours == theirs
    ours_fields = nrrd.read_header(ours.splitlines())
    theirs_fields = nrrd.read_header(theirs.splitlines())
    assert list(ours_fields) == list(theirs_fields)
    for key, value in theirs_fields.items():
        if isinstance(value, np.ndarray):
            assert np.allclose(ours_fields[key], value, rtol=1e-15, atol=1e-15), key
        else:
            assert ours_fields[key] == value, key


def test_writing_is_deterministic_and_big_endian_voxels_are_stored_little_endian(tmp_path):
    image = case_image("oblique", "int16")
    first = write_nrrd(image, tmp_path / "a.nrrd").read_bytes()
    assert write_nrrd(image, tmp_path / "b.nrrd").read_bytes() == first
    swapped = image.with_array(image.array.astype(">i2"))
    assert write_nrrd(swapped, tmp_path / "c.nrrd").read_bytes() == first


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "folder.nrrd"
    target.mkdir()  # os.replace cannot put a file over a folder
    with pytest.raises(OSError):
        write_nrrd(case_image("oblique"), target)
    assert [p.name for p in tmp_path.iterdir()] == ["folder.nrrd"]
    assert list(target.iterdir()) == []


# --- what the reader leaves to SimpleITK ---------------------------------------------------------
DIRECTIONS = "space directions: (0.5,0,0) (0,0.6,0) (0,0,0.7)"
DECLINED = {
    "spacings only": ["spacings: 0.5 0.6 0.7"],
    "spacings and axis mins": ["spacings: 0.5 0.6 0.7", "axis mins: 5 6 7"],
    "scanner space": ["space: scanner-xyz", DIRECTIONS, "space origin: (1,2,3)"],
    "space dimension only": ["space dimension: 3", DIRECTIONS, "space origin: (1,2,3)"],
    "a time axis": ["space: left-posterior-superior", DIRECTIONS, "kinds: domain domain time"],
    "an axis without direction": ["space: left-posterior-superior", "space directions: none (0,0.6,0) (0,0,0.7)"],
}


def _hand_written_nrrd(path: Path, fields: list[str], payload: bytes | None = None, encoding: str = "raw") -> None:
    data = np.arange(24, dtype="<i2").tobytes() if payload is None else payload
    head = f"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 3 2\nendian: little\nencoding: {encoding}\n"
    path.write_bytes((head + "".join(f"{f}\n" for f in fields) + "\n").encode("ascii") + data)


@pytest.mark.parametrize("name", sorted(DECLINED))
def test_unusual_headers_are_left_to_simpleitk(tmp_path, name):
    path = tmp_path / "v.nrrd"
    _hand_written_nrrd(path, DECLINED[name])
    assert read_nrrd(path) is None
    assert_same(read_image(path), itk_read(path), atol=0)


def test_raw_data_followed_by_extra_bytes_is_left_to_simpleitk(tmp_path):
    """pynrrd refuses raw data followed by more bytes; ITK reads the voxels it needs."""
    path = tmp_path / "v.nrrd"
    _hand_written_nrrd(path, ["space: left-posterior-superior", DIRECTIONS],
                       payload=np.arange(24, dtype="<i2").tobytes() + b"tail")
    assert read_nrrd(path) is None
    assert_same(read_image(path), itk_read(path), atol=0)


def test_bzip2_is_left_to_simpleitk(tmp_path):
    """ITK's NrrdIO has no bzip2, so Slicer cannot open these; neither does the CLI."""
    path = tmp_path / "v.nrrd"
    _hand_written_nrrd(path, ["space: left-posterior-superior", DIRECTIONS],
                       payload=bz2.compress(np.arange(24, dtype="<i2").tobytes()), encoding="bzip2")
    assert read_nrrd(path) is None
    with pytest.raises(InputFileError, match="could not be read"):
        read_image(path)


def test_truncated_gzip_nrrd_is_a_clear_error(tmp_path):
    path = write_nrrd(case_image("oblique"), tmp_path / "v.nrrd")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 200])
    with pytest.raises(InputFileError, match="could not be read"):
        read_image(path)


def test_unparsable_header_is_a_clear_error(tmp_path):
    path = tmp_path / "v.nrrd"
    path.write_bytes(b"NRRD0004\ntype: short\nsizes: 4 x 2\n\n")
    with pytest.raises(InputFileError, match="not a readable NRRD file"):
        read_image(path)


# --- the point of it all -------------------------------------------------------------------------
def test_reading_and_writing_nrrd_does_not_import_simpleitk(tmp_path):
    source = write_nrrd(case_image("oblique"), tmp_path / "in.nrrd")
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(CochleaCommonLib.__file__).parents[1])!r})\n"
        "from CochleaCommonLib.image_io import read_image, write_image\n"
        "image = read_image(sys.argv[1])\n"
        "write_image(image, sys.argv[2])\n"
        "read_image(sys.argv[2])\n"
        "print('SimpleITK' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(source), str(tmp_path / "out.nrrd")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"
    assert_same(read_image(tmp_path / "out.nrrd"), case_image("oblique"))


def test_other_formats_still_use_simpleitk(tmp_path):
    image = case_image("oblique", "float32")
    path = write_image(image, tmp_path / "v.mha")
    assert_same(read_image(path), image)
    assert_same(itk_read(path), image)

"""Volume file round trips keep voxels and geometry exactly; bad files give clear errors."""

import gzip

import numpy as np
import pytest
from CochleaCommonLib.errors import InputFileError, InvalidInputError
from CochleaCommonLib.image_io import read_image, write_image
from geometry_cases import CASES

FORMATS = [".nrrd", ".nii.gz", ".nii", ".mha"]


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_keeps_voxels_and_geometry(tmp_path, case, suffix):
    image = CASES[case]()
    path = write_image(image, tmp_path / f"vol{suffix}")
    back = read_image(path)
    assert np.array_equal(back.array, image.array)
    # NIfTI stores the rotation as a float32 quaternion: 1e-6 mm is the contract
    assert np.allclose(back.ijk_to_ras, image.ijk_to_ras, atol=1e-6)
    ijk = np.array([[12.0, 10.0, 8.0], [3.3, 1.7, 6.1]])
    assert np.allclose(back.index_to_ras(ijk), image.index_to_ras(ijk), atol=1e-6)


def test_nrrd_is_written_in_lps(tmp_path):
    image = CASES["translated"]()
    path = write_image(image, tmp_path / "v.nrrd", compress=False)
    header = path.read_bytes()[:1000].decode("latin-1")
    assert "space: left-posterior-superior" in header
    # RAS origin (-130.75, -100.5, -80.25) is LPS (130.75, 100.5, -80.25)
    assert "space origin: (130.75,100.5,-80.25)" in header


def test_dicom_series_round_trip(tmp_path):
    """A DICOM series written slice by slice (LPS orientation tags) reads back with the same geometry."""
    sitk = pytest.importorskip("SimpleITK")
    from CochleaCommonLib.image_io import image_to_sitk

    image = CASES["translated"]()
    img = image_to_sitk(image.with_array(image.array.astype(np.int16)))
    folder = tmp_path / "dicom"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.1"
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        origin = img.TransformIndexToPhysicalPoint((0, 0, k))
        for key, value in {
            "0020|000e": uid, "0020|000d": uid + ".0", "0008|0060": "CT", "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in origin),
            "0020|0037": "-1\\0\\0\\0\\-1\\0", "0028|0030": "0.2\\0.2", "0018|0050": "0.2",
        }.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"s{k:03d}.dcm"))
        writer.Execute(sl)
    back = read_image(folder)
    assert back.shape_ijk == image.shape_ijk
    assert np.allclose(back.ijk_to_ras, image.ijk_to_ras, atol=1e-4)
    assert np.array_equal(back.array, image.array.astype(np.int16))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        read_image(tmp_path / "nope.nrrd")


def test_unsupported_format(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(b"not really")
    with pytest.raises(InputFileError, match="unsupported volume format"):
        read_image(p)


def test_corrupt_file_is_a_clear_error(tmp_path):
    p = tmp_path / "broken.nii.gz"
    p.write_bytes(gzip.compress(b"garbage" * 10))
    with pytest.raises(InputFileError, match="could not be read"):
        read_image(p)


def test_truncated_nrrd_is_a_clear_error(tmp_path):
    path = write_image(CASES["oblique"](), tmp_path / "v.nrrd", compress=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError):
        read_image(path)


def test_nrrd_without_spacing_is_refused(tmp_path):
    p = tmp_path / "nospacing.nrrd"
    p.write_bytes(b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n\n" + bytes(8))
    with pytest.raises(InvalidInputError, match="no voxel spacing"):
        read_image(p)


def test_2d_image_is_refused(tmp_path):
    p = tmp_path / "slice.nrrd"
    p.write_bytes(b"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 2 2\nspacings: 1 1\nencoding: raw\n\n" + bytes(4))
    with pytest.raises(InvalidInputError, match="2D"):
        read_image(p)


def test_failed_write_leaves_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputFileError, match="output folder"):
        write_image(CASES["oblique"](), blocker / "v.nrrd")
    target = tmp_path / "out.nrrd"
    with pytest.raises(InputFileError):
        write_image(CASES["oblique"](), tmp_path / "out.png")
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["file"]

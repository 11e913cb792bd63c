"""Whole-head phantoms: which ears a grid shows, that "right" is the patient's right, and the files on disk.

The side is checked against the generator's own head frame (the right ear's Modiolus base sits at
x = +EAR_OFFSET_MM there) and against the detector's side rule; the files against the LPS convention.
Grids are 1 mm and small so each head renders in about a second.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from CochleaCommonLib.cli.main import main
from CochleaCommonLib.errors import InputFileError, InvalidInputError
from CochleaCommonLib.image_io import read_image
from CochleaCommonLib.markups_io import read_markups
from CochleaCommonLib.phantom.anatomy import EAR_OFFSET_MM, Scene
from CochleaCommonLib.phantom.heads import EAR_MARGIN_MM, generate_head_case, write_head_case
from CochleaCommonLib.phantom.params import draw_params
from CochleaLandmarksLib.detector_seedfree import side_of_ear
from CochleaLandmarksLib.landmark_dataset import find_head_cases, read_ground_truth

LANDMARK_NAMES = ("Helicotrema", "Modiolus base", "Round Window")
RIGHT_ONLY = dict(spacing=1.0, fov_mm=(100.0, 100.0, 60.0), offset_mm=(60.0, 0.0, 0.0))


def _scene(seed: int, **overrides) -> Scene:
    return Scene(draw_params("ct", seed, **overrides))


def _head_frame(scene: Scene, points_ras: np.ndarray) -> np.ndarray:
    m = scene.world_to_head
    return np.asarray(points_ras) @ m[:3, :3].T + m[:3, 3]


@pytest.fixture(scope="module")
def right_head():
    return generate_head_case("ct", 0, **RIGHT_ONLY)


@pytest.fixture(scope="module")
def written(right_head, tmp_path_factory):
    out = tmp_path_factory.mktemp("heads")
    return write_head_case(right_head, out), right_head


def test_a_grid_off_to_the_right_shows_the_right_ear_only(right_head):
    assert set(right_head.ears) == {"right"}
    assert right_head.info["ears"] == ["right"] and right_head.case_id == "head_ct_00000"
    scene = _scene(0, spacing_mm=1.0, fov_mm=RIGHT_ONLY["fov_mm"])
    points = right_head.ears["right"]
    assert list(points.labels) == list(LANDMARK_NAMES)
    # the right ear is the one on the patient's right: its Modiolus base is at head x = +33 mm
    base = _head_frame(scene, points.position("Modiolus base"))
    np.testing.assert_allclose(base, [EAR_OFFSET_MM, 0.0, 0.0], atol=1e-9)
    assert side_of_ear(dict(zip(points.labels, points.positions_ras))) == "right"
    # the grid: axial LPS voxels, centred on the offset point in head axes
    image = right_head.image
    assert image.shape_ijk == (100, 100, 60)
    np.testing.assert_allclose(image.direction, np.diag([-1.0, -1.0, 1.0]), atol=1e-12)
    np.testing.assert_allclose(image.spacing, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(_head_frame(scene, image.center_ras()), RIGHT_ONLY["offset_mm"], atol=1e-9)
    # every landmark at least EAR_MARGIN_MM inside; the left ear is not in the volume
    index = image.ras_to_continuous_index(points.positions_ras)
    assert np.all(index >= EAR_MARGIN_MM - 0.5) and np.all(index <= np.array(image.shape_ijk) - 0.5 - EAR_MARGIN_MM)
    bases = [scene.landmarks_world(other)["Modiolus base"] for other in (False, True)]
    (left,) = [b for b in bases if _head_frame(scene, b)[0] < 0]
    assert not image.contains_index(image.ras_to_continuous_index(left)).any()


def test_the_right_ear_is_drawn_where_its_landmarks_are(right_head):
    """Dense bone (the otic capsule, the petrous bone) surrounds the modiolus base."""
    image = right_head.image
    i, j, k = image.ras_to_index(right_head.ears["right"].position("Modiolus base"))
    assert float(image.array[k - 4:k + 5, j - 4:j + 5, i - 4:i + 5].max()) > 1000.0


def test_written_head_case_is_lps_on_disk_and_reads_back(written):
    folder, case = written
    cid = case.case_id
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{cid}.nrrd", f"{cid}_right_landmarks.fcsv",
                                                               "case.json"])
    text = (folder / f"{cid}_right_landmarks.fcsv").read_text()
    assert "# CoordinateSystem = LPS" in text
    rows = [line.split(",") for line in text.splitlines() if line and not line.startswith("#")]
    file_xyz = np.array([[float(v) for v in row[1:4]] for row in rows])
    np.testing.assert_allclose(file_xyz, case.ears["right"].positions_ras * [-1.0, -1.0, 1.0], atol=1e-9)
    read = read_markups(folder / f"{cid}_right_landmarks.fcsv")
    np.testing.assert_allclose(read.positions_ras, case.ears["right"].positions_ras, atol=1e-9)
    truth = read_ground_truth(folder / f"{cid}_right_landmarks.fcsv")
    for n, name in enumerate(LANDMARK_NAMES):
        np.testing.assert_allclose(truth[name], case.ears["right"].positions_ras[n], atol=1e-9)
    image = read_image(folder / f"{cid}.nrrd")
    np.testing.assert_array_equal(image.array, case.image.array)
    np.testing.assert_allclose(image.ijk_to_ras, case.image.ijk_to_ras, atol=1e-9)
    info = json.loads((folder / "case.json").read_text())
    assert info["ears"] == ["right"] and info["shape_ijk"] == [100, 100, 60] and info["offset_mm"] == [60.0, 0.0, 0.0]


def test_find_head_cases_reads_the_written_folder(written):
    folder, case = written
    (found,) = find_head_cases(folder.parent)
    assert found.case_id == case.case_id and found.sides == ("right",)
    assert found.volume_path == folder / f"{case.case_id}.nrrd"
    assert found.landmark_paths == (folder / f"{case.case_id}_right_landmarks.fcsv",)


def test_a_centred_grid_shows_both_ears_named_by_side():
    case = generate_head_case("ct", 5, spacing=1.0, fov_mm=(104.0, 40.0, 40.0), pose_angle_deg=0.0)
    assert set(case.ears) == {"left", "right"}
    right, left = case.ears["right"], case.ears["left"]
    # unposed head: world RAS is the head frame, so the right ear is at +x
    np.testing.assert_allclose(right.position("Modiolus base"), [EAR_OFFSET_MM, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(left.position("Modiolus base"), [-EAR_OFFSET_MM, 0.0, 0.0], atol=1e-9)
    # mirror images of each other
    np.testing.assert_allclose(left.positions_ras * [-1.0, 1.0, 1.0], right.positions_ras, atol=1e-9)
    for side, points in case.ears.items():
        assert side_of_ear(dict(zip(points.labels, points.positions_ras))) == side


def test_a_grid_far_above_the_ears_has_none(tmp_path):
    case = generate_head_case("ct", 0, spacing=1.0, fov_mm=(60.0, 60.0, 40.0), offset_mm=(0.0, 0.0, 100.0))
    assert case.ears == {} and case.info["ears"] == []
    folder = write_head_case(case, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{case.case_id}.nrrd", "case.json"])
    with pytest.raises(InputFileError, match="_left_landmarks.fcsv"):
        find_head_cases(tmp_path)


def test_head_spacing_beyond_1_mm_is_refused():
    with pytest.raises(InvalidInputError, match="spacing"):
        generate_head_case("ct", 0, spacing=2.0, fov_mm=40.0)


# --- command line ----------------------------------------------------------------------------------------------
def test_cli_phantom_head_writes_the_same_case(written, tmp_path, capsys):
    folder, case = written
    code = main(["phantom-head", "--seed", "0", "--spacing", "1", "--fov", "100,100,60", "--offset", "60,0,0",
                 "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert report["case"] == case.case_id and report["ears"] == ["right"] and report["shape_ijk"] == [100, 100, 60]
    cli_folder = tmp_path / case.case_id
    np.testing.assert_array_equal(read_image(cli_folder / f"{case.case_id}.nrrd").array, case.image.array)
    assert (cli_folder / f"{case.case_id}_right_landmarks.fcsv").read_text() == \
        (folder / f"{case.case_id}_right_landmarks.fcsv").read_text()


@pytest.mark.parametrize("argv,message", [(["--offset", "60"], "three values"), (["--spacing", "2"], "spacing")])
def test_cli_phantom_head_refuses_bad_arguments(tmp_path, capsys, argv, message):
    code = main(["phantom-head", "--fov", "40", "--out", str(tmp_path), *argv])
    _, err = capsys.readouterr()
    assert code == 2 and message in err
    assert not any(tmp_path.iterdir())

"""The synthetic phantoms: truth where its definition says, labels on the intensities, reproducible, reloadable.

Small fields of view keep the file fast; every test checks the image or files, not only the
parameters, so a misplaced landmark, a flipped axis or a non-deterministic draw fails here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from CochleaCommonLib.errors import InvalidInputError
from CochleaCommonLib.geometry import rotation_matrix
from CochleaCommonLib.image_io import read_image
from CochleaCommonLib.markups_io import read_markups
from CochleaCommonLib.phantom import LANDMARK_NAMES, draw_params, generate_case, iter_cases

FAST = {"spacing": 0.3, "fov_mm": 28.0}


@pytest.fixture(scope="module")
def ct_case():
    return generate_case("ct", 11, **FAST)


def _voxel_centres(image, mask):
    kji = np.argwhere(mask)
    return image.index_to_ras(kji[:, ::-1].astype(float))


def _label_at(case, name):
    i, j, k = case.image.ras_to_index(case.landmarks.position(name))
    return int(case.labels.array[k, j, i])


def _axis(case):
    """Unit modiolar axis (base to apex) in world RAS."""
    z = case.cochlear_to_world[:3, 2]
    return z / np.linalg.norm(z)


def _steps_along_lumen(lumen: np.ndarray, start_kji) -> np.ndarray:
    """Number of face-neighbour steps from ``start`` through the lumen mask (-1 where unreachable)."""
    dist = np.full(lumen.shape, -1, dtype=np.int32)
    front = np.zeros_like(lumen)
    front[tuple(start_kji)] = True
    dist[front] = 0
    step = 0
    while front.any():
        step += 1
        grown = front.copy()
        for axis in range(3):
            grown |= np.roll(front, 1, axis) | np.roll(front, -1, axis)
        front = grown & lumen & (dist < 0)
        dist[front] = step
    return dist


def _check_landmarks(case):
    spacing = float(case.image.spacing.max())
    # Helicotrema: inside the lumen, at the apical end: the lumen voxel farthest (through the lumen)
    # from the round window, within about a millimetre.
    assert _label_at(case, "Helicotrema") in (1, 2)
    lumen_mask = np.isin(case.labels.array, (1, 2))
    rw_index = case.image.ras_to_index(case.landmarks.position("Round Window"))[::-1]
    st = np.argwhere(case.labels.array == 1)
    start = st[np.argmin(np.abs(st - rw_index).sum(axis=1))]
    steps = _steps_along_lumen(lumen_mask, start)
    hel = case.image.ras_to_index(case.landmarks.position("Helicotrema"))[::-1]
    assert steps[tuple(hel)] >= steps.max() - 4  # the apical cap reaches a little beyond the centre
    lumen = _voxel_centres(case.labels, np.isin(case.labels.array, (1, 2)))
    height = (lumen - case.landmarks.position("Modiolus base")) @ _axis(case)
    h_apex = (case.landmarks.position("Helicotrema") - case.landmarks.position("Modiolus base")) @ _axis(case)
    assert h_apex >= np.percentile(height, 90)
    # Modiolus base: inside the modiolus, below the helicotrema along the axis.
    assert _label_at(case, "Modiolus base") == 3
    assert h_apex > 1.0
    # Round window: on the boundary of scala tympani fluid and air.
    rw = case.landmarks.position("Round Window")
    st = _voxel_centres(case.labels, case.labels.array == 1)
    assert np.linalg.norm(st - rw, axis=1).min() <= spacing
    air_threshold = -400 if case.params.kind != "cbct" else np.percentile(case.image.array, 2) + 100
    air_mask = case.image.array < air_threshold
    air = _voxel_centres(case.image, air_mask)
    assert np.linalg.norm(air - rw, axis=1).min() <= 2 * spacing
    # ... and at the centre of the membrane: the centroid of the scala-tympani voxels touching air.
    touching = np.zeros_like(air_mask)
    for axis in range(3):
        touching |= np.roll(air_mask, 1, axis) | np.roll(air_mask, -1, axis)
    membrane = _voxel_centres(case.labels, (case.labels.array == 1) & touching)
    assert len(membrane) >= 3
    assert np.linalg.norm(membrane.mean(axis=0) - rw) <= 1.5 * spacing
    # The round window is the 0 deg reference: perpendicular to the modiolar axis through the origin.
    rel = rw - case.landmarks.position("Modiolus base")
    assert abs(rel @ _axis(case)) < 1e-6


def test_landmarks_lie_where_their_definitions_say(ct_case):
    assert ct_case.landmarks.labels == list(LANDMARK_NAMES)
    _check_landmarks(ct_case)


def test_labels_align_with_intensities(ct_case):
    lab, hu = ct_case.labels.array, ct_case.image.array.astype(float)
    lumen = np.isin(lab, (1, 2))
    # Interior lumen voxels (all six neighbours lumen too) are fluid, not bone.
    inner = lumen.copy()
    for axis in range(3):
        inner &= np.roll(lumen, 1, axis) & np.roll(lumen, -1, axis)
    assert inner.sum() > 20
    assert np.median(hu[inner]) < 350
    # A shell 2-3 voxels outside the lumen (and not labelled) is dense bone.
    grown = lumen.copy()
    ring = np.zeros_like(lumen)
    for step in range(3):
        nxt = grown.copy()
        for axis in range(3):
            nxt |= np.roll(grown, 1, axis) | np.roll(grown, -1, axis)
        if step >= 1:
            ring |= nxt & ~grown
        grown = nxt
    ring &= lab == 0
    assert np.median(hu[ring]) > 1000
    # Every structure is present, and the modiolus is less dense than the capsule around the duct.
    assert set(np.unique(lab)) >= {0, 1, 2, 3, 4}
    assert np.median(hu[lab == 3]) < np.median(hu[ring])


def test_case_record_has_every_parameter(ct_case):
    info = ct_case.info
    for key in ("a_value_mm", "b_value_mm", "turns", "height_mm", "cdl_lateral_wall_mm", "cdl_organ_of_corti_mm"):
        assert key in info["cochlea"]
    assert 6.0 < info["cochlea"]["a_value_mm"] < 12.0
    assert info["cochlea"]["cdl_organ_of_corti_mm"] < info["cochlea"]["cdl_lateral_wall_mm"]
    assert info["parameters"]["seed"] == 11
    assert np.allclose(info["image"]["spacing_mm"], 0.3)
    json.dumps(info)  # plain JSON
    seed = ct_case.seed_point.positions_ras[0]
    d = np.linalg.norm(seed - ct_case.landmarks.positions_ras.mean(axis=0))
    assert 1.0 <= d <= 5.0


def test_same_seed_gives_the_same_case(ct_case):
    again = generate_case("ct", 11, **FAST)
    assert np.array_equal(again.image.array, ct_case.image.array)
    assert np.array_equal(again.labels.array, ct_case.labels.array)
    assert np.array_equal(again.image.ijk_to_ras, ct_case.image.ijk_to_ras)
    assert np.array_equal(again.landmarks.positions_ras, ct_case.landmarks.positions_ras)
    assert again.info == ct_case.info
    other = draw_params("ct", 12, spacing_mm=0.3, fov_mm=28.0)
    assert other.a_value_mm != ct_case.params.a_value_mm


def test_overriding_one_parameter_keeps_the_others():
    a = draw_params("ct", 5)
    b = draw_params("ct", 5, a_value_mm=8.0)
    assert b.a_value_mm == 8.0
    assert (a.turns, a.side, a.pose_axis) == (b.turns, b.side, b.pose_axis)


def test_files_reload_through_our_io(ct_case, tmp_path):
    folder = ct_case.write(tmp_path, preview=True)
    cid = ct_case.case_id
    image = read_image(folder / f"{cid}.nrrd")
    assert np.allclose(image.ijk_to_ras, ct_case.image.ijk_to_ras, atol=1e-9)
    assert np.array_equal(image.array, ct_case.image.array)
    labels = read_image(folder / f"{cid}-label.nrrd")
    assert np.array_equal(labels.array, ct_case.labels.array)
    assert np.allclose(labels.ijk_to_ras, ct_case.image.ijk_to_ras, atol=1e-9)
    landmarks = read_markups(folder / f"{cid}_landmarks.fcsv")
    assert landmarks.labels == list(LANDMARK_NAMES)
    assert np.allclose(landmarks.positions_ras, ct_case.landmarks.positions_ras, atol=1e-9)
    assert "# CoordinateSystem = LPS" in (folder / f"{cid}_landmarks.fcsv").read_text()
    seed = read_markups(folder / f"{cid}_seed.fcsv")
    assert np.allclose(seed.positions_ras, ct_case.seed_point.positions_ras, atol=1e-9)
    record = json.loads((folder / "case.json").read_text())
    assert record["files"]["volume"] == f"{cid}.nrrd"
    assert np.allclose(record["landmarks"]["ras"]["Round Window"], ct_case.landmarks.position("Round Window"),
                       atol=1e-5)
    assert (folder / "preview.png").stat().st_size > 10_000


@pytest.mark.mrml
def test_files_reload_through_slicer_storage_nodes(ct_case, tmp_path):
    slicer = pytest.importorskip("slicer", reason="slicer-core wheel not installed (pip install -e .[test])")
    from CochleaCommonLib import slicer_io

    folder = ct_case.write(tmp_path)
    cid = ct_case.case_id
    scene = slicer.vtkMRMLScene()
    for name, expected in ((f"{cid}.nrrd", ct_case.image), (f"{cid}-label.nrrd", ct_case.labels)):
        storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(str(folder / name))
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        assert storage.ReadData(node)
        image = slicer_io.volume_node_to_image(node)
        assert np.allclose(image.ijk_to_ras, expected.ijk_to_ras, atol=1e-6)
        assert np.array_equal(image.array, expected.array)
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    storage = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialStorageNode")
    storage.SetFileName(str(folder / f"{cid}_landmarks.fcsv"))
    assert storage.ReadData(node) == 1
    assert [node.GetNthControlPointLabel(i) for i in range(3)] == list(LANDMARK_NAMES)
    for i in range(3):
        p = [0.0, 0.0, 0.0]
        node.GetNthControlPointPosition(i, p)
        assert np.allclose(p, ct_case.landmarks.positions_ras[i], atol=1e-6)


def test_left_is_the_mirror_image_of_right():
    common = dict(pose_angle_deg=0.0, position_fraction=0.0, spacing=0.4, fov_mm=24.0)
    right = generate_case("ct", 21, side="right", **common)
    left = generate_case("ct", 21, side="left", **common)
    mirror = np.diag([-1.0, 1.0, 1.0])
    assert np.allclose(left.landmarks.positions_ras, right.landmarks.positions_ras @ mirror, atol=1e-9)
    # The grids are mirror images too, so the label maps agree after flipping the i axis.
    flipped = right.labels.array[:, :, ::-1]
    lumen = np.isin(flipped, (1, 2)) | np.isin(left.labels.array, (1, 2))
    agree = (flipped == left.labels.array)[lumen].mean()
    assert agree > 0.98
    assert right.landmarks.positions_ras[:, 0].mean() > 0 > left.landmarks.positions_ras[:, 0].mean()


def test_head_pose_moves_the_truth_with_the_anatomy():
    common = dict(position_fraction=0.0, spacing=0.3, fov_mm=28.0, side="right", pose_axis=(0.3, 1.0, 0.2))
    straight = generate_case("ct", 31, pose_angle_deg=0.0, **common)
    turned = generate_case("ct", 31, pose_angle_deg=25.0, **common)
    rot = rotation_matrix((0.3, 1.0, 0.2), 25.0)
    assert np.allclose(turned.landmarks.positions_ras, straight.landmarks.positions_ras @ rot.T, atol=1e-9)
    _check_landmarks(turned)
    # Same anatomy: the lumen volume does not depend on the pose (within partial-volume effects).
    n0 = np.isin(straight.labels.array, (1, 2)).sum()
    n1 = np.isin(turned.labels.array, (1, 2)).sum()
    assert abs(n0 - n1) / n0 < 0.1


def test_cbct_is_uncalibrated_but_keeps_the_anatomy():
    case = generate_case("cbct", 41, **FAST)
    arr = case.image.array.astype(float)
    assert arr.min() >= 0  # CBCT grey values, not HU
    lumen = np.isin(case.labels.array, (1, 2))
    modiolus = case.labels.array == 3
    assert np.median(arr[lumen]) < np.median(arr[modiolus])
    _check_landmarks(case)
    assert case.info["modality"].startswith("CBCT")


def test_anisotropic_spacing():
    case = generate_case("ct", 51, spacing=(0.35, 0.35, 0.5), fov_mm=(26.0, 26.0, 24.0))
    assert np.allclose(case.image.spacing, (0.35, 0.35, 0.5))
    assert case.image.shape_ijk == (74, 74, 48)
    assert _label_at(case, "Modiolus base") == 3


@pytest.mark.parametrize(
    "kwargs, parameter, allowed",
    [
        ({"spacing": -0.3}, "spacing_mm", "0.05..1"),
        ({"turns": 0}, "turns", "1.5..3.5"),
        ({"a_value_mm": 20.0}, "a_value_mm", "6..12"),
        ({"fov_mm": 0.0}, "fov_mm", "12..260"),
        ({"kind": "postop", "turns": 2.5, "insertion_angle_deg": 1000.0}, "insertion_angle_deg", "90..840"),
        ({"pose_angle_deg": 90.0}, "pose_angle_deg", "0..45"),
    ],
)
def test_out_of_range_parameters_name_the_parameter_and_range(kwargs, parameter, allowed):
    kwargs = dict(kwargs)
    kind = kwargs.pop("kind", "ct")
    with pytest.raises(InvalidInputError) as err:
        generate_case(kind, 1, **kwargs)
    assert parameter in str(err.value)
    assert allowed in str(err.value)


def test_other_bad_input():
    with pytest.raises(InvalidInputError, match="kind"):
        generate_case("mri", 1)
    with pytest.raises(InvalidInputError, match="Unknown phantom parameter"):
        generate_case("ct", 1, a_valu_mm=9.0)
    with pytest.raises(InvalidInputError, match="seed"):
        generate_case("ct", -3)
    with pytest.raises(InvalidInputError, match="height_mm"):
        draw_params("ct", 1, turns=3.0, height_mm=2.6, lumen_axial_mm=1.0)


def test_iter_cases_cycles_kinds_and_seeds():
    cases = list(iter_cases(["ct", "cbct"], start_seed=100, count=2, spacing=0.5, fov_mm=20.0))
    assert [c.params.kind for c in cases] == ["ct", "cbct"]
    assert [c.params.seed for c in cases] == [100, 101]


def test_postop_contacts_artefacts_and_truth():
    common = dict(spacing=0.35, fov_mm=26.0, insertion_angle_deg=500.0, n_contacts=16)
    post = generate_case("postop", 61, **common)
    pre = generate_case("ct", 61, **common)  # same anatomy and noise, no electrode
    contacts = post.contacts
    assert contacts.labels == [f"E{i + 1}" for i in range(16)]
    angles = [c["insertion_angle_deg"] for c in post.info["electrode"]["contacts"]]
    assert np.all(np.diff(angles) < 0)  # ordered apical to basal
    assert abs(angles[0] - 500.0) < 10.0
    assert post.info["electrode"]["angular_insertion_depth_deg"] == pytest.approx(angles[0])
    # Intracochlear contacts sit in the scala tympani and are bright (platinum).
    inside = [c["intracochlear"] for c in post.info["electrode"]["contacts"]]
    idx = post.image.ras_to_index(contacts.positions_ras[inside])
    assert np.mean(post.labels.array[idx[:, 2], idx[:, 1], idx[:, 0]] == 1) >= 0.8
    assert np.median(post.image.array[idx[:, 2], idx[:, 1], idx[:, 0]]) > 2000
    # Artefacts: streaks change voxels far from the metal in metal slices, nothing in slices without metal.
    diff = post.image.array.astype(float) - pre.image.array.astype(float)
    k_metal = np.unique(idx[:, 2])
    k_far = [k for k in range(diff.shape[0]) if np.min(np.abs(k_metal - k)) > 40]
    assert np.mean(np.abs(diff[k_metal]) > 100) > 0.02
    if k_far:
        assert np.all(diff[k_far] == 0)
    assert np.array_equal(post.labels.array, pre.labels.array)  # the label map is the anatomy


def test_meshes_match_labels_and_correspond_across_cases(ct_case):
    meshes = {m.name: m for m in ct_case.meshes()}
    assert set(meshes) == {"scala tympani", "scala vestibuli", "modiolus", "rest of labyrinth"}
    voxel = float(np.prod(ct_case.image.spacing))
    for name, value in (("scala tympani", 1), ("scala vestibuli", 2), ("modiolus", 3)):
        v, t = meshes[name].vertices_ras, meshes[name].triangles
        volume = np.einsum("ij,ij->i", v[t[:, 0]], np.cross(v[t[:, 1]], v[t[:, 2]])).sum() / 6.0
        labelled = (ct_case.labels.array == value).sum() * voxel
        assert volume == pytest.approx(labelled, rel=0.15), name
    other = generate_case("ct", 12, spacing=0.5, fov_mm=20.0).meshes()
    for a, b in zip(ct_case.meshes()[:3], other[:3]):
        assert a.vertices_ras.shape == b.vertices_ras.shape
        assert np.array_equal(a.triangles, b.triangles)
    # Vertex correspondence: the first ring of the scala tympani surrounds the round window in both.
    for case, meshes_ in ((ct_case, ct_case.meshes()), (None, other)):
        if case is None:
            continue
        ring = meshes_[0].vertices_ras[:30]
        assert np.linalg.norm(ring.mean(axis=0) - case.landmarks.position("Round Window")) < 0.5


def test_suite_is_deterministic_and_cli_writes_it(tmp_path):
    from CochleaCommonLib.cli.main import main

    args = ["phantom-suite", "--count", "2", "--kinds", "ct,cbct", "--spacing", "0.5", "--fov", "20", "--seed", "3"]
    assert main([*args, "--out", str(tmp_path / "a"), "-q"]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "-q"]) == 0
    ma = json.loads((tmp_path / "a" / "manifest.json").read_text())
    mb = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert ma == mb
    assert [c["kind"] for c in ma["cases"]] == ["ct", "cbct"]
    for case in ma["cases"]:
        assert (tmp_path / "a" / case["folder"] / case["files"]["landmarks"]).exists()
    assert main(["phantom", "--kind", "ct", "--seed", "4", "--spacing", "0.5", "--fov", "20", "--out",
                 str(tmp_path / "one"), "--preview", "-q"]) == 0
    assert (tmp_path / "one" / "phantom_ct_00004" / "preview.png").exists()
    assert main(["phantom", "--kind", "ct", "--spacing=-1", "--out", str(tmp_path / "bad"), "-q"]) == 2

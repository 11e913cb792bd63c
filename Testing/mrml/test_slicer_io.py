"""slicer_io on a real vtkMRMLScene: nodes <-> Image/PointList on awkward geometry.

These fail if the RAS/LPS flip, index rounding or parent transforms are handled wrongly, and
they check our file readers/writers against Slicer's own storage nodes on every volume format.
"""

import numpy as np
import pytest
from geometry_cases import CASES, assert_same_world_voxels

slicer = pytest.importorskip("slicer", reason="slicer-core wheel not installed (pip install -e .[test])")
vtk = pytest.importorskip("vtk")

from CochleaCommonLib import slicer_io  # noqa: E402
from CochleaCommonLib.errors import InvalidInputError  # noqa: E402
from CochleaCommonLib.image_io import read_image, write_image  # noqa: E402
from CochleaCommonLib.points import PointList  # noqa: E402

pytestmark = pytest.mark.mrml


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def _matrix(node_getter) -> np.ndarray:
    vm = vtk.vtkMatrix4x4()
    node_getter(vm)
    return np.array([[vm.GetElement(r, c) for c in range(4)] for r in range(4)])


def _linear_transform_node(scene, rotation_deg=20.0, translation=(10.0, -4.0, 7.5)):
    from CochleaCommonLib.geometry import rotation_matrix

    m = np.eye(4)
    m[:3, :3] = rotation_matrix([0.3, -1.0, 0.5], rotation_deg)
    m[:3, 3] = translation
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "T")
    node.SetMatrixTransformToParent(slicer_io._vtk_matrix(m))
    return node, m


@pytest.mark.parametrize("case", sorted(CASES))
def test_volume_node_round_trip_and_slicer_agrees_on_voxel_positions(scene, case):
    image = CASES[case]()
    node = slicer_io.image_to_volume_node(image, case, scene)
    assert np.allclose(_matrix(node.GetIJKToRASMatrix), image.ijk_to_ras, atol=1e-12)
    assert np.array_equal(slicer.util.arrayFromVolume(node), image.array)
    back = slicer_io.volume_node_to_image(node)
    assert np.array_equal(back.array, image.array)
    assert np.allclose(back.ijk_to_ras, image.ijk_to_ras, atol=1e-12)
    # Slicer's RAS->IJK (plus rounding) picks the same voxel as ours for off-centre points
    ras_to_ijk = _matrix(node.GetRASToIJKMatrix)
    rng = np.random.default_rng(0)
    for ijk in rng.uniform(0.0, 8.0, size=(25, 3)):
        ras = image.index_to_ras(ijk)
        slicer_ijk = ras_to_ijk @ np.append(ras, 1.0)
        assert np.allclose(slicer_ijk[:3], ijk, atol=1e-9)
        assert image.ras_to_index(ras).tolist() == np.floor(slicer_ijk[:3] + 0.5).astype(int).tolist()


@pytest.mark.parametrize("case", sorted(CASES))
def test_parent_transform_is_honoured(scene, case):
    image = CASES[case]()
    node = slicer_io.image_to_volume_node(image, case, scene)
    tnode, m = _linear_transform_node(scene)
    node.SetAndObserveTransformNodeID(tnode.GetID())
    world = slicer_io.volume_node_to_image(node)
    assert np.allclose(world.ijk_to_ras, m @ image.ijk_to_ras, atol=1e-9)
    # a world point placed through a transformed markups node lands on the right voxel
    markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "seed")
    markups.AddControlPoint(vtk.vtkVector3d(*image.index_to_ras([4.0, 3.0, 2.0])), "p")
    markups.SetAndObserveTransformNodeID(tnode.GetID())  # the point moves with the volume
    points = slicer_io.point_list_node_to_points(markups)
    assert world.ras_to_index(points.positions_ras[0]).tolist() == [4, 3, 2]
    # Slicer's own hardening gives the same world geometry
    slicer.vtkSlicerTransformLogic().hardenTransform(node)
    assert np.allclose(_matrix(node.GetIJKToRASMatrix), world.ijk_to_ras, atol=1e-9)


def test_writing_into_a_transformed_node_keeps_world_positions(scene):
    image = CASES["oblique"]()
    tnode, m = _linear_transform_node(scene)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "under_transform")
    node.SetAndObserveTransformNodeID(tnode.GetID())
    slicer_io.image_to_volume_node(image, "x", scene, node=node)
    assert np.allclose(slicer_io.volume_node_to_image(node).ijk_to_ras, image.ijk_to_ras, atol=1e-9)


def test_non_linear_parent_transform_is_a_clear_error(scene):
    node = slicer_io.image_to_volume_node(CASES["translated"](), "v", scene)
    tps = vtk.vtkThinPlateSplineTransform()
    src, dst = vtk.vtkPoints(), vtk.vtkPoints()
    for p in [(0, 0, 0), (50, 0, 0), (0, 50, 0), (0, 0, 50), (20, 20, 20)]:
        src.InsertNextPoint(p)
        dst.InsertNextPoint(p[0] + 1.0, p[1] + (3.0 if p == (20, 20, 20) else 0.0), p[2])
    tps.SetSourceLandmarks(src)
    tps.SetTargetLandmarks(dst)
    tps.SetBasisToR()
    tnode = scene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    tnode.SetAndObserveTransformToParent(tps)
    node.SetAndObserveTransformNodeID(tnode.GetID())
    with pytest.raises(InvalidInputError, match="Harden"):
        slicer_io.volume_node_to_image(node)


def test_point_list_round_trip_in_world_coordinates(scene):
    pts = PointList(np.array([[1.0, 2.0, 3.0], [-4.5, 6.25, -7.0]]), ["Helicotrema", "Round Window"], "lm",
                    ["apex", ""])
    tnode, m = _linear_transform_node(scene)
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "lm")
    node.SetAndObserveTransformNodeID(tnode.GetID())
    slicer_io.points_to_point_list_node(pts, scene=scene, node=node)
    back = slicer_io.point_list_node_to_points(node)
    assert back.labels == pts.labels
    assert back.descriptions == pts.descriptions
    assert np.allclose(back.positions_ras, pts.positions_ras, atol=1e-9)
    # local coordinates differ from world ones: the transform was really there
    local = [0.0, 0.0, 0.0]
    node.GetNthControlPointPosition(0, local)
    assert np.allclose(m @ np.append(local, 1.0), np.append(pts.positions_ras[0], 1.0), atol=1e-9)
    assert not np.allclose(local, pts.positions_ras[0])


def test_missing_inputs_are_clear_errors():
    with pytest.raises(InvalidInputError, match="No input volume"):
        slicer_io.volume_node_to_image(None)
    with pytest.raises(InvalidInputError, match="No point list"):
        slicer_io.point_list_node_to_points(None)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".nii", ".mha"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_our_volume_files_and_slicers_storage_node_agree(scene, tmp_path, case, suffix):
    image = CASES[case]()
    ours = write_image(image, tmp_path / f"ours{suffix}")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(ours))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "read_by_slicer")
    assert storage.ReadData(node)
    assert_same_world_voxels(image, slicer_io.volume_node_to_image(node))
    # and the other way: Slicer writes, we read
    written = tmp_path / f"slicer{suffix}"
    storage2 = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage2.SetFileName(str(written))
    assert storage2.WriteData(slicer_io.image_to_volume_node(image, "w", scene))
    assert_same_world_voxels(image, read_image(written))
    if suffix == ".nrrd":  # Slicer's NRRD is read by nrrd_io itself, not handed back to SimpleITK
        from CochleaCommonLib.nrrd_io import read_nrrd

        assert_same_world_voxels(image, read_nrrd(written))


def test_probability_volume_node_display(scene):
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.GetColorLogic().SetMRMLScene(scene)
    image = CASES["oblique"]()
    prob = image.with_array(np.linspace(0, 1, image.array.size).reshape(image.array.shape))
    node = slicer_io.create_probability_volume_node(prob, "probability_Helicotrema", scene)
    display = node.GetDisplayNode()
    assert display.GetColorNodeID() == slicer_io.PROBABILITY_COLOR_NODE_ID
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(0.05)
    assert slicer.util.arrayFromVolume(node).dtype == np.float32


def test_segmentation_from_labelmap_keeps_names_and_voxels(scene):
    slicer.vtkSlicerSegmentationsModuleLogic()  # registers converters
    image = CASES["flipped"]()
    labels = np.zeros(image.array.shape, dtype=np.uint8)
    labels[2:5, 3:7, 4:9] = 1
    labels[6:8, 1:3, 1:4] = 2
    labels[0, 0, 0] = 9  # not named: dropped
    seg = slicer_io.create_segmentation_from_labelmap(
        image.with_array(labels), {1: "scala tympani", 2: "scala vestibuli"}, "cochlea", scene,
        colors={1: (1.0, 0.0, 0.0)})
    segmentation = seg.GetSegmentation()
    names = sorted(segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments()))
    assert names == ["scala tympani", "scala vestibuli"]
    # export back onto the image grid: same voxels, same world positions
    ref = slicer_io.image_to_volume_node(image, "ref", scene)
    seg.SetReferenceImageGeometryParameterFromVolumeNode(ref)
    out = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "exported")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(seg, out, 0)
    exported = slicer_io.volume_node_to_image(out)
    assert np.allclose(exported.ijk_to_ras, image.ijk_to_ras, atol=1e-6)
    by_name = {segmentation.GetNthSegment(n).GetName(): n + 1 for n in range(segmentation.GetNumberOfSegments())}
    assert np.array_equal(exported.array == by_name["scala tympani"], labels == 1)
    assert np.array_equal(exported.array == by_name["scala vestibuli"], labels == 2)


def test_table_node_columns(scene):
    node = slicer_io.create_table_node({"landmark": ["Helicotrema", "Round Window"], "confidence": [0.9, 0.5]},
                                       "results", scene)
    table = node.GetTable()
    assert table.GetNumberOfRows() == 2
    assert table.GetColumnByName("landmark").GetValue(1) == "Round Window"
    assert table.GetColumnByName("confidence").GetValue(0) == pytest.approx(0.9)
    with pytest.raises(InvalidInputError):
        slicer_io.create_table_node({"a": [1], "b": [1, 2]}, "bad", scene)

"""The only code that touches MRML: Slicer nodes <-> the core's plain data types.

Why one module: every geometry mistake seen in peer extensions (ignoring parent transforms, reading
control points in local instead of world coordinates, truncating indices) happens where nodes are
turned into arrays. Keeping that in one small, heavily tested place lets the algorithms stay pure.

Conventions:
* Volumes: ``arrayFromVolume`` order (KJI) and the node's IJK-to-RAS matrix *composed with its
  parent transform to world*, so an :class:`Image` is always in world RAS.
* Point lists: world RAS positions (``GetNthControlPointPositionWorld``).
* New nodes are created in the given scene (``slicer.mrmlScene`` by default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import slicer
import vtk

from .errors import InvalidInputError
from .image import Image
from .points import PointList

#: Colour table for probability maps: present in every Slicer (created by the Colors logic).
PROBABILITY_COLOR_NODE_ID = "vtkMRMLPETProceduralColorNodePET-Heat"


def _scene(scene=None):
    scene = scene if scene is not None else getattr(slicer, "mrmlScene", None)
    if scene is None:
        raise InvalidInputError("No MRML scene is available to create nodes in.")
    return scene


def _vtk_matrix(m: np.ndarray) -> vtk.vtkMatrix4x4:
    vm = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vm.SetElement(r, c, float(m[r, c]))
    return vm


def _np_matrix(vm: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[vm.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def parent_to_world_matrix(node) -> np.ndarray:
    """4x4 matrix from the node's local coordinates to world RAS (identity without a transform).

    Raises :class:`InvalidInputError` for non-linear (grid, B-spline) parent transforms, which
    cannot be represented by a volume's matrix.
    """
    transform_node = node.GetParentTransformNode()
    if transform_node is None:
        return np.eye(4)
    if not transform_node.IsTransformToWorldLinear():
        raise InvalidInputError(
            f"'{node.GetName()}' is under the non-linear transform '{transform_node.GetName()}'. "
            "Harden the transform first (Data module: right-click the node, 'Harden transform')."
        )
    vm = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformToWorld(vm)
    return _np_matrix(vm)


def volume_node_to_image(volume_node) -> Image:
    """Copy a scalar volume node into a world-RAS :class:`Image` (parent transforms applied)."""
    if volume_node is None:
        raise InvalidInputError("No input volume is selected. Choose a CT or cone-beam CT volume.")
    if volume_node.GetImageData() is None:
        raise InvalidInputError(f"The volume '{volume_node.GetName()}' has no image data. Load the volume again.")
    if volume_node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise InvalidInputError(
            f"The volume '{volume_node.GetName()}' has several components per voxel (colour/vector); "
            "a scalar CT volume is needed."
        )
    vm = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(vm)
    ijk_to_world = parent_to_world_matrix(volume_node) @ _np_matrix(vm)
    array = np.array(slicer.util.arrayFromVolume(volume_node), copy=True)
    if array.ndim != 3:
        raise InvalidInputError(f"The volume '{volume_node.GetName()}' is not a 3D scalar volume.")
    return Image(array, ijk_to_world)


def update_volume_node_from_image(volume_node, image: Image) -> None:
    """Fill an existing volume node with ``image``: voxels and geometry.

    The node's own IJK-to-RAS is set so that, through its current parent transform, the voxels
    land at the image's world positions.
    """
    local = np.linalg.inv(parent_to_world_matrix(volume_node)) @ image.ijk_to_ras
    volume_node.SetIJKToRASMatrix(_vtk_matrix(local))
    slicer.util.updateVolumeFromArray(volume_node, np.ascontiguousarray(image.array))


def image_to_volume_node(image: Image, name: str, scene=None, *, node=None, labelmap: bool = False):
    """Create (or fill ``node``) a scalar or label-map volume node holding ``image``."""
    scene = _scene(scene)
    if node is None:
        class_name = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
        node = scene.AddNewNodeByClass(class_name, name)
    update_volume_node_from_image(node, image)
    node.CreateDefaultDisplayNodes()
    return node


def _observe_transform(node, transform_node) -> None:
    """Put ``node`` under ``transform_node`` (None: no parent transform)."""
    node.SetAndObserveTransformNodeID(transform_node.GetID() if transform_node is not None else None)


def create_probability_volume_node(image: Image, name: str, scene=None, *, threshold: float = 0.05, node=None,
                                   transform_node=None):
    """A volume node for a probability map in [0, 1], displayed as a heat-colour overlay.

    Voxels below ``threshold`` are transparent in slice views so the map can sit in the
    foreground layer over the CT. ``node``: an existing scalar volume node to refill (re-runs
    replace their maps instead of adding new ones). ``transform_node``: parent transform for the
    node (the CT's own, so the map follows the CT); the voxels still land at the image's world
    positions.
    """
    scene = _scene(scene)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    _observe_transform(node, transform_node)
    node = image_to_volume_node(image.with_array(image.array.astype(np.float32)), name, scene, node=node)
    display = node.GetDisplayNode()
    if scene.GetNodeByID(PROBABILITY_COLOR_NODE_ID) is not None:
        display.SetAndObserveColorNodeID(PROBABILITY_COLOR_NODE_ID)
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.SetApplyThreshold(True)
    display.SetLowerThreshold(threshold)
    display.SetUpperThreshold(1.0)
    node.SetAttribute("CochleaToolkit.Role", "ProbabilityMap")
    return node


def point_list_node_to_points(markups_node) -> PointList:
    """Defined control points of a markups point list, in world RAS, with their labels."""
    if markups_node is None:
        raise InvalidInputError("No point list is selected. Place a seed point first.")
    positions, labels, descriptions = [], [], []
    p = [0.0, 0.0, 0.0]
    for n in range(markups_node.GetNumberOfControlPoints()):
        if hasattr(markups_node, "GetNthControlPointPositionStatus") and markups_node.GetNthControlPointPositionStatus(
            n
        ) != markups_node.PositionDefined:
            continue  # a point still being placed (or skipped) has no valid position
        markups_node.GetNthControlPointPositionWorld(n, p)
        positions.append(list(p))
        labels.append(markups_node.GetNthControlPointLabel(n))
        descriptions.append(markups_node.GetNthControlPointDescription(n))
    return PointList(np.array(positions, dtype=np.float64).reshape(-1, 3), labels, markups_node.GetName(),
                     descriptions)


def points_to_point_list_node(points: PointList, name: str | None = None, scene=None, *, node=None,
                              locked: bool = False):
    """Create (or replace the points of ``node``) a markups point list from world-RAS points."""
    scene = _scene(scene)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name or points.name or "Points")
        node.CreateDefaultDisplayNodes()
    node.RemoveAllControlPoints()
    for pos, label, desc in zip(points.positions_ras, points.labels, points.descriptions):
        index = node.AddControlPoint(vtk.vtkVector3d(0.0, 0.0, 0.0), label)
        node.SetNthControlPointPositionWorld(index, *(float(v) for v in pos))
        node.SetNthControlPointDescription(index, desc)
        node.SetNthControlPointLocked(index, locked)
    return node


def landmarks_to_point_list_node(labels: Sequence[str], positions_ras: Sequence, name: str | None = None, scene=None,
                                 *, node=None, descriptions: Sequence[str] | None = None, transform_node=None,
                                 locked: bool = False):
    """A point list holding ``labels`` in this order; a label whose position is None stays unplaced.

    Why unplaced rather than left out: a landmark the detector did not find appears in the list as
    a "missing" control point, so the user sees what is absent and can place it by hand in the
    Markups module; readers (:func:`point_list_node_to_points`) skip it, nothing guesses a position.
    Positions are world RAS; with ``transform_node`` the node is put under that transform first
    (so the points follow it later) and the points still land at the given world positions.
    ``node``: an existing point list to refill (its control points are replaced).
    """
    if len(labels) != len(positions_ras):
        raise InvalidInputError(f"{len(labels)} labels but {len(positions_ras)} positions for the point list.")
    scene = _scene(scene)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name or "Landmarks")
        node.CreateDefaultDisplayNodes()
    _observe_transform(node, transform_node)
    wasModifying = node.StartModify()
    try:
        node.RemoveAllControlPoints()
        for n, (label, pos) in enumerate(zip(labels, positions_ras)):
            index = node.AddControlPoint(vtk.vtkVector3d(0.0, 0.0, 0.0), label)
            if pos is None:
                node.SetNthControlPointPositionMissing(index)
            else:
                node.SetNthControlPointPositionWorld(index, *(float(v) for v in np.asarray(pos).reshape(3)))
            if descriptions is not None:
                node.SetNthControlPointDescription(index, descriptions[n])
            node.SetNthControlPointLocked(index, locked)
    finally:
        node.EndModify(wasModifying)
    return node


def create_model_node(mesh, name: str | None = None, scene=None, *, color: Sequence[float] | None = None,
                      opacity: float = 1.0):
    """A model node showing a :class:`~CochleaCommonLib.mesh_io.Mesh` (vertices in world RAS)."""
    from .mesh_io import mesh_to_polydata

    scene = _scene(scene)
    node = scene.AddNewNodeByClass("vtkMRMLModelNode", name or mesh.name or "Model")
    node.SetAndObservePolyData(mesh_to_polydata(mesh))
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if color is not None:
        display.SetColor(*color[:3])
    display.SetOpacity(opacity)
    return node


def create_segmentation_from_labelmap(label_image: Image, segment_names: Mapping[int, str], name: str,
                                      scene=None, *, colors: Mapping[int, Sequence[float]] | None = None,
                                      reference_volume=None):
    """A segmentation node with one segment per label value named in ``segment_names``.

    Label values absent from ``segment_names`` are dropped so the segmentation holds only the
    structures we mean to report.
    """
    scene = _scene(scene)
    values = np.asarray(label_image.array)
    keep = np.isin(values, list(segment_names))
    labels = label_image.with_array(np.where(keep, values, 0).astype(np.int16))
    label_node = image_to_volume_node(labels, f"{name}_labels", scene, labelmap=True)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg.CreateDefaultDisplayNodes()
    if reference_volume is not None:
        seg.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    if not logic.ImportLabelmapToSegmentationNode(label_node, seg):
        scene.RemoveNode(label_node)
        raise InvalidInputError(f"The label map for '{name}' could not be converted to a segmentation.")
    scene.RemoveNode(label_node)
    segmentation = seg.GetSegmentation()
    for n in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(n)
        value = segment.GetLabelValue()
        if value in segment_names:
            segment.SetName(segment_names[value])
        if colors and value in colors:
            segment.SetColor(*colors[value][:3])
    return seg


def create_table_node(columns: Mapping[str, Sequence], name: str, scene=None, *, node=None):
    """A table node with one column per key (numbers become double columns, the rest strings)."""
    scene = _scene(scene)
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise InvalidInputError(f"Table '{name}': columns have different lengths {sorted(lengths)}.")
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = node.GetTable()
    table.Initialize()
    for col_name, values in columns.items():
        numeric = all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values)
        arr = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
        arr.SetName(col_name)
        for v in values:
            arr.InsertNextValue(float(v) if numeric else str(v))
        table.AddColumn(arr)
    node.Modified()
    return node

"""Scene helpers shared by the CochleaLandmarks Logic tests (SMICNet and 3D detector): why one place: both
test files build seeds, list node IDs and read tables the same way, and a fix belongs in one spot.

Import only after ``pytest.importorskip("slicer")`` (the functions call the slicer-core wheel's scene).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import slicer
import slicer_harness
import vtk

REPO = Path(__file__).resolve().parents[2]
LANDMARKS = ("Helicotrema", "Modiolus base", "Round Window")


def load_landmarks_module():
    """The CochleaLandmarks Python module, loaded as Slicer loads it (CochleaCommon first)."""
    slicer_harness.load_scripted_module(REPO / "CochleaCommon" / "CochleaCommon.py")
    return slicer_harness.load_scripted_module(REPO / "CochleaLandmarks" / "CochleaLandmarks.py").module


def seeds(*labelled, name: str = "Cochlea seed"):
    """A point list with ``(label, (R, A, S))`` control points."""
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    for label, position in labelled:
        node.AddControlPoint(vtk.vtkVector3d(*position), label)
    return node


def node_ids() -> set:
    """IDs of every node in the scene (to check that a failed run adds nothing)."""
    scene = slicer.mrmlScene
    return {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}


def world(node, n: int) -> np.ndarray:
    """World (RAS) position of control point ``n``."""
    p = [0.0, 0.0, 0.0]
    node.GetNthControlPointPositionWorld(n, p)
    return np.array(p)


def rows(table) -> list:
    """A table node's cells as text, row by row."""
    columns = range(table.GetNumberOfColumns())
    return [[table.GetCellText(r, c) for c in columns] for r in range(table.GetNumberOfRows())]

"""CochleaCommon: the hidden Slicer module that carries the shared ``CochleaCommonLib`` package.

Why a module at all: Slicer packages and puts on ``sys.path`` only what a module's CMakeLists
lists, so the shared pure-Python core (image/markups/mesh IO, geometry, devices, model registry,
``slicer_io``) ships with this hidden module, and the visible modules declare it as a dependency.
Its Logic holds the input checks every Cochlea module runs before any work starts, so the
messages are the same everywhere; its self-test checks the MRML <-> core round trips.
"""

import logging
from typing import Optional

import slicer
import vtk
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import *

#: Cochlear landmark labels, in this order, everywhere (see DESIGN.md, "Landmark names").
LANDMARK_NAMES = ("Helicotrema", "Modiolus base", "Round Window")

#
# CochleaCommon
#


class CochleaCommon(ScriptedLoadableModule):
    """Module description shown by Slicer (hidden: it has no user interface of its own)."""

    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Cochlea Common")
        self.parent.categories = ["Cochlea"]
        self.parent.dependencies = []
        self.parent.hidden = True
        self.parent.contributors = ["CochleaToolkit contributors"]
        self.parent.helpText = _(
            "Shared code of the CochleaToolkit extension: image, point-list and mesh input/output, "
            "coordinate conventions (RAS in Slicer, LPS in files), compute-device choice, the model "
            "registry and the conversion between Slicer nodes and the algorithms' data. "
            "This module has no user interface; use Cochlea Landmarks, Cochlea Segmentation or "
            "Electrode Annotation."
        )
        self.parent.acknowledgementText = _(
            "CochleaToolkit is an open-source 3D Slicer extension for cochlea analysis in CT and "
            "cone-beam CT. The methods it implements are cited in each module's acknowledgement."
        )
        # Sample Data exists only once the application has started (not in --no-main-window tests).
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Sample data: synthetic temporal-bone phantoms, generated locally on first use
#


def registerSampleData() -> None:
    """Offer the CochleaToolkit phantoms in the Sample Data module (category "Cochlea").

    Each button generates its phantom on first use (a few seconds, no network) into the per-user
    cache and loads the volume, its landmarks and the seed click.
    """
    import os

    import SampleData
    from CochleaCommonLib.phantom.samples import SAMPLES

    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    for sample in SAMPLES.values():
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="Cochlea",
            sampleName=sample.name,
            uris=[f"cochleatoolkit-phantom:{sample.name}"],  # never fetched: the custom downloader generates it
            fileNames=[f"{sample.name}.nrrd"],
            nodeNames=[sample.name],
            thumbnailFileName=os.path.join(iconsPath, "CochleaCommon.png"),
            loadFileType="VolumeFile",
            customDownloader=lambda source, name=sample.name: CochleaCommonLogic().loadPhantomSample(name),
        )


#
# CochleaCommonWidget
#


class CochleaCommonWidget(ScriptedLoadableModuleWidget):
    """Default widget only (developer section): the module is hidden and has no GUI."""

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)


#
# CochleaCommonLogic
#


class CochleaCommonLogic(ScriptedLoadableModuleLogic):
    """Input checks shared by every Cochlea module: MRML nodes in, validated core data out.

    Nodes are read only through ``CochleaCommonLib.slicer_io`` (world RAS, parent transforms
    applied), so a seed that *looks* inside the volume in the views is inside here too. Every
    failure is an ``InvalidInputError`` naming the node, the point and what to do.
    """

    def loadPhantomSample(self, name: str, cacheFolder: Optional[str] = None) -> dict:
        """Generate (first time) or reuse a phantom sample and load it into the scene.

        Returns the loaded nodes by role: ``volume``, ``landmarks``, ``seed`` and, when the
        sample has them, ``labels`` and ``contacts``. Usable from the Python console.
        """
        from CochleaCommonLib.phantom.samples import ensure_sample, sample_files

        folder = ensure_sample(name, cacheFolder)
        files = sample_files(folder)
        nodes = {"volume": slicer.util.loadVolume(str(files["volume"]), {"name": name})}
        if "labels" in files:
            nodes["labels"] = slicer.util.loadLabelVolume(str(files["labels"]), {"name": f"{name}-label"})
        for role, suffix in (("landmarks", "landmarks"), ("seed", "seed"), ("contacts", "contacts")):
            if role in files:
                node = slicer.util.loadMarkups(str(files[role]))
                node.SetName(f"{name} {suffix}")
                nodes[role] = node
        return nodes

    def volumeImage(self, volumeNode, role: str = "Input volume"):
        """Return ``volumeNode`` as a world-RAS ``Image``; raise if it is missing or has no voxels.

        :param volumeNode: a ``vtkMRMLScalarVolumeNode`` (or None).
        :param role: how the GUI calls this input, used in the message.
        """
        from CochleaCommonLib.errors import InvalidInputError

        if volumeNode is None:
            raise InvalidInputError(
                f"No volume is selected as '{role}'. Load a CT or cone-beam CT of the temporal bone "
                f"and select it as '{role}'."
            )
        from CochleaCommonLib import slicer_io

        return slicer_io.volume_node_to_image(volumeNode)

    def pointsInsideVolume(self, markupsNode, image, volumeName: str, role: str = "Seed point",
                           requiredLabels: Optional[list] = None):
        """Return the defined points of ``markupsNode`` (world RAS) after checking they lie in ``image``.

        :param markupsNode: a ``vtkMRMLMarkupsFiducialNode`` (or None).
        :param image: the ``Image`` of the volume the points must lie in.
        :param volumeName: name of that volume, for the message.
        :param role: how the GUI calls this input, used in the messages.
        :param requiredLabels: if given, exactly these labelled points are returned, in this order;
            a missing label is an error listing the labels present.
        """
        from CochleaCommonLib.errors import InvalidInputError

        if markupsNode is None:
            raise InvalidInputError(f"No point list is selected as '{role}'. Select or place one first.")
        from CochleaCommonLib import slicer_io

        points = slicer_io.point_list_node_to_points(markupsNode)
        if requiredLabels:
            points = points.subset(requiredLabels)
        if len(points) == 0:
            raise InvalidInputError(
                f"The point list '{markupsNode.GetName()}' ({role}) has no placed point. "
                "Click in a slice view to place one."
            )
        inside = image.contains_index(image.ras_to_continuous_index(points.positions_ras))
        if not inside.all():
            row = int((~inside).nonzero()[0][0])
            r, a, s = points.positions_ras[row]
            lo, hi = image.world_bounds()
            raise InvalidInputError(
                f"The point '{points.labels[row]}' of '{markupsNode.GetName()}' ({role}) at "
                f"R={r:.1f}, A={a:.1f}, S={s:.1f} mm lies outside the volume '{volumeName}' "
                f"(R {lo[0]:.1f}..{hi[0]:.1f}, A {lo[1]:.1f}..{hi[1]:.1f}, S {lo[2]:.1f}..{hi[2]:.1f} mm). "
                "Move the point onto the cochlea inside this volume, or select the volume it was placed on."
            )
        return points


#
# CochleaCommonTest
#


class CochleaCommonTest(ScriptedLoadableModuleTest):
    """Self-test: node <-> core round trips on awkward geometry, and the shared input checks."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_ObliqueVolumeRoundTrip()
        self.setUp()
        self.test_PointListRoundTripUnderTransform()
        self.setUp()
        self.test_InputChecksNameTheProblem()
        self.setUp()
        self.test_PhantomSampleLoads()

    # --- helpers -------------------------------------------------------------------------------
    def _slicerIO(self):
        try:
            from CochleaCommonLib import slicer_io
        except ImportError as exc:
            self.skipTest(f"CochleaCommonLib.slicer_io is not importable yet ({exc}); node round trips not tested")
        return slicer_io

    @staticmethod
    def _matrix(getter):
        import numpy as np

        vm = vtk.vtkMatrix4x4()
        getter(vm)
        return np.array([[vm.GetElement(r, c) for c in range(4)] for r in range(4)])

    @staticmethod
    def _linearTransform(name: str, rotations=(("X", 25.0), ("Z", -40.0)), translation=(12.0, -7.5, 30.0)):
        transform = vtk.vtkTransform()
        transform.Translate(*translation)
        for axis, degrees in rotations:
            getattr(transform, f"Rotate{axis}")(degrees)
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
        node.SetMatrixTransformToParent(transform.GetMatrix())
        return node

    def _obliqueVolume(self, name: str = "Oblique CT"):
        """A small anisotropic, oblique, left-right flipped volume with a voxel ramp."""
        import numpy as np

        directions = vtk.vtkTransform()
        directions.RotateZ(30.0)
        directions.RotateY(-15.0)
        directions.Scale(-1.0, 1.0, 1.0)  # flipped i axis
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        node.SetIJKToRASDirectionMatrix(directions.GetMatrix())
        node.SetSpacing(0.3, 0.25, 0.5)
        node.SetOrigin(-20.0, 35.5, -12.25)
        array = np.arange(7 * 6 * 5, dtype=np.int16).reshape(7, 6, 5)  # KJI: k=7, j=6, i=5
        slicer.util.updateVolumeFromArray(node, array)
        node.CreateDefaultDisplayNodes()
        return node, array

    # --- tests ---------------------------------------------------------------------------------
    def test_ObliqueVolumeRoundTrip(self) -> None:
        """An oblique volume under a transform becomes a world-RAS Image and comes back voxel-exact."""
        import numpy as np

        slicerIO = self._slicerIO()
        self.delayDisplay("Oblique volume round trip")
        node, array = self._obliqueVolume()
        node.SetAndObserveTransformNodeID(self._linearTransform("Head pose").GetID())

        image = slicerIO.volume_node_to_image(node)
        parentToWorld = vtk.vtkMatrix4x4()
        node.GetParentTransformNode().GetMatrixTransformToWorld(parentToWorld)
        expected = self._matrix(lambda m: vtk.vtkMatrix4x4.Multiply4x4(parentToWorld, self._ijkToRAS(node), m))
        np.testing.assert_allclose(image.ijk_to_ras, expected, atol=1e-9)
        np.testing.assert_array_equal(image.array, array)

        # Voxel (i, j, k) = (4, 1, 6) must be at the same world position as Slicer computes it.
        world = parentToWorld.MultiplyPoint(self._ijkToRAS(node).MultiplyPoint((4.0, 1.0, 6.0, 1.0)))
        np.testing.assert_allclose(image.index_to_ras([4.0, 1.0, 6.0]), world[:3], atol=1e-9)

        copy = slicerIO.image_to_volume_node(image, "Copy")
        self.assertIsNone(copy.GetParentTransformNode())
        np.testing.assert_allclose(self._matrix(copy.GetIJKToRASMatrix), image.ijk_to_ras, atol=1e-9)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(copy), array)
        self.delayDisplay("Oblique volume round trip passed")

    @staticmethod
    def _ijkToRAS(node):
        m = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(m)
        return m

    def test_PointListRoundTripUnderTransform(self) -> None:
        """Point positions are read in world RAS (parent transform applied) and written back exactly."""
        import numpy as np

        slicerIO = self._slicerIO()
        self.delayDisplay("Point list round trip")
        markups = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Landmarks")
        for label, position in (("Helicotrema", (1.0, 2.0, 3.0)), ("Modiolus base", (-4.5, 0.25, 8.0))):
            markups.AddControlPoint(vtk.vtkVector3d(*position), label)
        markups.SetAndObserveTransformNodeID(self._linearTransform("Pose").GetID())

        points = slicerIO.point_list_node_to_points(markups)
        self.assertEqual(list(points.labels), ["Helicotrema", "Modiolus base"])
        for n in range(2):
            world = [0.0, 0.0, 0.0]
            markups.GetNthControlPointPositionWorld(n, world)
            np.testing.assert_allclose(points.positions_ras[n], world, atol=1e-9)
        self.assertGreater(np.linalg.norm(points.positions_ras[0] - [1.0, 2.0, 3.0]), 1.0)  # really transformed

        copy = slicerIO.points_to_point_list_node(points, "Copy")
        for n in range(2):
            world = [0.0, 0.0, 0.0]
            copy.GetNthControlPointPositionWorld(n, world)
            np.testing.assert_allclose(world, points.positions_ras[n], atol=1e-9)
            self.assertEqual(copy.GetNthControlPointLabel(n), points.labels[n])
        self.delayDisplay("Point list round trip passed")

    def test_InputChecksNameTheProblem(self) -> None:
        """A missing volume, an empty list, a missing label and a point outside the volume are named."""
        from CochleaCommonLib.errors import InvalidInputError

        self._slicerIO()
        self.delayDisplay("Shared input checks")
        logic = CochleaCommonLogic()
        with self.assertRaisesRegex(InvalidInputError, "No volume is selected as 'Input volume'"):
            logic.volumeImage(None)
        node, _array = self._obliqueVolume("CT")
        image = logic.volumeImage(node)

        seeds = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Seed")
        with self.assertRaisesRegex(InvalidInputError, "'Seed' .* has no placed point"):
            logic.pointsInsideVolume(seeds, image, "CT")
        seeds.AddControlPoint(vtk.vtkVector3d(*image.center_ras()), "S-1")
        self.assertEqual(len(logic.pointsInsideVolume(seeds, image, "CT")), 1)
        with self.assertRaisesRegex(InvalidInputError, "No point labelled 'Helicotrema'"):
            logic.pointsInsideVolume(seeds, image, "CT", requiredLabels=["Helicotrema"])

        seeds.AddControlPoint(vtk.vtkVector3d(500.0, 0.0, 0.0), "Far away")
        with self.assertRaisesRegex(InvalidInputError, "'Far away' of 'Seed' .* lies outside the volume 'CT'"):
            logic.pointsInsideVolume(seeds, image, "CT")
        logging.info("CochleaCommon input checks passed")
        self.delayDisplay("Shared input checks passed")

    def test_PhantomSampleLoads(self) -> None:
        """The CT phantom sample generates, caches and loads with its ground truth in place."""
        import tempfile

        import numpy as np
        from CochleaCommonLib import slicer_io
        from CochleaCommonLib.markups_io import read_markups

        self.delayDisplay("Generating and loading the CT phantom sample")
        with tempfile.TemporaryDirectory() as cache:
            nodes = CochleaCommonLogic().loadPhantomSample("CochleaPhantomCT", cache)
            volume = slicer_io.volume_node_to_image(nodes["volume"])
            landmarks = slicer_io.point_list_node_to_points(nodes["landmarks"])
            self.assertEqual(list(landmarks.labels), list(LANDMARK_NAMES))
            # the landmarks file on disk (LPS) and the loaded node (RAS) agree
            from CochleaCommonLib.phantom.samples import ensure_sample, sample_files

            onDisk = read_markups(sample_files(ensure_sample("CochleaPhantomCT", cache))["landmarks"])
            self.assertTrue(np.allclose(onDisk.positions_ras, landmarks.positions_ras, atol=1e-6))
            # every landmark and the seed lie inside the loaded volume
            volume.ras_to_index(landmarks.positions_ras)
            volume.ras_to_index(slicer_io.point_list_node_to_points(nodes["seed"]).positions_ras)
            # the helicotrema is inside fluid-filled lumen: labelled scala (1 or 2)
            labels = slicer_io.volume_node_to_image(nodes["labels"])
            self.assertIn(int(labels.value_at(landmarks.position("Helicotrema"))[0]), (1, 2))
        self.delayDisplay("Phantom sample test passed")


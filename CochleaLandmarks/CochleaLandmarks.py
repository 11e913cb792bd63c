"""CochleaLandmarks: find the helicotrema, the modiolus base and the round window from one seed click.

The module follows the Slicer scripted-module template: a typed parameter node, a thin widget
loaded from ``Resources/UI/CochleaLandmarks.ui``, a Logic usable from the Python console and a
self-test. The detector itself (SMICNet, in ``CochleaLandmarksLib``) arrives with its own issue;
until then the Logic validates its inputs and says plainly that processing is not available,
and the Apply button stays disabled with a tooltip saying so.
"""

import logging
from typing import Annotated, Callable, Optional

import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin

#: Landmark detectors the module offers, and the compute devices it accepts.
METHODS = ("smicnet",)
DEVICES = ("auto", "cpu", "cuda", "mps")

PROCESSING_NOT_AVAILABLE = _(
    "Landmark detection is not available in this version of CochleaToolkit yet: the SMICNet detector "
    "arrives with the CochleaLandmarks processing issue."
)

#
# CochleaLandmarks
#


class CochleaLandmarks(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Cochlea Landmarks")
        self.parent.categories = ["Cochlea"]
        self.parent.dependencies = ["CochleaCommon"]
        self.parent.contributors = ["CochleaToolkit contributors"]
        self.parent.helpText = _(
            "Finds three cochlear landmarks in a CT or cone-beam CT of the temporal bone from one "
            "seed point placed roughly on the cochlea: the helicotrema (apex), the modiolus base "
            "(basal point, origin of the consensus cochlear coordinate system) and the centre of "
            "the round window. The landmarks are written to a point list that can be corrected by "
            "hand and that initialises the Cochlea Segmentation module. "
            "This version checks the inputs only: the detector arrives with its own issue."
        )
        self.parent.acknowledgementText = _(
            "Landmark detection re-implements SMICNet: Wang Y, Lenarz T, Kral A, John S. Automatic "
            "Landmark Localization in 3D Medical CT Images: Few-Shot Learning through Optimized Data "
            "Pre-Processing and Network Design. ICBRA 2023, ACM. doi:10.1145/3632047.3632048. "
            "Original code and weights: HearSys/comm4child_landmarks (Apache-2.0). "
            "Landmark definitions follow the consensus cochlear coordinate system: Verbist BM et al. "
            "Consensus panel on a cochlear coordinate system applicable in histologic, physiologic, "
            "and radiologic studies of the human cochlea. Otol Neurotol 2010;31(5):722-730."
        )


#
# CochleaLandmarksParameterNode
#


@parameterNodeWrapper
class CochleaLandmarksParameterNode:
    """
    The parameters of the module, stored in the scene (saved with it).

    inputVolume - CT or cone-beam CT of the temporal bone.
    seedPoints - point list with one point placed roughly on the cochlea (one per ear).
    outputLandmarks - point list that receives Helicotrema, Modiolus base and Round Window.
    method - landmark detector.
    device - where the network runs: auto (CUDA when usable, else CPU), cpu, cuda or mps.
    roiSizeMm - edge length of the cube around each seed that is searched, in mm.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    seedPoints: vtkMRMLMarkupsFiducialNode
    outputLandmarks: vtkMRMLMarkupsFiducialNode
    method: Annotated[str, Choice(list(METHODS))] = "smicnet"
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    roiSizeMm: Annotated[float, WithinRange(5.0, 60.0)] = 20.0


#
# CochleaLandmarksWidget
#


class CochleaLandmarksWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI: the .ui file binds to the parameter node; the Logic does all the work."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CochleaLandmarks.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.progressBar.visible = False

        self.logic = CochleaLandmarksLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[CochleaLandmarksParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        canApply, reason = self.logic.canProcess(self._parameterNode)
        self.ui.applyButton.enabled = canApply
        self.ui.applyButton.toolTip = reason
        self.ui.statusLabel.text = "" if canApply else reason

    def onApplyButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Landmark detection failed."), waitCursor=True):
            p = self._parameterNode
            p.outputLandmarks = self.logic.process(
                p.inputVolume, p.seedPoints, p.outputLandmarks, method=p.method, device=p.device,
                roiSizeMm=p.roiSizeMm, progressCallback=self._onProgress)

    def _onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.visible = fraction < 1.0
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.progressBar.format = message
        slicer.app.processEvents()


#
# CochleaLandmarksLogic
#


class CochleaLandmarksLogic(ScriptedLoadableModuleLogic):
    """Landmark detection, usable without the GUI (Python console, batch scripts, tests)."""

    #: Becomes True when the detector lands; the widget's Apply button follows it.
    processingAvailable = False

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self) -> CochleaLandmarksParameterNode:
        return CochleaLandmarksParameterNode(super().getParameterNode())

    def canProcess(self, parameterNode: Optional[CochleaLandmarksParameterNode]) -> tuple:
        """Whether Apply can run with these parameters, and the sentence the GUI shows either way."""
        if not self.processingAvailable:
            return False, PROCESSING_NOT_AVAILABLE
        if parameterNode is None or not parameterNode.inputVolume:
            return False, _("Select the input volume.")
        if not parameterNode.seedPoints or parameterNode.seedPoints.GetNumberOfDefinedControlPoints() == 0:
            return False, _("Place a seed point on the cochlea.")
        return True, _("Detect the cochlear landmarks around each seed point.")

    def process(self, inputVolume: vtkMRMLScalarVolumeNode, seedPoints: vtkMRMLMarkupsFiducialNode,
                outputLandmarks: Optional[vtkMRMLMarkupsFiducialNode] = None, method: str = "smicnet",
                device: str = "auto", roiSizeMm: float = 20.0,
                progressCallback: Optional[Callable[[float, str], Optional[bool]]] = None,
                cancelToken=None) -> vtkMRMLMarkupsFiducialNode:
        """Detect Helicotrema, Modiolus base and Round Window around each seed point.

        Can be used without the GUI. All inputs are validated before any work starts.

        :param inputVolume: CT or cone-beam CT of the temporal bone.
        :param seedPoints: point list with one point placed roughly on the cochlea of each ear.
        :param outputLandmarks: point list to fill (created when None).
        :param method: landmark detector; one of ``METHODS``.
        :param device: ``auto``, ``cpu``, ``cuda``, ``cuda:<index>`` or ``mps``.
        :param roiSizeMm: edge length (mm) of the cube searched around each seed, 5 to 60.
        :param progressCallback: ``callback(fraction, message)``; returning True requests cancellation.
        :param cancelToken: a ``CochleaCommonLib.progress.CancelToken`` the caller may cancel.
        :return: the output point list.
        :raises CochleaError: invalid inputs (the message names the problem), and, in this
            version, always after validation, because the detector is not available yet.
        """
        from CochleaCommonLib.devices import normalise_device_request
        from CochleaCommonLib.errors import CochleaError, InvalidInputError

        from CochleaCommon import CochleaCommonLogic

        if method not in METHODS:
            raise InvalidInputError(f"Unknown landmark method '{method}'. Available: {', '.join(METHODS)}.")
        normalise_device_request(device)
        if not 5.0 <= float(roiSizeMm) <= 60.0:
            raise InvalidInputError(f"The search region size must be 5 to 60 mm, not {roiSizeMm} mm.")
        common = CochleaCommonLogic()
        image = common.volumeImage(inputVolume, _("Input volume"))
        seeds = common.pointsInsideVolume(seedPoints, image, inputVolume.GetName(), _("Seed point"))
        logging.info(f"CochleaLandmarks: inputs valid ({image!r}, {len(seeds)} seed point(s))")
        raise CochleaError(f"{PROCESSING_NOT_AVAILABLE} The inputs were checked and are valid; nothing was changed.")


#
# CochleaLandmarksTest
#


class CochleaLandmarksTest(ScriptedLoadableModuleTest):
    """Self-test: parameter node storage and the Logic's input checks on a real scene."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_ParameterNodeDefaultsAndRoundTrip()
        self.setUp()
        self.test_ProcessRejectsMissingInputs()
        # Last: these need CochleaCommonLib.slicer_io.
        self.setUp()
        self.test_ProcessRejectsSeedOutsideVolume()
        self.setUp()
        self.test_ProcessIsHonestlyNotAvailable()

    @staticmethod
    def _volume(name: str = "CT"):
        import numpy as np

        array = np.zeros((20, 30, 40), dtype=np.int16)  # 40 x 30 x 20 voxels of 0.3 mm
        node = slicer.util.addVolumeFromArray(array, name=name)
        node.SetSpacing(0.3, 0.3, 0.3)
        node.SetOrigin(10.0, -5.0, 2.0)
        return node

    @staticmethod
    def _seeds(*positions, name: str = "Cochlea seed"):
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        for position in positions:
            node.AddControlPoint(vtk.vtkVector3d(*position))
        return node

    def _requireSlicerIO(self) -> None:
        try:
            from CochleaCommonLib import slicer_io  # noqa: F401
        except ImportError as exc:
            self.skipTest(f"CochleaCommonLib.slicer_io is not importable yet ({exc})")

    def test_ParameterNodeDefaultsAndRoundTrip(self) -> None:
        """Defaults are written to the real vtkMRMLScriptedModuleNode and survive a scene save/load."""
        self.delayDisplay("Parameter node")
        logic = CochleaLandmarksLogic()
        parameters = logic.getParameterNode()
        self.assertIsNone(parameters.inputVolume)
        self.assertIsNone(parameters.seedPoints)
        self.assertEqual(parameters.method, "smicnet")
        self.assertEqual(parameters.device, "auto")
        self.assertEqual(parameters.roiSizeMm, 20.0)
        node = parameters.parameterNode
        self.assertEqual(node.GetAttribute("ModuleName"), "CochleaLandmarks")
        self.assertEqual(float(node.GetParameter("roiSizeMm")), 20.0)

        volume, seeds = self._volume(), self._seeds((13.0, 0.0, 4.0))
        parameters.inputVolume = volume
        parameters.seedPoints = seeds
        parameters.device = "cpu"
        parameters.roiSizeMm = 12.5
        with self.assertRaises(ValueError):
            parameters.roiSizeMm = 200.0  # outside WithinRange(5, 60)
        with self.assertRaises(ValueError):
            parameters.method = "not-a-method"
        self.assertEqual(node.GetNodeReferenceID("inputVolume"), volume.GetID())
        self.assertEqual(node.GetParameter("device"), "cpu")

        again = logic.getParameterNode()  # a new wrapper over the same singleton node
        self.assertIs(again.inputVolume, volume)
        self.assertEqual(again.roiSizeMm, 12.5)

        # Save the scene to MRML XML and load it into a fresh scene: the values come back.
        scene = slicer.mrmlScene
        scene.SetSaveToXMLString(1)
        try:
            scene.Commit()
            xml = scene.GetSceneXMLString()
        finally:
            scene.SetSaveToXMLString(0)
        loaded = slicer.vtkMRMLScene()
        loaded.SetLoadFromXMLString(1)
        loaded.SetSceneXMLString(xml)
        loaded.Import()
        reread = CochleaLandmarksParameterNode(loaded.GetSingletonNode("CochleaLandmarks", "vtkMRMLScriptedModuleNode"))
        self.assertEqual(reread.roiSizeMm, 12.5)
        self.assertEqual(reread.device, "cpu")
        self.assertEqual(reread.inputVolume.GetName(), "CT")
        self.assertEqual(reread.seedPoints.GetName(), "Cochlea seed")
        loaded.Clear(1)
        self.delayDisplay("Parameter node passed")

    def test_ProcessRejectsMissingInputs(self) -> None:
        """No volume, no seed list or a bad option: a CochleaError that names the problem."""
        from CochleaCommonLib.errors import CochleaError

        self.delayDisplay("Missing inputs")
        logic = CochleaLandmarksLogic()
        seeds = self._seeds((13.0, 0.0, 4.0))
        with self.assertRaisesRegex(CochleaError, "No volume is selected as 'Input volume'"):
            logic.process(None, seeds)
        with self.assertRaisesRegex(CochleaError, "Unknown landmark method 'magic'"):
            logic.process(self._volume(), seeds, method="magic")
        with self.assertRaisesRegex(CochleaError, "search region size must be 5 to 60 mm"):
            logic.process(self._volume(), seeds, roiSizeMm=1.0)
        self.assertFalse(logic.canProcess(logic.getParameterNode())[0])
        self.delayDisplay("Missing inputs passed")

    def test_ProcessRejectsSeedOutsideVolume(self) -> None:
        """A seed placed outside the volume (or no seed at all) is refused before any work."""
        from CochleaCommonLib.errors import CochleaError

        self._requireSlicerIO()
        self.delayDisplay("Seed outside the volume")
        logic = CochleaLandmarksLogic()
        volume = self._volume()
        with self.assertRaisesRegex(CochleaError, "No point list is selected as 'Seed point'"):
            logic.process(volume, None)
        with self.assertRaisesRegex(CochleaError, "has no placed point"):
            logic.process(volume, self._seeds(name="Empty"))
        with self.assertRaisesRegex(CochleaError, "lies outside the volume 'CT'"):
            logic.process(volume, self._seeds((13.0, 0.0, 4.0), (-80.0, 0.0, 4.0)))
        self.delayDisplay("Seed outside the volume passed")

    def test_ProcessIsHonestlyNotAvailable(self) -> None:
        """Valid inputs: the Logic says processing is not available yet and changes nothing."""
        from CochleaCommonLib.errors import CochleaError

        self._requireSlicerIO()
        self.delayDisplay("Not available yet")
        logic = CochleaLandmarksLogic()
        volume, seeds = self._volume(), self._seeds((13.0, 0.0, 4.0))
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaisesRegex(CochleaError, "not available in this version"):
            logic.process(volume, seeds)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("Not available yet passed")

"""CochleaSegmentation: intracochlear structures and cochlear duct length from CT, initialised by landmarks.

The module follows the Slicer scripted-module template: a typed parameter node, a thin widget
loaded from ``Resources/UI/CochleaSegmentation.ui``, a Logic usable from the Python console and a
self-test. The atlas registration (in ``CochleaSegmentationLib``) arrives with its own issue;
until then the Logic validates its inputs and says plainly that processing is not available,
and the Apply button stays disabled with a tooltip saying so.
"""

import logging
from typing import Callable, Optional

import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin

PROCESSING_NOT_AVAILABLE = _(
    "Intracochlear segmentation is not available in this version of CochleaToolkit yet: the atlas "
    "registration arrives with the CochleaSegmentation processing issue."
)

#
# CochleaSegmentation
#


class CochleaSegmentation(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Cochlea Segmentation")
        self.parent.categories = ["Cochlea"]
        self.parent.dependencies = ["CochleaCommon"]
        self.parent.contributors = ["CochleaToolkit contributors"]
        self.parent.helpText = _(
            "Segments the intracochlear anatomy (scala tympani, scala vestibuli, modiolus) in a CT or "
            "cone-beam CT of the temporal bone by deforming an atlas onto the patient, initialised by "
            "the Helicotrema, Modiolus base and Round Window landmarks from the Cochlea Landmarks "
            "module. It also measures the A value and estimates the cochlear duct length. "
            "This version checks the inputs only: the registration arrives with its own issue."
        )
        self.parent.acknowledgementText = _(
            "Atlas-based intracochlear segmentation: Noble JH, Labadie RF, Majdani O, Dawant BM. "
            "Automatic segmentation of intracochlear anatomy in conventional CT. IEEE Trans Biomed Eng "
            "2011;58(9):2625-2632. "
            "Cochlear duct length from the A value: Escudé B, James C, Deguine O, Cochard N, Eter E, "
            "Fraysse B. The size of the cochlea and predictions of insertion depth angles for cochlear "
            "implant electrodes. Audiol Neurootol 2006;11 Suppl 1:27-33; and Alexiades G, Dhanasingh A, "
            "Jolly C. Method to estimate the complete and two-turn cochlear duct length. Otol Neurotol "
            "2015;36(5):904-907. Angles follow the consensus cochlear coordinate system: Verbist BM et "
            "al. Otol Neurotol 2010;31(5):722-730."
        )


#
# CochleaSegmentationParameterNode
#


@parameterNodeWrapper
class CochleaSegmentationParameterNode:
    """
    The parameters of the module, stored in the scene (saved with it).

    inputVolume - CT or cone-beam CT of the temporal bone.
    landmarks - point list with Helicotrema, Modiolus base and Round Window of one ear.
    outputSegmentation - segmentation that receives the intracochlear structures.
    outputMeasurements - table that receives the A value and cochlear duct length estimates.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    landmarks: vtkMRMLMarkupsFiducialNode
    outputSegmentation: vtkMRMLSegmentationNode
    outputMeasurements: vtkMRMLTableNode


#
# CochleaSegmentationWidget
#


class CochleaSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI: the .ui file binds to the parameter node; the Logic does all the work."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CochleaSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.progressBar.visible = False

        self.logic = CochleaSegmentationLogic()

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

    def setParameterNode(self, inputParameterNode: Optional[CochleaSegmentationParameterNode]) -> None:
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
        with slicer.util.tryWithErrorDisplay(_("Intracochlear segmentation failed."), waitCursor=True):
            p = self._parameterNode
            p.outputSegmentation, p.outputMeasurements = self.logic.process(
                p.inputVolume, p.landmarks, p.outputSegmentation, p.outputMeasurements,
                progressCallback=self._onProgress)

    def _onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.visible = fraction < 1.0
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.progressBar.format = message
        slicer.app.processEvents()


#
# CochleaSegmentationLogic
#


class CochleaSegmentationLogic(ScriptedLoadableModuleLogic):
    """Intracochlear segmentation, usable without the GUI (Python console, batch scripts, tests)."""

    #: Becomes True when the registration lands; the widget's Apply button follows it.
    processingAvailable = False

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self) -> CochleaSegmentationParameterNode:
        return CochleaSegmentationParameterNode(super().getParameterNode())

    def canProcess(self, parameterNode: Optional[CochleaSegmentationParameterNode]) -> tuple:
        """Whether Apply can run with these parameters, and the sentence the GUI shows either way."""
        if not self.processingAvailable:
            return False, PROCESSING_NOT_AVAILABLE
        if parameterNode is None or not parameterNode.inputVolume:
            return False, _("Select the input volume.")
        if not parameterNode.landmarks:
            return False, _("Select the point list with the cochlear landmarks.")
        return True, _("Segment the intracochlear anatomy and measure the cochlea.")

    def process(self, inputVolume: vtkMRMLScalarVolumeNode, landmarks: vtkMRMLMarkupsFiducialNode,
                outputSegmentation: Optional[vtkMRMLSegmentationNode] = None,
                outputMeasurements: Optional[vtkMRMLTableNode] = None,
                progressCallback: Optional[Callable[[float, str], Optional[bool]]] = None,
                cancelToken=None) -> tuple:
        """Segment the intracochlear anatomy of one ear and measure its A value and duct length.

        Can be used without the GUI. All inputs are validated before any work starts.

        :param inputVolume: CT or cone-beam CT of the temporal bone.
        :param landmarks: point list with points labelled Helicotrema, Modiolus base and Round
            Window (the Cochlea Landmarks output, or placed by hand), inside ``inputVolume``.
        :param outputSegmentation: segmentation to fill (created when None).
        :param outputMeasurements: table to fill (created when None).
        :param progressCallback: ``callback(fraction, message)``; returning True requests cancellation.
        :param cancelToken: a ``CochleaCommonLib.progress.CancelToken`` the caller may cancel.
        :return: ``(outputSegmentation, outputMeasurements)``.
        :raises CochleaError: invalid inputs (the message names the problem), and, in this
            version, always after validation, because the registration is not available yet.
        """
        from CochleaCommonLib.errors import CochleaError

        from CochleaCommon import LANDMARK_NAMES, CochleaCommonLogic

        common = CochleaCommonLogic()
        image = common.volumeImage(inputVolume, _("Input volume"))
        points = common.pointsInsideVolume(landmarks, image, inputVolume.GetName(), _("Landmarks"),
                                           requiredLabels=list(LANDMARK_NAMES))
        logging.info(f"CochleaSegmentation: inputs valid ({image!r}, landmarks {points.labels})")
        raise CochleaError(f"{PROCESSING_NOT_AVAILABLE} The inputs were checked and are valid; nothing was changed.")


#
# CochleaSegmentationTest
#


class CochleaSegmentationTest(ScriptedLoadableModuleTest):
    """Self-test: parameter node storage and the Logic's input checks on a real scene."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_ParameterNodeDefaultsAndRoundTrip()
        self.setUp()
        self.test_ProcessRejectsMissingVolume()
        # Last: these need CochleaCommonLib.slicer_io.
        self.setUp()
        self.test_ProcessRejectsBadLandmarks()
        self.setUp()
        self.test_ProcessIsHonestlyNotAvailable()

    @staticmethod
    def _volume(name: str = "CT"):
        import numpy as np

        node = slicer.util.addVolumeFromArray(np.zeros((20, 30, 40), dtype=np.int16), name=name)
        node.SetSpacing(0.3, 0.3, 0.3)
        node.SetOrigin(10.0, -5.0, 2.0)
        return node

    @staticmethod
    def _landmarks(labelsAndPositions, name: str = "Cochlea landmarks"):
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        for label, position in labelsAndPositions:
            node.AddControlPoint(vtk.vtkVector3d(*position), label)
        return node

    _INSIDE = (("Helicotrema", (13.0, 0.0, 4.0)), ("Modiolus base", (14.0, 1.0, 5.0)),
               ("Round Window", (15.0, 2.0, 4.5)))

    def _requireSlicerIO(self) -> None:
        try:
            from CochleaCommonLib import slicer_io  # noqa: F401
        except ImportError as exc:
            self.skipTest(f"CochleaCommonLib.slicer_io is not importable yet ({exc})")

    def test_ParameterNodeDefaultsAndRoundTrip(self) -> None:
        """References start empty, are stored as MRML node references and read back."""
        self.delayDisplay("Parameter node")
        logic = CochleaSegmentationLogic()
        parameters = logic.getParameterNode()
        for name in ("inputVolume", "landmarks", "outputSegmentation", "outputMeasurements"):
            self.assertIsNone(getattr(parameters, name), name)
        volume, landmarks = self._volume(), self._landmarks(self._INSIDE)
        parameters.inputVolume = volume
        parameters.landmarks = landmarks
        with self.assertRaises(TypeError):
            parameters.landmarks = volume  # wrong node type
        node = parameters.parameterNode
        self.assertEqual(node.GetAttribute("ModuleName"), "CochleaSegmentation")
        self.assertEqual(node.GetNodeReferenceID("landmarks"), landmarks.GetID())
        again = logic.getParameterNode()
        self.assertIs(again.inputVolume, volume)
        self.assertIs(again.landmarks, landmarks)
        self.delayDisplay("Parameter node passed")

    def test_ProcessRejectsMissingVolume(self) -> None:
        """No volume: a CochleaError that says which input is missing."""
        from CochleaCommonLib.errors import CochleaError

        self.delayDisplay("Missing volume")
        logic = CochleaSegmentationLogic()
        with self.assertRaisesRegex(CochleaError, "No volume is selected as 'Input volume'"):
            logic.process(None, self._landmarks(self._INSIDE))
        self.assertFalse(logic.canProcess(logic.getParameterNode())[0])
        self.delayDisplay("Missing volume passed")

    def test_ProcessRejectsBadLandmarks(self) -> None:
        """No landmark list, a missing landmark label or a landmark outside the volume are named."""
        from CochleaCommonLib.errors import CochleaError

        self._requireSlicerIO()
        self.delayDisplay("Bad landmarks")
        logic = CochleaSegmentationLogic()
        volume = self._volume()
        with self.assertRaisesRegex(CochleaError, "No point list is selected as 'Landmarks'"):
            logic.process(volume, None)
        with self.assertRaisesRegex(CochleaError, "No point labelled 'Round Window'"):
            logic.process(volume, self._landmarks(self._INSIDE[:2], name="Two only"))
        outside = self._INSIDE[:2] + (("Round Window", (15.0, 2.0, 400.0)),)
        with self.assertRaisesRegex(CochleaError, "'Round Window' .* lies outside the volume 'CT'"):
            logic.process(volume, self._landmarks(outside, name="Outside"))
        self.delayDisplay("Bad landmarks passed")

    def test_ProcessIsHonestlyNotAvailable(self) -> None:
        """Valid inputs: the Logic says processing is not available yet and changes nothing."""
        from CochleaCommonLib.errors import CochleaError

        self._requireSlicerIO()
        self.delayDisplay("Not available yet")
        logic = CochleaSegmentationLogic()
        volume, landmarks = self._volume(), self._landmarks(self._INSIDE)
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaisesRegex(CochleaError, "not available in this version"):
            logic.process(volume, landmarks)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("Not available yet passed")

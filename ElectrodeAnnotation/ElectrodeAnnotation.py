"""ElectrodeAnnotation: locate the contacts of a cochlear-implant electrode array in post-operative CT/CBCT.

The module follows the Slicer scripted-module template: a typed parameter node, a thin widget
loaded from ``Resources/UI/ElectrodeAnnotation.ui``, a Logic usable from the Python console and a
self-test. The localisation itself (in ``ElectrodeAnnotationLib``) arrives with its own issue;
until then the Logic validates its inputs and says plainly that processing is not available,
and the Apply button stays disabled with a tooltip saying so.
"""

import logging
from typing import Annotated, Callable, Optional

import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin

#: Smallest and largest number of contacts accepted (arrays have 12 to 22 today).
CONTACTS_RANGE = (1, 32)

PROCESSING_NOT_AVAILABLE = _(
    "Electrode localisation is not available in this version of CochleaToolkit yet: it arrives with "
    "the ElectrodeAnnotation processing issue."
)

#
# ElectrodeAnnotation
#


class ElectrodeAnnotation(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Electrode Annotation")
        self.parent.categories = ["Cochlea"]
        self.parent.dependencies = ["CochleaCommon"]
        self.parent.contributors = ["CochleaToolkit contributors"]
        self.parent.helpText = _(
            "Locates the contacts of a cochlear-implant electrode array in a post-operative CT or "
            "cone-beam CT and orders them from apical to basal. With the cochlear landmarks of the "
            "implanted ear, contact positions are reported as insertion angles in the consensus "
            "cochlear coordinate system. "
            "This version checks the inputs only: the localisation arrives with its own issue."
        )
        self.parent.acknowledgementText = _(
            "Electrode localisation follows the graph-based method of Noble JH, Dawant BM. Automatic "
            "graph-based localization of cochlear implant electrodes in CT. MICCAI 2015, LNCS 9350:"
            "152-159. doi:10.1007/978-3-319-24571-3_19. Insertion angles follow the consensus cochlear "
            "coordinate system: Verbist BM et al. Otol Neurotol 2010;31(5):722-730."
        )


#
# ElectrodeAnnotationParameterNode
#


@parameterNodeWrapper
class ElectrodeAnnotationParameterNode:
    """
    The parameters of the module, stored in the scene (saved with it).

    inputVolume - post-operative CT or cone-beam CT showing the electrode array.
    landmarks - optional Helicotrema, Modiolus base and Round Window of the implanted ear.
    numberOfContacts - number of contacts of the implanted array.
    outputContacts - point list that receives one point per contact, apical to basal.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    landmarks: vtkMRMLMarkupsFiducialNode
    numberOfContacts: Annotated[int, WithinRange(*CONTACTS_RANGE)] = 12
    outputContacts: vtkMRMLMarkupsFiducialNode


#
# ElectrodeAnnotationWidget
#


class ElectrodeAnnotationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI: the .ui file binds to the parameter node; the Logic does all the work."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ElectrodeAnnotation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.progressBar.visible = False

        self.logic = ElectrodeAnnotationLogic()

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

    def setParameterNode(self, inputParameterNode: Optional[ElectrodeAnnotationParameterNode]) -> None:
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
        with slicer.util.tryWithErrorDisplay(_("Electrode localisation failed."), waitCursor=True):
            p = self._parameterNode
            p.outputContacts = self.logic.process(
                p.inputVolume, p.numberOfContacts, p.landmarks, p.outputContacts, progressCallback=self._onProgress)

    def _onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.visible = fraction < 1.0
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.progressBar.format = message
        slicer.app.processEvents()


#
# ElectrodeAnnotationLogic
#


class ElectrodeAnnotationLogic(ScriptedLoadableModuleLogic):
    """Electrode contact localisation, usable without the GUI (Python console, batch scripts, tests)."""

    #: Becomes True when the localisation lands; the widget's Apply button follows it.
    processingAvailable = False

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self) -> ElectrodeAnnotationParameterNode:
        return ElectrodeAnnotationParameterNode(super().getParameterNode())

    def canProcess(self, parameterNode: Optional[ElectrodeAnnotationParameterNode]) -> tuple:
        """Whether Apply can run with these parameters, and the sentence the GUI shows either way."""
        if not self.processingAvailable:
            return False, PROCESSING_NOT_AVAILABLE
        if parameterNode is None or not parameterNode.inputVolume:
            return False, _("Select the post-operative volume.")
        return True, _("Locate the electrode contacts.")

    def process(self, inputVolume: vtkMRMLScalarVolumeNode, numberOfContacts: int,
                landmarks: Optional[vtkMRMLMarkupsFiducialNode] = None,
                outputContacts: Optional[vtkMRMLMarkupsFiducialNode] = None,
                progressCallback: Optional[Callable[[float, str], Optional[bool]]] = None,
                cancelToken=None) -> vtkMRMLMarkupsFiducialNode:
        """Locate ``numberOfContacts`` electrode contacts and order them from apical to basal.

        Can be used without the GUI. All inputs are validated before any work starts.

        :param inputVolume: post-operative CT or cone-beam CT showing the electrode array.
        :param numberOfContacts: contacts of the implanted array (1 to 32).
        :param landmarks: optional point list labelled Helicotrema, Modiolus base and Round Window,
            inside ``inputVolume``, to report insertion angles.
        :param outputContacts: point list to fill (created when None).
        :param progressCallback: ``callback(fraction, message)``; returning True requests cancellation.
        :param cancelToken: a ``CochleaCommonLib.progress.CancelToken`` the caller may cancel.
        :return: the output point list.
        :raises CochleaError: invalid inputs (the message names the problem), and, in this
            version, always after validation, because the localisation is not available yet.
        """
        from CochleaCommonLib.errors import CochleaError, InvalidInputError

        from CochleaCommon import LANDMARK_NAMES, CochleaCommonLogic

        low, high = CONTACTS_RANGE
        if isinstance(numberOfContacts, bool) or not isinstance(numberOfContacts, int) \
                or not low <= numberOfContacts <= high:
            raise InvalidInputError(
                f"The number of electrode contacts must be a whole number from {low} to {high}, "
                f"not {numberOfContacts!r}."
            )
        common = CochleaCommonLogic()
        image = common.volumeImage(inputVolume, _("Post-operative volume"))
        if landmarks is not None:
            common.pointsInsideVolume(landmarks, image, inputVolume.GetName(), _("Cochlea landmarks"),
                                      requiredLabels=list(LANDMARK_NAMES))
        logging.info(f"ElectrodeAnnotation: inputs valid ({image!r}, {numberOfContacts} contacts)")
        raise CochleaError(f"{PROCESSING_NOT_AVAILABLE} The inputs were checked and are valid; nothing was changed.")


#
# ElectrodeAnnotationTest
#


class ElectrodeAnnotationTest(ScriptedLoadableModuleTest):
    """Self-test: parameter node storage and the Logic's input checks on a real scene."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_ParameterNodeDefaultsAndRoundTrip()
        self.setUp()
        self.test_ProcessRejectsMissingVolumeAndBadContactCount()
        # Last: these need CochleaCommonLib.slicer_io.
        self.setUp()
        self.test_ProcessRejectsLandmarksOutsideVolume()
        self.setUp()
        self.test_ProcessIsHonestlyNotAvailable()

    @staticmethod
    def _volume(name: str = "Post-op CBCT"):
        import numpy as np

        node = slicer.util.addVolumeFromArray(np.zeros((20, 30, 40), dtype=np.int16), name=name)
        node.SetSpacing(0.3, 0.3, 0.3)
        node.SetOrigin(10.0, -5.0, 2.0)
        return node

    @staticmethod
    def _landmarks(roundWindow=(15.0, 2.0, 4.5)):
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Cochlea landmarks")
        for label, position in (("Helicotrema", (13.0, 0.0, 4.0)), ("Modiolus base", (14.0, 1.0, 5.0)),
                                ("Round Window", roundWindow)):
            node.AddControlPoint(vtk.vtkVector3d(*position), label)
        return node

    def _requireSlicerIO(self) -> None:
        try:
            from CochleaCommonLib import slicer_io  # noqa: F401
        except ImportError as exc:
            self.skipTest(f"CochleaCommonLib.slicer_io is not importable yet ({exc})")

    def test_ParameterNodeDefaultsAndRoundTrip(self) -> None:
        """Defaults are written to the real vtkMRMLScriptedModuleNode; ranges are enforced."""
        self.delayDisplay("Parameter node")
        logic = ElectrodeAnnotationLogic()
        parameters = logic.getParameterNode()
        self.assertIsNone(parameters.inputVolume)
        self.assertIsNone(parameters.landmarks)
        self.assertEqual(parameters.numberOfContacts, 12)
        node = parameters.parameterNode
        self.assertEqual(node.GetAttribute("ModuleName"), "ElectrodeAnnotation")
        self.assertEqual(node.GetParameter("numberOfContacts"), "12")
        parameters.numberOfContacts = 22
        with self.assertRaises(ValueError):
            parameters.numberOfContacts = 0
        with self.assertRaises(TypeError):
            parameters.numberOfContacts = 12.5  # an int parameter
        volume = self._volume()
        parameters.inputVolume = volume
        again = logic.getParameterNode()
        self.assertEqual(again.numberOfContacts, 22)
        self.assertIs(again.inputVolume, volume)
        self.delayDisplay("Parameter node passed")

    def test_ProcessRejectsMissingVolumeAndBadContactCount(self) -> None:
        """No volume, or an impossible number of contacts: a CochleaError that names it."""
        from CochleaCommonLib.errors import CochleaError

        self.delayDisplay("Missing volume and contact count")
        logic = ElectrodeAnnotationLogic()
        with self.assertRaisesRegex(CochleaError, "No volume is selected as 'Post-operative volume'"):
            logic.process(None, 12)
        for bad in (0, 33, 12.0, True):
            with self.assertRaisesRegex(CochleaError, "number of electrode contacts must be a whole number"):
                logic.process(self._volume(), bad)
        self.assertFalse(logic.canProcess(logic.getParameterNode())[0])
        self.delayDisplay("Missing volume and contact count passed")

    def test_ProcessRejectsLandmarksOutsideVolume(self) -> None:
        """Landmarks given for another scan (outside this volume) are refused with their name."""
        from CochleaCommonLib.errors import CochleaError

        self._requireSlicerIO()
        self.delayDisplay("Landmarks outside the volume")
        logic = ElectrodeAnnotationLogic()
        with self.assertRaisesRegex(CochleaError, "'Round Window' .* lies outside the volume 'Post-op CBCT'"):
            logic.process(self._volume(), 12, self._landmarks(roundWindow=(-90.0, 2.0, 4.5)))
        self.delayDisplay("Landmarks outside the volume passed")

    def test_ProcessIsHonestlyNotAvailable(self) -> None:
        """Valid inputs (with and without landmarks): processing is not available yet; nothing changes."""
        from CochleaCommonLib.errors import CochleaError

        self._requireSlicerIO()
        self.delayDisplay("Not available yet")
        logic = ElectrodeAnnotationLogic()
        volume, landmarks = self._volume(), self._landmarks()
        before = slicer.mrmlScene.GetNumberOfNodes()
        for optionalLandmarks in (None, landmarks):
            with self.assertRaisesRegex(CochleaError, "not available in this version"):
                logic.process(volume, 12, optionalLandmarks)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("Not available yet passed")

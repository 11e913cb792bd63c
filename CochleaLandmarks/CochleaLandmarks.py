"""CochleaLandmarks: find the helicotrema, the modiolus base and the round window, from a seed click or
without one.

The module follows the Slicer scripted-module template: a typed parameter node, a thin widget
loaded from ``Resources/UI/CochleaLandmarks.ui``, a Logic usable from the Python console and a
self-test. The two detectors (SMICNet, a 2D patch classifier, and the 3D detector, which can also
find both ears without a seed) live in the pure-Python core ``CochleaLandmarksLib``; the Logic
turns MRML nodes into core data (through ``CochleaCommonLib.slicer_io``), runs it, and turns the
result back into nodes: a point list per ear, probability maps and a table.
"""

import logging
import os
import pathlib
import re
import unittest
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Optional

import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin

#: Landmark detectors, sweep modes and compute devices the module offers. The core
#: (``CochleaLandmarksLib.landmark_detection``) has the same tuples; a test keeps them equal.
#: They are repeated here so the module loads without importing the core (numpy, SimpleITK, ...).
METHODS = ("smicnet", "detector")
MODES = ("fast", "parity")
DEVICES = ("auto", "cpu", "cuda", "mps")
#: How the method selectors name each method.
METHOD_LABELS = {"smicnet": _("SMICNet (2D patches)"), "detector": _("3D detector")}
#: Registry task of each method's weights (``Resources/models.json``).
MODEL_TASKS = {"smicnet": "landmarks-smicnet", "detector": "landmarks-detector"}
#: Model id the Train section proposes for each method.
DEFAULT_TRAIN_MODEL_IDS = {"smicnet": "smicnet-custom", "detector": "detector-custom"}
#: Training steps per pass of the 3D detector (the core's ``DetectorTrainingConfig`` default).
DEFAULT_DETECTOR_TRAIN_STEPS = 1500
#: A model id: lower-case letters, digits, '.', '_' and '-' (as the core's SMICNet training checks).
MODEL_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
#: Edge of the box around each seed in fast mode (the core's ``FAST_BOX_MM``); the ball inscribed in it is searched.
DEFAULT_ROI_MM = 21.0
#: Opacity of the probability map shown over the CT after a run.
PROBABILITY_OVERLAY_OPACITY = 0.5
#: Minimum PyTorch version asked from the PyTorch Utils installer.
TORCH_REQUIREMENT = ">=2.1"

TORCH_MISSING = _(
    "PyTorch is not installed, and landmark detection needs it. Click 'Install PyTorch' below: it uses the "
    "PyTorch Utils module of the 'PyTorch' extension (light-the-torch picks the right build for this computer). "
    "If that module is missing, install the 'PyTorch' extension from the Extensions Manager and restart Slicer."
)

# Tags on the nodes a run creates, so a re-run for the same volume replaces them instead of adding more.
ROLE_ATTRIBUTE = "CochleaLandmarks.Role"
SEED_ATTRIBUTE = "CochleaLandmarks.Seed"
SOURCE_VOLUME_REFERENCE = "CochleaLandmarksSourceVolume"
ROLE_LANDMARKS = "Landmarks"
ROLE_PROBABILITY = "Probability"
ROLE_TABLE = "Table"

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
            "the round window. Place one seed per ear (both ears of one scan give one point list "
            "each). The landmarks are written to an editable point list named after the volume; a "
            "landmark that was not found stays in the list unplaced, with the reason in the results "
            "table, so it can be placed by hand. One probability map per landmark is added as a "
            "colour overlay, and a table lists positions, confidences and timings. The point list "
            "initialises the Cochlea Segmentation module. "
            "Two methods: SMICNet (a 2D patch classifier scanned around the seed, Wang et al. 2023) and the "
            "3D detector (a coarse and a fine 3D pass). With the 3D detector, 'Detect both ears' needs no "
            "seed: it finds every cochlea in the volume and gives one point list per ear, named by side "
            "('<volume> landmarks right' / 'left'). "
            "The 'Train' section trains new weights for either method from a folder of annotated volumes. "
            "From the Python console: slicer.util.getModuleLogic('CochleaLandmarks').process(volumeNode, "
            "seedNode) returns the nodes, without any dialog; process(volumeNode, None, method='detector', "
            "detectBothEars=True) runs without a seed (see the Logic's docstring)."
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
    detectBothEars - 3D detector only: find every cochlea without a seed (seedPoints is not used).
    outputLandmarks - point list that receives Helicotrema, Modiolus base and Round Window (None: one
        named after the volume is created, and reused by later runs on that volume). Not used when
        detecting both ears: each ear gets its own list, named by side.
    method - landmark detector: smicnet (2D patches) or detector (3D).
    mode - SMICNet only: fast (coarse-to-fine sweep, eight patch views averaged near the landmarks) or parity
        (the published procedure, slower).
    model - registry id or weights file; empty for the method's bundled default.
    device - where the network runs: auto (CUDA when usable, else CPU), cpu, cuda or mps.
    roiSizeMm - SMICNet only: edge length of the box around each seed (fast mode), in mm; everything within half of it
      from the seed is searched.
    createProbabilityMaps - add one probability-map volume per landmark.
    saveResults, outputDirectory - also write the results as files into this folder.
    train* - the Train section: method to train, annotated data folder, output folder, new model id,
        epochs (SMICNet), steps per pass (3D detector), device.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    seedPoints: vtkMRMLMarkupsFiducialNode
    detectBothEars: bool = False
    outputLandmarks: vtkMRMLMarkupsFiducialNode
    method: Annotated[str, Choice(list(METHODS))] = "smicnet"
    mode: Annotated[str, Choice(list(MODES))] = "fast"
    model: str = ""
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    roiSizeMm: Annotated[float, WithinRange(5.0, 60.0)] = DEFAULT_ROI_MM
    createProbabilityMaps: bool = True
    saveResults: bool = False
    outputDirectory: pathlib.Path = pathlib.Path.home() / "CochleaToolkit" / "landmarks"
    trainMethod: Annotated[str, Choice(list(METHODS))] = "smicnet"
    trainDataDirectory: pathlib.Path = pathlib.Path.home() / "CochleaToolkit" / "training-data"
    trainOutputDirectory: pathlib.Path = pathlib.Path.home() / "CochleaToolkit" / "models"
    trainModelId: str = DEFAULT_TRAIN_MODEL_IDS["smicnet"]
    trainEpochs: Annotated[int, WithinRange(1, 1000)] = 60
    trainInitialModel: str = ""
    trainSteps: Annotated[int, WithinRange(1, 100000)] = DEFAULT_DETECTOR_TRAIN_STEPS
    trainDevice: Annotated[str, Choice(list(DEVICES))] = "auto"


#
# CochleaLandmarksWidget
#


class CochleaLandmarksWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI: the .ui file binds to the parameter node; the Logic does all the work.

    Long runs stay in Slicer's main thread (a landmark sweep takes seconds): the progress callback
    updates the bar and processes events, so the Apply button, which reads "Cancel" while running,
    can set the cancel token that the core checks at every progress update.
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._cancelToken = None  # set while detection runs: Apply then acts as Cancel
        self._trainCancelToken = None  # set while training runs: Train then acts as Cancel
        self._modelComboMethod = None
        self._initialModelsListed = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CochleaLandmarks.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.progressBar.visible = False
        self.ui.trainProgressBar.visible = False
        # Only the "place" button: deleting and locking points is done in the point list itself.
        self.ui.seedPointsPlaceWidget.buttonsVisible = False
        self.ui.seedPointsPlaceWidget.placeButton().show()

        self.logic = CochleaLandmarksLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.installTorchButton.connect("clicked(bool)", self.onInstallTorchButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelComboBoxChanged)
        self.ui.browseModelButton.connect("clicked(bool)", self.onBrowseModelButton)
        self.ui.trainMethodComboBox.connect("currentIndexChanged(int)", self.onTrainMethodChanged)
        self.ui.trainInitialModelComboBox.connect("currentIndexChanged(int)", self.onTrainInitialModelChanged)

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
        if not self._parameterNode.seedPoints:
            # A list to place into, so the place button works at once.
            self._parameterNode.seedPoints = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLMarkupsFiducialNode", slicer.mrmlScene.GenerateUniqueName(_("Cochlea seed")))

    def setParameterNode(self, inputParameterNode: Optional[CochleaLandmarksParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            # connectGui lists the Choice values ("smicnet", "detector"); show readable names instead.
            for combo in (self.ui.methodComboBox, self.ui.trainMethodComboBox):
                for index, method in enumerate(METHODS):
                    combo.setItemText(index, METHOD_LABELS[method])
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
            self._modelComboMethod = None  # refill: models may have been added since
            self._initialModelsListed = False
            self._updateGUI()

    def _updateGUI(self, caller=None, event=None) -> None:
        """What the typed binding cannot do: the model list, which options apply, Apply, the torch button."""
        p = self._parameterNode
        if p is None:
            return
        self._updateModelComboBox()
        self.ui.installTorchButton.visible = not self.logic.processingAvailable
        self.ui.outputDirectoryPathLineEdit.enabled = p.saveResults
        # Mode and search region belong to SMICNet; "Detect both ears" to the 3D detector, and it needs no seed.
        smicnet = p.method == "smicnet"
        for widget in (self.ui.modeLabel, self.ui.modeComboBox, self.ui.roiSizeLabel, self.ui.roiSizeSliderWidget):
            widget.enabled = smicnet
        self.ui.detectBothEarsCheckBox.enabled = not smicnet
        seedFree = self.logic.seedFree(p)
        for widget in (self.ui.seedPointsLabel, self.ui.seedPointsSelector, self.ui.seedPointsPlaceWidget,
                       self.ui.outputLandmarksLabel, self.ui.outputLandmarksSelector):
            widget.enabled = not seedFree
        trainSmicnet = p.trainMethod == "smicnet"
        for widget in (self.ui.trainEpochsLabel, self.ui.trainEpochsSpinBox, self.ui.trainInitialModelLabel,
                       self.ui.trainInitialModelComboBox):
            widget.enabled = trainSmicnet
        self._updateInitialModelComboBox()
        for widget in (self.ui.trainStepsLabel, self.ui.trainStepsSpinBox):
            widget.enabled = not trainSmicnet
        if self._cancelToken is not None or self._trainCancelToken is not None:
            return  # running: Apply or Train is a Cancel button now
        canApply, reason = self.logic.canProcess(self._parameterNode)
        self.ui.applyButton.enabled = canApply
        self.ui.applyButton.toolTip = reason
        self.ui.statusLabel.text = "" if canApply else reason

    def _updateModelComboBox(self) -> None:
        """List the registered weights of the chosen method, plus a file the user chose."""
        p = self._parameterNode
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        try:
            if self._modelComboMethod != p.method:
                combo.clear()
                for value, label in self.logic.availableModels(p.method):
                    combo.addItem(label, value)
                self._modelComboMethod = p.method
            # A model registered for the other method is not offered (process() would not use it either);
            # one already in the list is this method's, so the registries are read only for the others.
            model = p.model
            if model and combo.findData(model) < 0 and not self.logic.modelMatchesMethod(model, p.method):
                model = ""
            wanted = model or self.logic.defaultModel(p.method)
            if combo.findData(wanted) < 0:
                combo.addItem(os.path.basename(wanted) or wanted, wanted)
            combo.currentIndex = combo.findData(wanted)
            combo.toolTip = wanted
        finally:
            combo.blockSignals(wasBlocked)

    def _updateInitialModelComboBox(self) -> None:
        """"New model" or any registered SMICNet weights to fine-tune (the published ones included)."""
        p = self._parameterNode
        combo = self.ui.trainInitialModelComboBox
        wasBlocked = combo.blockSignals(True)
        try:
            if not self._initialModelsListed:
                combo.clear()
                combo.addItem(_("New model (random start)"), "")
                for value, label in self.logic.availableModels("smicnet"):
                    combo.addItem(_("Fine-tune {label}").format(label=label), value)
                self._initialModelsListed = True
            if combo.findData(p.trainInitialModel) < 0:
                combo.addItem(os.path.basename(p.trainInitialModel), p.trainInitialModel)
            combo.currentIndex = combo.findData(p.trainInitialModel)
        finally:
            combo.blockSignals(wasBlocked)

    def onTrainInitialModelChanged(self, index: int) -> None:
        value = self.ui.trainInitialModelComboBox.itemData(index)
        if self._parameterNode is not None and value is not None:
            self._parameterNode.trainInitialModel = value

    def onModelComboBoxChanged(self, index: int) -> None:
        value = self.ui.modelComboBox.itemData(index)
        if self._parameterNode is not None and value is not None:
            self._parameterNode.model = "" if value == self.logic.defaultModel(self._parameterNode.method) else value

    def onBrowseModelButton(self) -> None:
        import qt

        if self._parameterNode is None:
            return
        method = self._parameterNode.method
        patterns = "*.pt *.pth *.h5 *.keras" if method == "smicnet" else "*.pt"
        path = qt.QFileDialog.getOpenFileName(
            self.parent, _("Choose {method} weights").format(method=METHOD_LABELS[method]), "",
            _("Model weights") + f" ({patterns});;" + _("All files") + " (*)")
        if path:
            self._parameterNode.model = path

    def onTrainMethodChanged(self, index: int) -> None:
        """Propose the new method's default model id, unless the user typed their own."""
        p = self._parameterNode
        if p is not None and 0 <= index < len(METHODS) and p.trainModelId in DEFAULT_TRAIN_MODEL_IDS.values():
            p.trainModelId = DEFAULT_TRAIN_MODEL_IDS[METHODS[index]]

    def onInstallTorchButton(self) -> None:
        """Install PyTorch through the PyTorch extension (which picks the CUDA or CPU build)."""
        with slicer.util.tryWithErrorDisplay(_("PyTorch could not be installed."), waitCursor=True):
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                slicer.util.errorDisplay(_(
                    "The 'PyTorch' extension is not installed. Install it from the Extensions Manager, "
                    "restart Slicer, then click 'Install PyTorch' again."))
                return
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                torchLogic.installTorch(askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT)
        self._updateGUI()

    def _setRunning(self, button, progressBar, running: bool, idleText: str) -> None:
        """Apply/Train become Cancel while running; the other sections are locked meanwhile."""
        for section in (self.ui.inputsCollapsibleButton, self.ui.outputsCollapsibleButton,
                        self.ui.advancedCollapsibleButton, self.ui.trainCollapsibleButton):
            section.enabled = not running
        if button is self.ui.trainButton:
            self.ui.applyButton.enabled = not running
        else:
            self.ui.trainButton.enabled = not running
        button.text = _("Cancel") if running else idleText
        button.enabled = True
        progressBar.value = 0
        progressBar.visible = running

    @staticmethod
    def _showProgress(progressBar, fraction: float, message: str) -> None:
        progressBar.value = int(round(100 * fraction))
        progressBar.format = f"{message} %p%" if message else "%p%"
        slicer.app.processEvents()  # draws the bar and delivers a click on Cancel

    def onApplyButton(self) -> None:
        if self._cancelToken is not None:  # the button reads "Cancel"
            self._cancelToken.cancel()
            self.ui.applyButton.enabled = False
            self.ui.applyButton.text = _("Cancelling...")
            return
        from CochleaCommonLib.errors import OperationCancelled
        from CochleaCommonLib.progress import CancelToken

        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Landmark detection failed."), waitCursor=False):
            allowDownload = self._confirmModelDownload(self.logic.processArguments(p)["model"], p.method)
            if allowDownload is None:
                return
            self._cancelToken = CancelToken()
            self._setRunning(self.ui.applyButton, self.ui.progressBar, True, _("Apply"))
            try:
                output = self.logic.process(
                    **self.logic.processArguments(p),
                    progressCallback=lambda f, m: self._showProgress(self.ui.progressBar, f, m),
                    cancelToken=self._cancelToken, allowDownload=allowDownload)
            except OperationCancelled:
                self.ui.resultsLabel.text = _("Cancelled: nothing was added to the scene.")
                return
            finally:
                self._cancelToken = None
                self._setRunning(self.ui.applyButton, self.ui.progressBar, False, _("Apply"))
                self._updateGUI()
            # Seed-free runs name one list per ear; a seeded run's list is refilled by the next run.
            p.outputLandmarks = None if output.seedFree else output.landmarks
            self._showResults(output)

    def _confirmModelDownload(self, model: Optional[str], method: str) -> Optional[bool]:
        """True to download missing weights, False when none is needed, None when the user declined."""
        url = self.logic.modelDownloadUrl(model, method)
        if not url:
            return False
        ok = slicer.util.confirmOkCancelDisplay(
            _("The weights of model '{model}' are not on this computer yet. Download them now from {url}?").format(
                model=model or self.logic.defaultModel(method), url=url))
        return True if ok else None

    def _showResults(self, output) -> None:
        """Summary text and table; the first probability map over the CT; slices on the modiolus base."""
        self.ui.resultsLabel.text = output.summary()
        self.ui.resultsTableView.setMRMLTableNode(output.table)
        self.ui.resultsCollapsibleButton.collapsed = False
        maps = output.probabilityVolumes
        if maps:
            slicer.util.setSliceViewerLayers(background=self._parameterNode.inputVolume,
                                             foreground=next(iter(maps.values())),
                                             foregroundOpacity=PROBABILITY_OVERLAY_OPACITY)
        landmarks = output.landmarks
        for n in range(landmarks.GetNumberOfControlPoints()):
            if (landmarks.GetNthControlPointLabel(n) == "Modiolus base"
                    and landmarks.GetNthControlPointPositionStatus(n) == landmarks.PositionDefined):
                slicer.modules.markups.logic().JumpSlicesToNthPointInMarkup(landmarks.GetID(), n, True)

    def onTrainButton(self) -> None:
        if self._trainCancelToken is not None:  # the button reads "Cancel"
            self._trainCancelToken.cancel()
            self.ui.trainButton.enabled = False
            self.ui.trainButton.text = _("Cancelling...")
            return
        from CochleaCommonLib.errors import OperationCancelled
        from CochleaCommonLib.progress import CancelToken

        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Training failed."), waitCursor=False):
            self._trainCancelToken = CancelToken()
            self._setRunning(self.ui.trainButton, self.ui.trainProgressBar, True, _("Train"))
            smicnet = p.trainMethod == "smicnet"
            try:
                trained = self.logic.train(
                    p.trainDataDirectory, p.trainOutputDirectory, p.trainModelId,
                    epochs=p.trainEpochs if smicnet else None, device=p.trainDevice, register=True,
                    progressCallback=lambda f, m: self._showProgress(self.ui.trainProgressBar, f, m),
                    cancelToken=self._trainCancelToken, method=p.trainMethod,
                    steps=None if smicnet else p.trainSteps,
                    initialModel=(p.trainInitialModel or None) if smicnet else None)
            except OperationCancelled:
                self.ui.trainStatusLabel.text = _("Training cancelled: no model was written.")
                return
            finally:
                self._trainCancelToken = None
                self._setRunning(self.ui.trainButton, self.ui.trainProgressBar, False, _("Train"))
                self._updateGUI()
            self.ui.trainStatusLabel.text = self.logic.trainingSummary(trained)
            self._modelComboMethod = None  # the new model joins the list
            p.method = p.trainMethod
            p.model = trained.entry.id if trained.registry_path else str(trained.model_path)


#
# CochleaLandmarksLogic
#


@dataclass
class LandmarkDetection:
    """What one seed point (or one ear found without a seed) produced: point list, maps, core result, files.

    Attributes:
        seedLabel: label of the seed point (``"seed <n>"`` when it had none); for an ear found without
            a seed its side: ``"right"``, ``"left"`` or ``"side unknown"``.
        landmarks: point list with Helicotrema, Modiolus base, Round Window (unplaced when not found).
        probabilityVolumes: landmark name -> probability-map volume node (empty when not requested).
        result: the core's ``LandmarkResult`` (positions, confidences, maps, timings, warnings, report()).
        files: kind -> path of the files written (empty when no output folder was given).
    """

    seedLabel: str
    landmarks: Any
    probabilityVolumes: dict
    result: Any
    files: dict = field(default_factory=dict)


@dataclass
class DetectorTrainingResult:
    """What :meth:`CochleaLandmarksLogic.train` returns for the 3D detector (``train_detector``'s outputs).

    Attributes:
        model_path: the weights file (``<model id>.pt``, every trained pass in one file).
        entry: its registry entry (``CochleaCommonLib.model_registry.ModelEntry``).
        entry_path: the entry as JSON, beside the weights.
        history_path: ``history.csv`` (loss and validation distance per evaluation).
        record: settings, cases and validation figures per pass (also stored in the weights file).
        registry_path: the per-user registry the model was added to (None when not registered).
    """

    model_path: pathlib.Path
    entry: Any
    entry_path: pathlib.Path
    history_path: pathlib.Path
    record: dict
    registry_path: Optional[pathlib.Path] = None


@dataclass
class CochleaLandmarksOutput:
    """What :meth:`CochleaLandmarksLogic.process` returns: one detection per seed point (or ear) and one table.

    ``landmarks``, ``probabilityVolumes`` and ``result`` are those of the first seed, for the
    common case of one seed; ``detections`` has all of them (both ears of one scan). Without a
    seed (``detectBothEars``) the right ear comes first.
    """

    detections: list
    table: Any

    @property
    def seedFree(self) -> bool:
        """True when the ears were found by the 3D detector without a seed."""
        return any(getattr(d.result, "seed_free", False) for d in self.detections)

    def detection(self, side: str):
        """The detection of the ``"right"`` or ``"left"`` ear of a seed-free run (None when not found)."""
        return next((d for d in self.detections if getattr(d.result, "side", None) == side), None)

    @property
    def landmarks(self):
        """Point list of the first seed."""
        return self.detections[0].landmarks

    @property
    def probabilityVolumes(self) -> dict:
        """Probability-map volume nodes of the first seed, by landmark name."""
        return self.detections[0].probabilityVolumes

    @property
    def result(self):
        """Core ``LandmarkResult`` of the first seed."""
        return self.detections[0].result

    @property
    def warnings(self) -> list:
        """Every warning of every seed (coarse voxels, device fallback, metal), without repeats."""
        seen = []
        for detection in self.detections:
            seen += [w for w in detection.result.warnings if w not in seen]
        return seen

    def summary(self) -> str:
        """A few lines for the results panel and the log: what was found, how long it took, what to check."""
        from CochleaCommon import LANDMARK_NAMES

        lines = []
        for detection in self.detections:
            result = detection.result
            found = result.found_names
            how = (_("{mode} mode").format(mode=result.mode) if result.method == "smicnet"
                   else METHOD_LABELS.get(result.method, result.method))
            if getattr(result, "seed_free", False):
                how += ", " + _("found without a seed")
            lines.append(_("{name}: {found} of {total} landmarks found in {seconds:.1f} s ({model}, {how}, "
                           "{device}).").format(name=detection.landmarks.GetName(), found=len(found),
                                                total=len(LANDMARK_NAMES), seconds=result.timings.get("total", 0.0),
                                                model=result.model_id, how=how, device=result.device))
            for name in LANDMARK_NAMES:
                if name not in found:
                    lines.append("  " + _("{name} not found: {reason}. Place it by hand in the point list.").format(
                        name=name, reason=result.missing_reasons.get(name, _("no confident region"))))
            if detection.files:
                folder = os.path.dirname(str(next(iter(detection.files.values()))))
                lines.append("  " + _("Saved in {folder}").format(folder=folder))
        lines += [_("Warning: {text}").format(text=w) for w in self.warnings]
        return "\n".join(lines)


class CochleaLandmarksLogic(ScriptedLoadableModuleLogic):
    """Landmark detection and training, usable without the GUI (Python console, batch scripts, tests).

    No dialogs, no Qt: errors are ``CochleaError`` subclasses whose message says what to do. The
    loaded network is kept between calls (same method, model and device), so a loop over many
    volumes loads it once::

        logic = slicer.util.getModuleLogic("CochleaLandmarks")
        for volume, seed in cases:
            output = logic.process(volume, seed, device="cpu")
            print(volume.GetName(), output.result.positions_ras)

        # The 3D detector, without a seed: one point list per ear found, named by side.
        output = logic.process(volume, None, method="detector", detectBothEars=True)
        right = output.detection("right")  # None when no right ear was found
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._detectorKey = None
        self._detector = None

    def getParameterNode(self) -> CochleaLandmarksParameterNode:
        return CochleaLandmarksParameterNode(super().getParameterNode())

    # --- availability, models --------------------------------------------------------------------
    @property
    def processingAvailable(self) -> bool:
        """Whether PyTorch can be imported (checked without importing it, so it is cheap)."""
        from CochleaCommonLib.devices import torch_installed

        return torch_installed()

    def canProcess(self, parameterNode: Optional[CochleaLandmarksParameterNode]) -> tuple:
        """Whether Apply can run with these parameters, and the sentence the GUI shows either way."""
        if not self.processingAvailable:
            return False, TORCH_MISSING
        if parameterNode is None or not parameterNode.inputVolume:
            return False, _("Select the input volume.")
        if self.seedFree(parameterNode):
            return True, _("Find every cochlea in the volume (no seed needed) and detect the landmarks of each ear.")
        if not parameterNode.seedPoints or parameterNode.seedPoints.GetNumberOfDefinedControlPoints() == 0:
            if parameterNode.method == "detector":
                return False, _("Place a seed point on the cochlea (one per ear), or tick 'Detect both ears'.")
            return False, _("Place a seed point on the cochlea (one per ear).")
        return True, _("Detect the cochlear landmarks around each seed point.")

    @staticmethod
    def seedFree(parameterNode: CochleaLandmarksParameterNode) -> bool:
        """Whether these parameters ask for the seed-free mode ('Detect both ears' only applies to the detector)."""
        return bool(parameterNode.detectBothEars) and parameterNode.method == "detector"

    def processArguments(self, parameterNode: CochleaLandmarksParameterNode) -> dict:
        """The keyword arguments of :meth:`process` that the parameter node (the GUI) asks for.

        Options that do not apply to the chosen method are left at their neutral value rather than
        passed (the widget greys them out): mode and search region are SMICNet's, 'Detect both ears'
        is the detector's; a seed-free run uses neither the seeds nor the output point list; a model
        registered for the other method (chosen before the method was switched) gives the default.
        """
        p = parameterNode
        smicnet = p.method == "smicnet"
        seedFree = self.seedFree(p)
        model = p.model or None
        if model is not None and not self.modelMatchesMethod(model, p.method):
            model = None
        return {
            "inputVolume": p.inputVolume,
            "seedPoints": None if seedFree else p.seedPoints,
            "outputLandmarks": None if seedFree else p.outputLandmarks,
            "method": p.method,
            "model": model,
            "mode": p.mode if smicnet else "fast",
            "device": p.device,
            "roiSizeMm": p.roiSizeMm if smicnet else None,
            "createProbabilityMaps": p.createProbabilityMaps,
            "outputDirectory": p.outputDirectory if p.saveResults else None,
            "detectBothEars": seedFree,
        }

    def modelMatchesMethod(self, model: Optional[str], method: str) -> bool:
        """False when ``model`` is a registered id of another method's weights (files and unknown ids pass:
        loading checks them and says what is wrong)."""
        if not model:
            return True
        for registry, _trainedHere in self._registries():
            if model in registry:
                return registry.get(model).task == MODEL_TASKS.get(method)
        return True

    @staticmethod
    def defaultModel(method: str = "smicnet") -> str:
        """Registry id of the weights used when no model is chosen (the bundled ones)."""
        from CochleaLandmarksLib.landmark_detection import DEFAULT_MODELS

        return DEFAULT_MODELS[method]

    def availableModels(self, method: str = "smicnet") -> list:
        """(registry id, label) of every registered model for ``method``, the default first.

        The label says when the weights are not on this computer yet (not checksummed here: that
        happens when a model is loaded).
        """
        default = self.defaultModel(method)
        models = []
        for registry, trainedHere in self._registries():
            for entry in registry.entries:
                if entry.task != MODEL_TASKS.get(method) or any(entry.id == m for m, _label in models):
                    continue
                present = any(path.is_file() for _origin, path in registry.candidates(entry))
                label = entry.id
                if entry.id == default:
                    label += " " + _("(default)")
                if trainedHere:
                    label += " " + _("(trained here)")
                if not present:
                    label += " " + (_("(download needed)") if entry.url else _("(missing)"))
                models.append((entry.id, label))
        if not any(modelId == default for modelId, _label in models):  # not registered in this installation
            models.append((default, default + " " + _("(default)") + " " + _("(missing)")))
        models.sort(key=lambda item: item[0] != default)
        return models

    @staticmethod
    def _registries() -> list:
        """(registry, trained here) pairs: the extension's registry, then the per-user one of trained models."""
        from CochleaCommonLib.model_registry import ModelRegistry
        from CochleaLandmarksLib.smicnet_training import user_registry_path

        registries = [(ModelRegistry.load(), False)]
        userRegistry = user_registry_path()
        if userRegistry.is_file():
            try:
                registries.append((ModelRegistry.load(userRegistry), True))
            except Exception as exc:  # a broken user registry must not hide the bundled models
                logging.warning(f"CochleaLandmarks: the registry of trained models {userRegistry} is unreadable: {exc}")
        return registries

    def _registryFor(self, model: str):
        """The registry that knows the model id ``model`` (None: the default one, or a weights file)."""
        for registry, trainedHere in self._registries():
            if model in registry:
                return registry if trainedHere else None
        return None

    def modelDownloadUrl(self, model: Optional[str] = None, method: str = "smicnet") -> Optional[str]:
        """The address a registered model would be downloaded from, when its weights are not here yet."""
        modelId = str(model) if model else self.defaultModel(method)
        registry = next((r for r, _trainedHere in self._registries() if modelId in r), None)
        if registry is None:
            return None  # a weights file, or an unknown id that loading will report
        entry = registry.get(modelId)
        if any(path.is_file() for _origin, path in registry.candidates(entry)):
            return None
        return entry.url or None

    def loadDetector(self, method: str = "smicnet", model: Optional[str] = None, device: str = "auto",
                     allowDownload: bool = False, progress=None):
        """The loaded network for (method, model, device), loaded once and kept for later calls.

        Only the last one is kept (switching models frees the previous network). A weights file
        that changed on disk (retrained) is loaded again.
        """
        from CochleaCommonLib.devices import normalise_device_request
        from CochleaLandmarksLib.landmark_detection import load_detector

        modelKey = str(model) if model else self.defaultModel(method)
        stamp = None
        if os.path.isfile(modelKey):
            stat = os.stat(modelKey)
            stamp = (stat.st_mtime_ns, stat.st_size)
        key = (method, modelKey, normalise_device_request(device), stamp)
        if key != self._detectorKey:
            self._detector, self._detectorKey = None, None
            self._detector = load_detector(method, modelKey, device=device, registry=self._registryFor(modelKey),
                                           allow_download=allowDownload, progress=progress)
            self._detectorKey = key
        return self._detector

    def clearModelCache(self) -> None:
        """Forget the loaded network (frees its memory; the next run loads it again)."""
        self._detector, self._detectorKey = None, None

    # --- detection ---------------------------------------------------------------------------------
    def process(self, inputVolume: vtkMRMLScalarVolumeNode, seedPoints: Optional[vtkMRMLMarkupsFiducialNode],
                outputLandmarks: Optional[vtkMRMLMarkupsFiducialNode] = None, method: str = "smicnet",
                model: Optional[str] = None, mode: str = "fast", device: str = "auto",
                roiSizeMm: Optional[float] = None, createProbabilityMaps: bool = True,
                outputDirectory: Optional[str] = None,
                progressCallback: Optional[Callable[[float, str], Optional[bool]]] = None,
                cancelToken=None, allowDownload: bool = False,
                detectBothEars: bool = False) -> CochleaLandmarksOutput:
        """Detect Helicotrema, Modiolus base and Round Window around each seed point, or in every ear found.

        Usable without the GUI, in a loop over many volumes (the network is loaded once). Every
        input is checked before any work starts, and nodes are created only after all seeds were
        processed: an error or a cancellation leaves the scene as it was.

        Two ways to run:

        * **Seeded** (``detectBothEars=False``, either method): one detection around each point of
          ``seedPoints`` (several seeds = several ears; each gets its own point list).
        * **Seed-free** (``detectBothEars=True``, ``method="detector"`` only): the 3D detector searches
          the whole volume for cochleae (``detect_cochleae``) and each ear it confirms gets its own
          point list, named by side. ``seedPoints`` is not used (pass None) and ``outputLandmarks``
          must be None. When the volume shows no cochlea, ``InvalidInputError`` "No cochlea found in
          the volume ..." is raised and nothing is added to the scene::

              output = logic.process(volume, None, method="detector", detectBothEars=True)
              [d.landmarks.GetName() for d in output.detections]  # ['CT landmarks right', 'CT landmarks left']

        Results, per seed or ear:

        * a point list ``"<volume> landmarks"`` (``"<volume> landmarks (<seed label>)"`` with
          several seeds; ``"<volume> landmarks right"`` / ``"... left"`` / ``"... (side unknown)"``
          without a seed) holding the three landmarks in world RAS, under the volume's parent
          transform so they follow it; a landmark that was not found is an unplaced point;
        * with ``createProbabilityMaps``, one probability volume per landmark on the input's own
          voxel lattice (cropped to the searched region), coloured as a heat map, named like the
          point list (``"<volume> Helicotrema probability right"`` ...);
        * with ``outputDirectory``, the files of ``write_landmark_outputs`` (``landmarks.fcsv``,
          ``landmarks.mrk.json``, ``probability_*.nrrd``, ``report.json``) in
          ``<outputDirectory>/<volume>[/<seed>]/``, or ``<outputDirectory>/<volume>/<side>/`` for
          each ear found without a seed.

        and one table ``"<volume> landmarks table"`` with positions, confidences, reasons, the run
        (model, device, where the seed came from) and timings. Running again on the same volume
        refills these nodes (the latest run wins) instead of adding new ones.

        :param inputVolume: CT or cone-beam CT of the temporal bone (any orientation, 0.1-0.6 mm voxels).
        :param seedPoints: point list with one point placed roughly on the cochlea of each ear; not
            used (may be None) with ``detectBothEars``.
        :param outputLandmarks: point list to fill for the first seed (None: reuse or create the
            volume's list). A list holding another volume's results is not overwritten. Must be None
            with ``detectBothEars`` (each ear gets its own list, named by side).
        :param method: landmark detector; one of ``METHODS``: ``smicnet`` (2D patch classifier) or
            ``detector`` (3D detector).
        :param model: registry id or weights file; None for the method's bundled default.
        :param mode: SMICNet: ``fast`` (coarse-to-fine, eight views averaged near the landmarks) or ``parity``
            (the published procedure). The 3D detector has only ``fast``.
        :param device: ``auto``, ``cpu``, ``cuda``, ``cuda:<index>`` or ``mps``; an unavailable GPU
            falls back to the CPU with a warning.
        :param roiSizeMm: SMICNet: edge (mm, 5 to 60) of the box around each seed (its inscribed ball is
            searched) in fast mode; None for the default (``DEFAULT_ROI_MM``). The 3D detector searches its own fixed
            cube: a value given with it is ignored, with a warning in the results.
        :param createProbabilityMaps: add the probability-map volumes.
        :param outputDirectory: folder to save the results in (created if needed); None: no files.
        :param progressCallback: ``callback(fraction, message)``; returning True requests cancellation.
        :param cancelToken: a ``CochleaCommonLib.progress.CancelToken`` the caller may cancel.
        :param allowDownload: download registered weights that are not on this computer yet.
        :param detectBothEars: find the cochleae without a seed (3D detector only; see above).
        :return: a :class:`CochleaLandmarksOutput` (``landmarks``, ``probabilityVolumes``, ``table``,
            ``result``; ``detections`` for every seed or ear, right ear first; ``detection("left")``).
        :raises CochleaError: invalid inputs (the message names the problem and the fix), "no cochlea
            found within N mm of the seed" / "No cochlea found in the volume", missing or corrupt
            weights, PyTorch not installed (``MissingDependencyError``), cancellation
            (``OperationCancelled``).
        """
        from CochleaCommonLib.progress import Progress

        checked = self._checkInputs(inputVolume, seedPoints, outputLandmarks, method, mode, device, roiSizeMm,
                                    outputDirectory, detectBothEars)
        image, seeds, outputFolder = checked
        progress = Progress(progressCallback, cancelToken)
        progress.update(0.0, _("Loading the model"))
        detector = self.loadDetector(method, model, device, allowDownload, progress.sub(0.0, 0.1))
        if detectBothEars:
            results = self._detectEars(image, detector, createProbabilityMaps, progress.sub(0.1, 0.95))
            names = [self._earNaming(result) for result in results]
        else:
            results = self._detectAll(image, seeds, detector, method, mode, roiSizeMm, createProbabilityMaps,
                                      progress.sub(0.1, 0.95))
            names = self._seedNaming(seeds)
        progress.update(0.95, _("Adding the results to the scene"))
        output = self._createNodes(inputVolume, names, results, outputLandmarks)
        if outputFolder is not None:
            progress.update(0.97, _("Saving the results"))
            self._writeFiles(output, inputVolume.GetName(), outputFolder)
        for warning in output.warnings:
            logging.warning(f"CochleaLandmarks: {warning}")
        logging.info("CochleaLandmarks: " + output.summary().replace("\n", " | "))
        progress.update(1.0, _("Done"))
        return output

    def _checkInputs(self, inputVolume, seedPoints, outputLandmarks, method, mode, device, roiSizeMm,
                     outputDirectory, detectBothEars=False) -> tuple:
        """Everything that can be checked before loading a network: (image, seeds or None, output folder)."""
        from CochleaCommonLib.devices import normalise_device_request
        from CochleaCommonLib.errors import InvalidInputError
        from CochleaLandmarksLib.landmark_detection import validate_image

        from CochleaCommon import CochleaCommonLogic

        if method not in METHODS:
            raise InvalidInputError(f"Unknown landmark method '{method}'. Available: {', '.join(METHODS)}.")
        if mode not in MODES:
            raise InvalidInputError(f"Unknown mode '{mode}'. Available: {', '.join(MODES)}.")
        if method == "detector" and mode != "fast":
            raise InvalidInputError(
                f"The 3D detector has no '{mode}' mode (parity reproduces SMICNet's published sweep): use mode "
                "'fast', or choose the SMICNet method.")
        if detectBothEars and method != "detector":
            raise InvalidInputError(
                "'Detect both ears' (no seed) needs the 3D detector: choose method 'detector', or place a seed "
                "point on each cochlea for SMICNet.")
        if detectBothEars and outputLandmarks is not None:
            raise InvalidInputError(
                "With 'Detect both ears' each ear gets its own point list, named by side ('<volume> landmarks "
                "right' / 'left'): leave the output point list empty.")
        normalise_device_request(device)
        if roiSizeMm is not None and not 5.0 <= float(roiSizeMm) <= 60.0:
            raise InvalidInputError(f"The search region size must be 5 to 60 mm, not {roiSizeMm} mm.")
        if inputVolume is not None and inputVolume.IsA("vtkMRMLLabelMapVolumeNode"):
            raise InvalidInputError(
                f"'{inputVolume.GetName()}' is a label map (a segmentation), not a CT. Select the CT or "
                "cone-beam CT image as 'Input volume'.")
        common = CochleaCommonLogic()
        image = common.volumeImage(inputVolume, _("Input volume"))
        try:
            validate_image(image)
        except InvalidInputError as exc:
            raise InvalidInputError(f"Volume '{inputVolume.GetName()}': {exc}") from exc
        if detectBothEars:
            return image, None, self._checkOutputDirectory(outputDirectory)
        try:
            seeds = common.pointsInsideVolume(seedPoints, image, inputVolume.GetName(), _("Seed point"))
        except InvalidInputError as exc:
            if method == "detector" and (seedPoints is None or seedPoints.GetNumberOfDefinedControlPoints() == 0):
                raise InvalidInputError(f"{exc} Or choose 'Detect both ears' (detectBothEars=True) to let the 3D "
                                        "detector find the cochleae without a seed.") from exc
            raise
        if outputLandmarks is not None and outputLandmarks is seedPoints:
            raise InvalidInputError(
                f"'{seedPoints.GetName()}' is selected both as the seed point list and as the output landmarks; "
                "choose another output point list (or none, to create one).")
        return image, seeds, self._checkOutputDirectory(outputDirectory)

    @staticmethod
    def _checkOutputDirectory(outputDirectory) -> Optional[pathlib.Path]:
        """The output folder if it exists or can be created (checked now, created when writing)."""
        from CochleaCommonLib.errors import InvalidInputError

        if outputDirectory is None or str(outputDirectory).strip() == "":
            return None
        folder = pathlib.Path(outputDirectory).expanduser()
        if folder.exists() and not folder.is_dir():
            raise InvalidInputError(f"The output folder {folder} is a file; choose a folder.")
        existing = folder
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        if not os.access(existing, os.W_OK):
            raise InvalidInputError(f"Cannot write into {existing} (for the output folder {folder}); "
                                    "choose a folder you can write to.")
        return folder

    @staticmethod
    def _seedLabels(seeds) -> list:
        """A distinct, non-empty label per seed (duplicates get their index)."""
        labels = []
        for n, label in enumerate(seeds.labels):
            label = label.strip() or f"seed {n + 1}"
            if label in labels:
                label = f"{label} #{n + 1}"
            labels.append(label)
        return labels

    @classmethod
    def _seedNaming(cls, seeds) -> list:
        """(label, seed key, name suffix) per seed: the suffix tells the lists of several seeds apart."""
        labels = cls._seedLabels(seeds)
        several = len(labels) > 1
        return [(label, label if several else "", f" ({label})" if several else "") for label in labels]

    @staticmethod
    def _earNaming(result) -> tuple:
        """(label, seed key, name suffix) of an ear found without a seed: named by its side."""
        from CochleaLandmarksLib.landmark_detection import ear_name

        side = result.side or "side unknown"
        return side, f"ear: {side}", ear_name(result, base="")  # " right", " left", " (side unknown)"

    def _detectEars(self, image, detector, createProbabilityMaps, progress) -> list:
        """The 3D detector's seed-free search (``detect_cochleae``): one result per ear, right ear first."""
        from CochleaLandmarksLib import landmark_detection

        return landmark_detection.detect_cochleae(image, detector=detector, output_maps=createProbabilityMaps,
                                                  progress=progress)

    def _detectAll(self, image, seeds, detector, method, mode, roiSizeMm, createProbabilityMaps, progress) -> list:
        """The core's detection for every seed (nothing touches the scene here)."""
        from CochleaCommonLib.errors import InvalidInputError
        from CochleaLandmarksLib.landmark_detection import detect_landmarks

        labels = self._seedLabels(seeds)
        results = []
        count = len(labels)
        for n, label in enumerate(labels):
            part = progress.sub(n / count, (n + 1) / count)
            if count > 1:
                part.update(0.0, _("Seed '{label}' ({n} of {count})").format(label=label, n=n + 1, count=count))
            try:
                results.append(detect_landmarks(image, seeds.positions_ras[n], method=method, detector=detector,
                                                mode=mode, roi_mm=roiSizeMm, output_maps=createProbabilityMaps,
                                                progress=part))
            except InvalidInputError as exc:
                if count == 1:
                    raise
                raise InvalidInputError(f"Seed point '{label}': {exc}") from exc
        return results

    # --- result nodes -------------------------------------------------------------------------------
    @staticmethod
    def _previousOutputs(volume) -> dict:
        """Nodes earlier runs created for ``volume``, by role: they are refilled or removed."""
        scene = slicer.mrmlScene
        found = {}
        for n in range(scene.GetNumberOfNodes()):
            node = scene.GetNthNode(n)
            role = node.GetAttribute(ROLE_ATTRIBUTE)
            if role and node.GetNodeReference(SOURCE_VOLUME_REFERENCE) is volume:
                found.setdefault(role, []).append(node)
        return found

    @staticmethod
    def _claim(pool: dict, role: str, seedKey: str):
        """An earlier node for (role, seed): the one of the same seed, else any of that role, else None."""
        candidates = pool.get(role, [])
        node = next((c for c in candidates if c.GetAttribute(SEED_ATTRIBUTE) == seedKey), None)
        if node is None and candidates:
            node = candidates[0]
        if node is not None:
            candidates.remove(node)
        return node

    @staticmethod
    def _tag(node, volume, role: str, seedKey: str) -> None:
        node.SetAttribute(ROLE_ATTRIBUTE, role)
        node.SetAttribute(SEED_ATTRIBUTE, seedKey)
        node.SetNodeReferenceID(SOURCE_VOLUME_REFERENCE, volume.GetID())

    def _createNodes(self, volume, names: list, results: list, outputLandmarks) -> CochleaLandmarksOutput:
        """Point lists, probability volumes and the table, refilling the previous run's nodes.

        ``names``: (label, seed key, name suffix) per result (``_seedNaming`` / ``_earNaming``).
        """
        from CochleaCommonLib import slicer_io

        from CochleaCommon import LANDMARK_NAMES

        scene = slicer.mrmlScene
        transform = volume.GetParentTransformNode()
        pool = self._previousOutputs(volume)
        volumeName = volume.GetName()
        userList = outputLandmarks
        if userList is not None:
            owner = userList.GetNodeReference(SOURCE_VOLUME_REFERENCE)
            if owner is not None and owner is not volume:
                logging.info(f"CochleaLandmarks: '{userList.GetName()}' holds the landmarks of '{owner.GetName()}'; "
                             f"the landmarks of '{volumeName}' go to their own point list.")
                userList = None
            else:
                for nodes in pool.values():
                    if userList in nodes:
                        nodes.remove(userList)

        detections = []
        for n, ((label, seedKey, suffix), result) in enumerate(zip(names, results)):
            node = userList if (n == 0 and userList is not None) else self._claim(pool, ROLE_LANDMARKS, seedKey)
            name = node.GetName() if (node is not None and node is userList) else f"{volumeName} landmarks{suffix}"
            positions = [result.positions_ras.get(landmark) for landmark in LANDMARK_NAMES]
            descriptions = [
                f"{result.method} confidence {result.confidences.get(landmark, 0.0):.3f}"
                if positions[i] is not None else f"not found: {result.missing_reasons.get(landmark, '')}"
                for i, landmark in enumerate(LANDMARK_NAMES)]
            landmarks = slicer_io.landmarks_to_point_list_node(
                LANDMARK_NAMES, positions, name, scene, node=node, descriptions=descriptions, transform_node=transform)
            landmarks.SetName(name)
            self._tag(landmarks, volume, ROLE_LANDMARKS, seedKey)

            maps = {}
            for landmark, image in result.probability_maps.items():
                role = f"{ROLE_PROBABILITY} {landmark}"
                mapName = f"{volumeName} {landmark} probability{suffix}"
                mapNode = slicer_io.create_probability_volume_node(
                    image, mapName, scene, node=self._claim(pool, role, seedKey), transform_node=transform)
                mapNode.SetName(mapName)
                self._tag(mapNode, volume, role, seedKey)
                maps[landmark] = mapNode
            detections.append(LandmarkDetection(label, landmarks, maps, result))

        tableName = f"{volumeName} landmarks table"
        table = slicer_io.create_table_node(self._tableColumns(detections), tableName, scene,
                                            node=self._claim(pool, ROLE_TABLE, ""))
        table.SetName(tableName)
        self._tag(table, volume, ROLE_TABLE, "")
        for nodes in pool.values():  # what the previous run made and this one did not replace
            for node in nodes:
                scene.RemoveNode(node)
        return CochleaLandmarksOutput(detections, table)

    @staticmethod
    def _tableColumns(detections: list) -> dict:
        """Table rows: the three landmarks per seed, then the run, its timings and its warnings.

        Text columns (positions to 0.01 mm, confidences to 0.001) so rows about the run can leave
        the position cells empty; exact values are in the point list and in ``result``.
        """
        from CochleaCommon import LANDMARK_NAMES

        columns = {key: [] for key in ("Seed", "Landmark", "Found", "R", "A", "S", "Confidence", "Note")}

        def row(seed, item, found="", position=None, confidence="", note="") -> None:
            values = [f"{v:.2f}" for v in position] if position is not None else ["", "", ""]
            for key, value in zip(columns, [seed, item, found, *values, confidence, note]):
                columns[key].append(value)

        for detection in detections:
            result = detection.result
            for landmark in LANDMARK_NAMES:
                position = result.positions_ras.get(landmark)
                row(detection.seedLabel, landmark, "yes" if position is not None else "no", position,
                    f"{result.confidences.get(landmark, 0.0):.3f}",
                    "" if position is not None else result.missing_reasons.get(landmark, "not found"))
            if result.method == "smicnet":
                how = f"smicnet ({result.mode} mode), model {result.model_id}, device {result.device}, " \
                      f"{result.patches} patches"
            else:
                how = f"{result.method}, model {result.model_id}, device {result.device}"
            how += f", {result.search_box_mm:.1f} mm search cube"
            if getattr(result, "seed_free", False):
                r, a, s = (float(v) for v in result.seed_ras)
                how += f", found without a seed (search centre R {r:.1f}, A {a:.1f}, S {s:.1f})"
            row(detection.seedLabel, "Run", note=how)
            timings = dict(result.timings)
            total = timings.pop("total", sum(timings.values()))
            stages = ", ".join(f"{stage.replace('_', ' ')} {seconds:.2f} s" for stage, seconds in timings.items())
            row(detection.seedLabel, "Time", note=f"total {total:.2f} s ({stages})")
            for warning in result.warnings:
                row(detection.seedLabel, "Warning", note=warning)
        return columns

    @staticmethod
    def _safeName(text: str) -> str:
        return re.sub(r"[^\w.-]+", "_", text).strip("._") or "volume"

    def _writeFiles(self, output: CochleaLandmarksOutput, volumeName: str, folder: pathlib.Path) -> None:
        """``write_landmark_outputs`` per seed into ``<folder>/<volume>[/<seed>]``; paths go to ``files``."""
        from CochleaCommonLib.errors import CochleaError
        from CochleaLandmarksLib.landmark_detection import write_landmark_outputs

        several = len(output.detections) > 1
        for detection in output.detections:
            target = folder / self._safeName(volumeName)
            if several or getattr(detection.result, "seed_free", False):  # an ear found alone still gets its side
                target = target / self._safeName(detection.seedLabel)
            try:
                detection.files = write_landmark_outputs(detection.result, target,
                                                         name=detection.landmarks.GetName())
            except CochleaError as exc:
                raise CochleaError(f"{exc} The landmarks are in the scene, but the files were not saved.") from exc

    # --- training -------------------------------------------------------------------------------------
    def train(self, dataDirectory, outputDirectory, modelId: str, epochs: Optional[int] = None, device: str = "auto",
              register: bool = True, progressCallback: Optional[Callable[[float, str], Optional[bool]]] = None,
              cancelToken=None, method: str = "smicnet", steps: Optional[int] = None, headsDirectory=None,
              initialModel: Optional[str] = None):
        """Train new weights for ``method`` on a folder of annotated volumes.

        * ``method="smicnet"``: SMICNet (``CochleaLandmarksLib.smicnet_training.train_smicnet``), for
          ``epochs`` epochs at most.
        * ``method="detector"``: the 3D detector's coarse and fine passes
          (``CochleaLandmarksLib.detector_training.train_detector``), ``steps`` steps each; with
          ``headsDirectory`` also its global pass, which finds the cochleae of a head CT without a seed.

        :param dataDirectory: folder of volumes with their landmark files (``X.nrrd`` beside
            ``X_landmarks.fcsv`` or ``X_landmarks.mrk.json``).
        :param outputDirectory: folder for ``<modelId>.pt``, its registry entry (``<modelId>.json``) and
            ``history.csv`` (SMICNet also ``training_curves.png``); created.
        :param modelId: id of the new model (lower-case letters, digits, '.', '_', '-').
        :param epochs: SMICNet only: maximum number of training epochs, 1 to 1000 (training stops early
            when the validation loss stops improving); None for the default.
        :param device: ``auto``, ``cpu``, ``cuda``, ``cuda:<index>`` or ``mps``.
        :param register: also copy the weights into the per-user model cache and add them to the
            per-user registry, so ``process(method=method, model=modelId)`` and the model list offer them.
        :param progressCallback: ``callback(fraction, message)``; returning True requests cancellation.
        :param cancelToken: a ``CochleaCommonLib.progress.CancelToken`` the caller may cancel.
        :param method: ``smicnet`` or ``detector``.
        :param steps: 3D detector only: training steps per pass, 1 to 100000; None for the default
            (``DEFAULT_DETECTOR_TRAIN_STEPS``).
        :param headsDirectory: 3D detector only: folder of head volumes with every ear annotated
            (``X.nrrd`` beside ``X_left_landmarks.fcsv`` / ``X_right_landmarks.fcsv``) to train the global
            (seed-free) pass as well.
        :param initialModel: SMICNet only: fine-tune these weights (a registry id such as
            ``smicnet-published-5``, or a ``.h5``/``.pt`` file) instead of starting from random weights; the
            few-shot route of the original paper. The new model keeps their landmark convention.
        :return: SMICNet: the core's ``SmicnetTrainingResult`` (``model_path``, ``entry``, ``curves_path``,
            ``history``, ``val_metrics``, ...); 3D detector: a :class:`DetectorTrainingResult`. Both have
            ``model_path``, ``entry``, ``entry_path``, ``history_path`` and ``registry_path``.
        :raises CochleaError: bad settings or data (before training starts), PyTorch missing,
            cancellation (``OperationCancelled``: nothing is written).
        """
        from CochleaCommonLib.devices import normalise_device_request, require_torch
        from CochleaCommonLib.errors import InvalidInputError
        from CochleaCommonLib.progress import Progress

        if method not in METHODS:
            raise InvalidInputError(f"Unknown landmark method '{method}'. Available: {', '.join(METHODS)}.")
        if not str(dataDirectory or "").strip() or not pathlib.Path(dataDirectory).expanduser().is_dir():
            raise InvalidInputError(f"The training data folder '{dataDirectory}' does not exist. Choose the folder "
                                    "holding the annotated volumes and their landmark files.")
        outputFolder = self._checkOutputDirectory(outputDirectory)
        if outputFolder is None:
            raise InvalidInputError("Choose an output folder for the trained weights.")
        if method == "detector":
            if initialModel:
                raise InvalidInputError("Starting from existing weights applies to SMICNet; the 3D detector trains "
                                        "its passes from scratch (use 'cochlea train detector --base' to keep the "
                                        "passes of an existing detector that you do not retrain).")
            return self._trainDetector(pathlib.Path(dataDirectory).expanduser(), outputFolder, modelId, epochs, device,
                                       register, Progress(progressCallback, cancelToken), steps, headsDirectory)
        if steps is not None or headsDirectory is not None:
            raise InvalidInputError("Training steps per pass and a heads folder apply to the 3D detector; SMICNet "
                                    "trains for a number of epochs.")
        if epochs is None:
            from CochleaLandmarksLib.smicnet_training import SmicnetTrainingConfig

            epochs = SmicnetTrainingConfig().epochs
        if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= 1000:
            raise InvalidInputError(f"The number of epochs must be a whole number from 1 to 1000, not {epochs!r}.")
        normalise_device_request(device)
        from CochleaLandmarksLib.smicnet_training import SmicnetTrainingConfig, train_smicnet

        config = SmicnetTrainingConfig(epochs=epochs, device=device, model_id=str(modelId or ""),
                                       init=str(initialModel) if initialModel else None)
        config.validate()
        require_torch()
        trained = train_smicnet(pathlib.Path(dataDirectory).expanduser(), outputFolder, config,
                                progress=Progress(progressCallback, cancelToken), register=register)
        logging.info(f"CochleaLandmarks: trained '{modelId}': {trained.model_path}")
        return trained

    @staticmethod
    def _trainDetector(dataFolder: pathlib.Path, outputFolder: pathlib.Path, modelId, epochs, device, register: bool,
                       progress, steps, headsDirectory):
        """The 3D detector's part of :meth:`train` (every check before any work, then ``train_detector``)."""
        from CochleaCommonLib.devices import normalise_device_request, require_torch
        from CochleaCommonLib.errors import InvalidInputError

        if epochs is not None:
            raise InvalidInputError("The 3D detector trains a number of steps per pass, not epochs: give steps "
                                    "(or None for the default) and leave epochs out.")
        if steps is None:
            steps = DEFAULT_DETECTOR_TRAIN_STEPS
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 100000:
            raise InvalidInputError(f"The number of training steps per pass must be a whole number from 1 to "
                                    f"100000, not {steps!r}.")
        if not MODEL_ID_PATTERN.match(str(modelId or "")):
            raise InvalidInputError(f"The model id '{modelId}' may only use lower-case letters, digits, '.', '_' "
                                    "and '-' (and must start with a letter or digit).")
        heads = None
        if headsDirectory is not None and str(headsDirectory).strip():
            heads = pathlib.Path(headsDirectory).expanduser()
            if not heads.is_dir():
                raise InvalidInputError(f"The heads folder '{headsDirectory}' does not exist. Choose the folder of "
                                        "head volumes with both ears annotated, or leave it empty.")
        normalise_device_request(device)
        require_torch()
        from CochleaLandmarksLib.detector_training import DetectorTrainingConfig, train_detector

        stages = ("coarse", "fine") + (("global",) if heads is not None else ())
        config = DetectorTrainingConfig(model_id=str(modelId), stages=stages, steps={s: steps for s in stages},
                                        device=device)
        config.validate()
        out = train_detector(dataFolder, outputFolder, config, heads=heads, progress=progress)
        registryPath = None
        if register:
            from CochleaLandmarksLib.smicnet_training import register_trained_model

            registryPath = register_trained_model(out["model"], out["entry_obj"])
        trained = DetectorTrainingResult(model_path=pathlib.Path(out["model"]), entry=out["entry_obj"],
                                         entry_path=pathlib.Path(out["entry"]),
                                         history_path=pathlib.Path(out["history"]), record=out["record"],
                                         registry_path=registryPath)
        logging.info(f"CochleaLandmarks: trained the 3D detector '{modelId}': {trained.model_path}")
        return trained

    @staticmethod
    def trainingSummary(trained) -> str:
        """A few lines about a finished training (either method), for the Train section."""
        lines = [_("Model '{id}' written to {path}.").format(id=trained.entry.id, path=trained.model_path)]
        if isinstance(trained, DetectorTrainingResult):
            validation = trained.record.get("validation", {})
            figures = ", ".join(_("{stage} pass {error:.2f} mm").format(stage=stage, error=float(v.get(
                "best_error_mm", float("nan")))) for stage, v in validation.items())
            lines.append(_("Mean distance to the true landmarks on held-out cubes: {figures}.").format(
                figures=figures or _("no validation")))
        else:
            metrics = getattr(trained, "val_metrics", {}) or {}
            lines.append(_("Best epoch {best} of {run}{early}; validation accuracy {accuracy:.3f}, "
                           "macro F1 {f1:.3f}.").format(
                best=trained.best_epoch, run=trained.epochs_run,
                early=_(" (stopped early)") if trained.stopped_early else "",
                accuracy=metrics.get("accuracy", 0.0), f1=metrics.get("f1_macro", 0.0)))
        if trained.registry_path:
            lines.append(_("Registered: choose '{id}' as the model.").format(id=trained.entry.id))
        if getattr(trained, "curves_path", None):
            lines.append(_("Learning curves: {path}").format(path=trained.curves_path))
        return "\n".join(lines)


#
# CochleaLandmarksTest
#


class CochleaLandmarksTest(ScriptedLoadableModuleTest):
    """Self-test: parameter node storage, the input checks, and real detections on a phantom.

    The detections use the bundled weights on the CPU (SMICNet seeded; the 3D detector seeded and
    without a seed) and check every landmark against the phantom's exact ground truth. A test whose
    weights (or PyTorch) are missing is skipped with the reason; ``runTest`` still runs the others
    and fails only on a real failure (it raises ``SkipTest`` only when every such test was skipped).
    """

    #: Phantom used for the detection tests (generated in a few seconds; exact ground truth).
    PHANTOM_SEED = 1
    PHANTOM_FOV_MM = 30.0
    #: A "good click" 1 mm from the landmarks' centroid, and a search box whose inscribed ball reaches every landmark
    #: from it: smaller than the default (21 mm) to keep the self-test's several sweeps quick on a CI CPU.
    SEED_OFFSET_MM = (0.6, -0.5, 0.6)
    SELF_TEST_ROI_MM = 13.0
    #: Where (fraction of the volume along i, j, k) the "far from the cochlea" seed goes.
    FAR_SEED_FRACTION = (0.9, 0.1, 0.9)
    #: Largest accepted distance (mm) from the ground truth with the bundled weights.
    MAX_ERROR_MM = 1.5
    #: The same for the bundled 3D detector (detector-phantom), seeded and seed-free.
    DETECTOR_MAX_ERROR_MM = 1.5

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_ParameterNodeDefaultsAndRoundTrip()
        self.setUp()
        self.test_ProcessRejectsMissingInputs()
        self.setUp()
        self.test_ProcessRejectsSeedOutsideVolume()
        self.setUp()
        self.test_ProcessRejectsImagesThatAreNotCT()
        self.setUp()
        self.test_DetectorOptionsAreChecked()
        # Last: these need PyTorch and weights, and skip without them (each on its own).
        skipped = []
        needWeights = (self.test_SeedFarFromCochleaChangesNothing, self.test_DetectionOnPhantom,
                       self.test_DetectorOnPhantom, self.test_DetectorFindsTheEarWithoutSeed)
        for test in needWeights:
            self.setUp()
            try:
                test()
            except unittest.SkipTest as exc:
                logging.warning(f"CochleaLandmarksTest: {test.__name__} skipped: {exc}")
                skipped.append(f"{test.__name__}: {exc}")
        if len(skipped) == len(needWeights):
            raise unittest.SkipTest("; ".join(skipped))

    # --- helpers -------------------------------------------------------------------------------------
    @staticmethod
    def _volume(name: str = "CT", array=None):
        """40 x 30 x 20 voxels of 0.3 mm with CT-like noise (a blank volume is refused as 'not a CT')."""
        import numpy as np

        if array is None:
            array = np.random.default_rng(0).normal(300.0, 400.0, size=(20, 30, 40)).astype(np.int16)
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

    def _requireDetector(self, method: str = "smicnet") -> str:
        """The weights of ``method`` to test with: the bundled default, else any registered weights of that
        method found on this computer; skip if none (or without PyTorch)."""
        from CochleaCommonLib.devices import torch_installed
        from CochleaCommonLib.model_registry import ModelRegistry

        if not torch_installed():
            self.skipTest("PyTorch is not installed: landmark detection cannot run (install the PyTorch extension)")
        registry = ModelRegistry.load()
        default = CochleaLandmarksLogic.defaultModel(method)
        if default in registry and registry.find(default) is not None:
            return default
        for entry in registry.entries:
            if entry.task == MODEL_TASKS[method] and registry.find(entry.id) is not None:
                logging.warning(f"CochleaLandmarksTest: the bundled weights '{default}' were not found; testing with "
                                f"'{entry.id}' (accuracy on the phantom is not checked with them)")
                return entry.id
        self.skipTest(f"No {METHOD_LABELS[method]} weights found (neither the bundled '{default}' nor any "
                      "registered model; set COCHLEA_TOOLKIT_MODEL_DIRS to a folder holding them)")

    def _phantom(self):
        """The CT phantom case (generated once per test run)."""
        if getattr(self, "_phantomCase", None) is None:
            from CochleaCommonLib.phantom import generate_case

            self.delayDisplay("Generating a CT phantom")
            self._phantomCase = generate_case("ct", seed=self.PHANTOM_SEED, fov_mm=self.PHANTOM_FOV_MM)
        return self._phantomCase

    @staticmethod
    def _nodeIDs() -> set:
        scene = slicer.mrmlScene
        return {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}

    # --- tests ---------------------------------------------------------------------------------------
    def test_ParameterNodeDefaultsAndRoundTrip(self) -> None:
        """Defaults are written to the real vtkMRMLScriptedModuleNode and survive a scene save/load."""
        self.delayDisplay("Parameter node")
        logic = CochleaLandmarksLogic()
        parameters = logic.getParameterNode()
        self.assertIsNone(parameters.inputVolume)
        self.assertIsNone(parameters.seedPoints)
        self.assertEqual(parameters.method, "smicnet")
        self.assertEqual(parameters.mode, "fast")
        self.assertEqual(parameters.model, "")
        self.assertFalse(parameters.detectBothEars)
        self.assertEqual(parameters.trainMethod, "smicnet")
        self.assertEqual(parameters.trainSteps, DEFAULT_DETECTOR_TRAIN_STEPS)
        self.assertEqual(parameters.device, "auto")
        self.assertEqual(parameters.roiSizeMm, DEFAULT_ROI_MM)
        self.assertTrue(parameters.createProbabilityMaps)
        self.assertFalse(parameters.saveResults)
        node = parameters.parameterNode
        self.assertEqual(node.GetAttribute("ModuleName"), "CochleaLandmarks")
        self.assertEqual(float(node.GetParameter("roiSizeMm")), DEFAULT_ROI_MM)

        volume, seeds = self._volume(), self._seeds((13.0, 0.0, 4.0))
        parameters.inputVolume = volume
        parameters.seedPoints = seeds
        parameters.device = "cpu"
        parameters.mode = "parity"
        parameters.roiSizeMm = 12.5
        parameters.outputDirectory = pathlib.Path("/tmp/cochlea results")
        parameters.trainEpochs = 5
        parameters.method = "detector"
        parameters.detectBothEars = True
        parameters.trainMethod = "detector"
        parameters.trainSteps = 250
        with self.assertRaises(ValueError):
            parameters.trainSteps = 0
        with self.assertRaises(ValueError):
            parameters.roiSizeMm = 200.0  # outside WithinRange(5, 60)
        with self.assertRaises(ValueError):
            parameters.method = "not-a-method"
        with self.assertRaises(ValueError):
            parameters.trainEpochs = 0
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
        self.assertEqual(reread.mode, "parity")
        self.assertEqual(reread.trainEpochs, 5)
        self.assertEqual(reread.method, "detector")
        self.assertTrue(reread.detectBothEars)
        self.assertEqual(reread.trainMethod, "detector")
        self.assertEqual(reread.trainSteps, 250)
        self.assertEqual(reread.outputDirectory, pathlib.Path("/tmp/cochlea results"))
        self.assertEqual(reread.inputVolume.GetName(), "CT")
        self.assertEqual(reread.seedPoints.GetName(), "Cochlea seed")
        loaded.Clear(1)
        self.delayDisplay("Parameter node passed")

    def test_ProcessRejectsMissingInputs(self) -> None:
        """No volume, a bad option, or the seed list chosen as output: a CochleaError naming the problem."""
        from CochleaCommonLib.errors import CochleaError

        self.delayDisplay("Missing inputs")
        logic = CochleaLandmarksLogic()
        seeds = self._seeds((13.0, 0.0, 4.0))
        volume = self._volume()
        with self.assertRaisesRegex(CochleaError, "No volume is selected as 'Input volume'"):
            logic.process(None, seeds)
        with self.assertRaisesRegex(CochleaError, "Unknown landmark method 'magic'"):
            logic.process(volume, seeds, method="magic")
        with self.assertRaisesRegex(CochleaError, "Unknown mode 'slow'"):
            logic.process(volume, seeds, mode="slow")
        with self.assertRaisesRegex(CochleaError, "Unknown compute device 'gpu9'"):
            logic.process(volume, seeds, device="gpu9")
        with self.assertRaisesRegex(CochleaError, "search region size must be 5 to 60 mm"):
            logic.process(volume, seeds, roiSizeMm=1.0)
        with self.assertRaisesRegex(CochleaError, "selected both as the seed point list and as the output"):
            logic.process(volume, seeds, outputLandmarks=seeds)
        parameters = logic.getParameterNode()
        canProcess, reason = logic.canProcess(parameters)
        self.assertFalse(canProcess)
        self.assertIn("PyTorch" if not logic.processingAvailable else "input volume", reason)
        self.delayDisplay("Missing inputs passed")

    def test_ProcessRejectsSeedOutsideVolume(self) -> None:
        """A seed placed outside the volume (or no seed at all) is refused before any work."""
        from CochleaCommonLib.errors import CochleaError

        self.delayDisplay("Seed outside the volume")
        logic = CochleaLandmarksLogic()
        volume = self._volume()
        empty, outside = self._seeds(name="Empty"), self._seeds((13.0, 0.0, 4.0), (-80.0, 0.0, 4.0))
        before = self._nodeIDs()
        with self.assertRaisesRegex(CochleaError, "No point list is selected as 'Seed point'"):
            logic.process(volume, None)
        with self.assertRaisesRegex(CochleaError, "has no placed point"):
            logic.process(volume, empty)
        with self.assertRaisesRegex(CochleaError, "lies outside the volume 'CT'"):
            logic.process(volume, outside)
        self.assertEqual(self._nodeIDs(), before)
        self.delayDisplay("Seed outside the volume passed")

    def test_ProcessRejectsImagesThatAreNotCT(self) -> None:
        """A single slice, a label map and a blank volume are refused with a sentence saying why."""
        import numpy as np
        from CochleaCommonLib.errors import CochleaError

        self.delayDisplay("Images that are not a CT")
        logic = CochleaLandmarksLogic()
        seeds = self._seeds((13.0, 0.0, 2.0))
        noise = np.random.default_rng(1).normal(300.0, 400.0, size=(1, 30, 40)).astype(np.int16)
        with self.assertRaisesRegex(CochleaError, "Volume 'Slice'.*not a single slice"):
            logic.process(self._volume("Slice", noise), seeds)
        with self.assertRaisesRegex(CochleaError, "Volume 'Blank'.*single intensity"):
            logic.process(self._volume("Blank", np.zeros((20, 30, 40), dtype=np.int16)), seeds)
        labels = slicer.util.addVolumeFromArray(np.zeros((20, 30, 40), dtype=np.uint8), name="Labels",
                                                nodeClassName="vtkMRMLLabelMapVolumeNode")
        with self.assertRaisesRegex(CochleaError, "'Labels' is a label map"):
            logic.process(labels, seeds)
        self.delayDisplay("Images that are not a CT passed")

    def test_DetectorOptionsAreChecked(self) -> None:
        """Options of the other method are refused before any work: parity and 'both ears' rules, seeds."""
        from CochleaCommonLib.errors import CochleaError

        self.delayDisplay("Options of the two methods")
        logic = CochleaLandmarksLogic()
        volume, seeds = self._volume(), self._seeds((13.0, 0.0, 4.0))
        empty, mine = self._seeds(name="Empty"), self._seeds(name="Mine")
        before = self._nodeIDs()
        with self.assertRaisesRegex(CochleaError, "The 3D detector has no 'parity' mode"):
            logic.process(volume, seeds, method="detector", mode="parity")
        with self.assertRaisesRegex(CochleaError, "'Detect both ears' \\(no seed\\) needs the 3D detector"):
            logic.process(volume, None, method="smicnet", detectBothEars=True)
        with self.assertRaisesRegex(CochleaError, "No point list is selected as 'Seed point'"):
            logic.process(volume, None, method="smicnet")
        with self.assertRaisesRegex(CochleaError, "(?s)has no placed point.*'Detect both ears'"):
            logic.process(volume, empty, method="detector")
        with self.assertRaisesRegex(CochleaError, "each ear gets its own point list"):
            logic.process(volume, None, mine, method="detector", detectBothEars=True)
        self.assertEqual(self._nodeIDs(), before)

        # What the GUI asks for: SMICNet's options are not passed to the detector, nor seeds when seed-free.
        parameters = logic.getParameterNode()
        parameters.inputVolume, parameters.seedPoints = volume, seeds
        parameters.method, parameters.mode, parameters.detectBothEars = "detector", "parity", True
        arguments = logic.processArguments(parameters)
        self.assertEqual((arguments["mode"], arguments["roiSizeMm"], arguments["detectBothEars"]), ("fast", None, True))
        self.assertIsNone(arguments["seedPoints"])
        self.assertTrue(logic.canProcess(parameters)[0] or not logic.processingAvailable)
        parameters.method = "smicnet"
        arguments = logic.processArguments(parameters)
        self.assertEqual((arguments["mode"], arguments["detectBothEars"]), ("parity", False))
        self.assertIs(arguments["seedPoints"], seeds)
        self.delayDisplay("Options of the two methods passed")

    def test_SeedFarFromCochleaChangesNothing(self) -> None:
        """A seed in the temporal bone far from the cochlea: "no cochlea found within N mm", and no new node."""
        import numpy as np
        from CochleaCommonLib import slicer_io
        from CochleaCommonLib.errors import CochleaError

        model = self._requireDetector()
        self.delayDisplay("Seed far from the cochlea")
        case = self._phantom()
        volume = slicer_io.image_to_volume_node(case.image, "Phantom CT")
        # Near a corner of the phantom, about 20 mm from the cochlea; the search reaches 4 mm.
        seedRas = case.image.index_to_ras(np.array(self.FAR_SEED_FRACTION) * (np.array(case.image.shape_ijk) - 1))
        self.assertGreater(float(np.linalg.norm(seedRas - case.landmarks.positions_ras.mean(axis=0))), 15.0)
        seeds = self._seeds(tuple(seedRas))
        before = self._nodeIDs()
        with self.assertRaisesRegex(CochleaError, "(?i)no cochlea found within [0-9.]+ mm of the seed"):
            CochleaLandmarksLogic().process(volume, seeds, model=model, device="cpu", roiSizeMm=8.0)
        self.assertEqual(self._nodeIDs(), before)
        self.delayDisplay("Seed far from the cochlea passed")

    def test_DetectionOnPhantom(self) -> None:
        """The bundled model on a CT phantom: three landmarks within 1.5 mm, maps on the CT lattice, a table."""
        import numpy as np
        from CochleaCommonLib import slicer_io
        from CochleaCommonLib.points import PointList

        from CochleaCommon import LANDMARK_NAMES

        model = self._requireDetector()
        checkAccuracy = model == CochleaLandmarksLogic.defaultModel()
        case = self._phantom()
        volume = slicer_io.image_to_volume_node(case.image, "Phantom CT")
        truth = case.landmarks
        click = truth.positions_ras.mean(axis=0) + np.array(self.SEED_OFFSET_MM)
        seeds = slicer_io.points_to_point_list_node(PointList(click[None], ["Cochlea seed-1"]), "Cochlea seed")
        reports = []

        self.delayDisplay(f"Detecting landmarks with '{model}' on the CPU")
        output = CochleaLandmarksLogic().process(
            volume, seeds, model=model, device="cpu", roiSizeMm=self.SELF_TEST_ROI_MM,
            progressCallback=lambda fraction, message: reports.append(fraction))
        self.assertEqual(reports[-1], 1.0)
        self.assertEqual(reports, sorted(reports))

        # The point list: named after the volume, the three labels in order, editable, at the result's positions.
        landmarks = output.landmarks
        self.assertEqual(landmarks.GetName(), "Phantom CT landmarks")
        self.assertEqual([landmarks.GetNthControlPointLabel(n) for n in range(3)], list(LANDMARK_NAMES))
        self.assertFalse(any(landmarks.GetNthControlPointLocked(n) for n in range(3)))
        found = slicer_io.point_list_node_to_points(landmarks)
        self.assertEqual(list(found.labels), output.result.found_names)
        errors = {}
        for name in found.labels:
            np.testing.assert_allclose(found.position(name), output.result.positions_ras[name], atol=1e-6)
            errors[name] = float(np.linalg.norm(found.position(name) - truth.position(name)))
        logging.info(f"CochleaLandmarksTest: errors (mm) with '{model}': {errors}; {output.result.timings}")
        if checkAccuracy:
            self.assertEqual(list(found.labels), list(LANDMARK_NAMES), output.summary())
            for name, error in errors.items():
                self.assertLess(error, self.MAX_ERROR_MM, f"{name} is {error:.2f} mm from the ground truth")

        # One probability map per landmark, on the CT's own lattice (same axes and spacing, voxels coincide).
        self.assertEqual(sorted(output.probabilityVolumes), sorted(LANDMARK_NAMES))
        ct = slicer_io.volume_node_to_image(volume)
        for name, node in output.probabilityVolumes.items():
            self.assertEqual(node.GetName(), f"Phantom CT {name} probability")
            probability = slicer_io.volume_node_to_image(node)
            self.assertLessEqual(float(probability.array.max()), 1.0)
            relative = np.linalg.inv(ct.ijk_to_ras) @ probability.ijk_to_ras
            np.testing.assert_allclose(relative[:3, :3], np.eye(3), atol=1e-6)
            np.testing.assert_allclose(relative[:3, 3], np.round(relative[:3, 3]), atol=1e-4)

        # The table: a row per landmark with its position and confidence, then the run and its timings.
        table = output.table
        self.assertEqual(table.GetName(), "Phantom CT landmarks table")
        rows = [[table.GetCellText(r, c) for c in range(table.GetNumberOfColumns())]
                for r in range(table.GetNumberOfRows())]
        header = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
        self.assertEqual(header, ["Seed", "Landmark", "Found", "R", "A", "S", "Confidence", "Note"])
        self.assertEqual([row[1] for row in rows[:3]], list(LANDMARK_NAMES))
        self.assertEqual(rows[3][1], "Run")
        self.assertIn(model, rows[3][7])
        self.assertTrue(rows[4][1] == "Time" and rows[4][7].startswith("total"))
        for row in rows[:3]:
            self.assertTrue(0.0 <= float(row[6]) <= 1.0)
            if row[2] == "yes":
                np.testing.assert_allclose([float(v) for v in row[3:6]], found.position(row[1]), atol=0.006)
        self.delayDisplay("Detection on the phantom passed")

    def _assertLandmarksNear(self, detection, truth, maxErrorMm: float, checkAccuracy: bool, model: str) -> None:
        """The point list holds the result's positions; with the bundled weights, all three within ``maxErrorMm``."""
        import numpy as np
        from CochleaCommonLib import slicer_io

        from CochleaCommon import LANDMARK_NAMES

        landmarks = detection.landmarks
        self.assertEqual([landmarks.GetNthControlPointLabel(n) for n in range(3)], list(LANDMARK_NAMES))
        found = slicer_io.point_list_node_to_points(landmarks)
        self.assertEqual(list(found.labels), detection.result.found_names)
        errors = {}
        for name in found.labels:
            np.testing.assert_allclose(found.position(name), detection.result.positions_ras[name], atol=1e-6)
            errors[name] = float(np.linalg.norm(found.position(name) - truth.position(name)))
        logging.info(f"CochleaLandmarksTest: {landmarks.GetName()}: errors (mm) with '{model}': {errors}; "
                     f"{detection.result.timings}")
        if checkAccuracy:
            self.assertEqual(list(found.labels), list(LANDMARK_NAMES), detection.result.missing_reasons)
            for name, error in errors.items():
                self.assertLess(error, maxErrorMm, f"{name} is {error:.2f} mm from the ground truth")

    def test_DetectorOnPhantom(self) -> None:
        """The bundled 3D detector, seeded, on the CT phantom: three landmarks near the truth, maps, a table row."""
        import numpy as np
        from CochleaCommonLib import slicer_io
        from CochleaCommonLib.points import PointList

        from CochleaCommon import LANDMARK_NAMES

        model = self._requireDetector("detector")
        checkAccuracy = model == CochleaLandmarksLogic.defaultModel("detector")
        case = self._phantom()
        volume = slicer_io.image_to_volume_node(case.image, "Phantom CT")
        click = case.landmarks.positions_ras.mean(axis=0) + np.array(self.SEED_OFFSET_MM)
        seeds = slicer_io.points_to_point_list_node(PointList(click[None], ["Cochlea seed-1"]), "Cochlea seed")

        self.delayDisplay(f"Detecting landmarks with the 3D detector '{model}' on the CPU")
        output = CochleaLandmarksLogic().process(volume, seeds, method="detector", model=model, device="cpu")
        self.assertEqual(output.landmarks.GetName(), "Phantom CT landmarks")
        self.assertEqual(output.result.method, "detector")
        self.assertFalse(output.seedFree)
        self._assertLandmarksNear(output.detections[0], case.landmarks, self.DETECTOR_MAX_ERROR_MM, checkAccuracy,
                                  model)
        self.assertEqual(sorted(output.probabilityVolumes), sorted(LANDMARK_NAMES))
        rows = [[output.table.GetCellText(r, c) for c in range(output.table.GetNumberOfColumns())]
                for r in range(output.table.GetNumberOfRows())]
        self.assertEqual(rows[3][1], "Run")
        self.assertTrue(rows[3][7].startswith(f"detector, model {model}, device cpu"), rows[3][7])
        self.delayDisplay("3D detector on the phantom passed")

    def test_DetectorFindsTheEarWithoutSeed(self) -> None:
        """'Detect both ears' on the phantom (one ear): one point list named by the ear's side, no seed used."""
        from CochleaCommonLib import slicer_io

        model = self._requireDetector("detector")
        checkAccuracy = model == CochleaLandmarksLogic.defaultModel("detector")
        case = self._phantom()
        volume = slicer_io.image_to_volume_node(case.image, "Phantom CT")
        before = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode")

        self.delayDisplay(f"Finding the ear without a seed with '{model}' on the CPU")
        output = CochleaLandmarksLogic().process(volume, None, method="detector", model=model, device="cpu",
                                                 detectBothEars=True)
        self.assertTrue(output.seedFree)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode"),
                         before + len(output.detections))
        for detection in output.detections:
            side = detection.result.side
            suffix = f" {side}" if side else " (side unknown)"
            self.assertEqual(detection.landmarks.GetName(), f"Phantom CT landmarks{suffix}")
            for name, node in detection.probabilityVolumes.items():
                self.assertEqual(node.GetName(), f"Phantom CT {name} probability{suffix}")
        if checkAccuracy:
            self.assertEqual(len(output.detections), 1, output.summary())  # the phantom has one ear
            self.assertEqual(output.result.side, case.params.side)
            self._assertLandmarksNear(output.detections[0], case.landmarks, self.DETECTOR_MAX_ERROR_MM, True, model)
        self.delayDisplay("Seed-free detection on the phantom passed")

"""CochleaLandmarks: find the helicotrema, the modiolus base and the round window from one seed click.

The module follows the Slicer scripted-module template: a typed parameter node, a thin widget
loaded from ``Resources/UI/CochleaLandmarks.ui``, a Logic usable from the Python console and a
self-test. The detector (SMICNet) lives in the pure-Python core ``CochleaLandmarksLib``; the Logic
turns MRML nodes into core data (through ``CochleaCommonLib.slicer_io``), runs it, and turns the
result back into nodes: a point list, probability maps and a table.
"""

import logging
import os
import pathlib
import re
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
METHODS = ("smicnet",)
MODES = ("fast", "parity")
DEVICES = ("auto", "cpu", "cuda", "mps")
#: Registry task of each method's weights (``Resources/models.json``).
MODEL_TASKS = {"smicnet": "landmarks-smicnet"}
#: Edge of the cube searched around each seed in fast mode (the core's ``FAST_BOX_MM``).
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
            "The 'Train' section trains new SMICNet weights from a folder of annotated volumes. "
            "From the Python console: slicer.util.getModuleLogic('CochleaLandmarks').process(volumeNode, "
            "seedNode) returns the nodes, without any dialog (see the Logic's docstring)."
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
    outputLandmarks - point list that receives Helicotrema, Modiolus base and Round Window (None: one
        named after the volume is created, and reused by later runs on that volume).
    method - landmark detector.
    mode - fast (coarse-to-fine sweep) or parity (the published procedure, slower).
    model - registry id or weights file; empty for the method's bundled default.
    device - where the network runs: auto (CUDA when usable, else CPU), cpu, cuda or mps.
    roiSizeMm - edge length of the cube around each seed that is searched (fast mode), in mm.
    createProbabilityMaps - add one probability-map volume per landmark.
    saveResults, outputDirectory - also write the results as files into this folder.
    train* - the Train section: annotated data folder, output folder, new model id, epochs, device.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    seedPoints: vtkMRMLMarkupsFiducialNode
    outputLandmarks: vtkMRMLMarkupsFiducialNode
    method: Annotated[str, Choice(list(METHODS))] = "smicnet"
    mode: Annotated[str, Choice(list(MODES))] = "fast"
    model: str = ""
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    roiSizeMm: Annotated[float, WithinRange(5.0, 60.0)] = DEFAULT_ROI_MM
    createProbabilityMaps: bool = True
    saveResults: bool = False
    outputDirectory: pathlib.Path = pathlib.Path.home() / "CochleaToolkit" / "landmarks"
    trainDataDirectory: pathlib.Path = pathlib.Path.home() / "CochleaToolkit" / "training-data"
    trainOutputDirectory: pathlib.Path = pathlib.Path.home() / "CochleaToolkit" / "models"
    trainModelId: str = "smicnet-custom"
    trainEpochs: Annotated[int, WithinRange(1, 1000)] = 60
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
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
            self._modelComboMethod = None  # refill: models may have been added since
            self._updateGUI()

    def _updateGUI(self, caller=None, event=None) -> None:
        """What the typed binding cannot do: the model list, the Apply state and the torch button."""
        if self._parameterNode is None:
            return
        self._updateModelComboBox()
        self.ui.installTorchButton.visible = not self.logic.processingAvailable
        self.ui.outputDirectoryPathLineEdit.enabled = self._parameterNode.saveResults
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
            wanted = p.model or self.logic.defaultModel(p.method)
            if combo.findData(wanted) < 0:
                combo.addItem(os.path.basename(wanted) or wanted, wanted)
            combo.currentIndex = combo.findData(wanted)
            combo.toolTip = wanted
        finally:
            combo.blockSignals(wasBlocked)

    def onModelComboBoxChanged(self, index: int) -> None:
        value = self.ui.modelComboBox.itemData(index)
        if self._parameterNode is not None and value is not None:
            self._parameterNode.model = "" if value == self.logic.defaultModel(self._parameterNode.method) else value

    def onBrowseModelButton(self) -> None:
        import qt

        path = qt.QFileDialog.getOpenFileName(
            self.parent, _("Choose SMICNet weights"), "",
            _("Model weights") + " (*.pt *.pth *.h5 *.keras);;" + _("All files") + " (*)")
        if path and self._parameterNode is not None:
            self._parameterNode.model = path

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
            allowDownload = self._confirmModelDownload(p.model or None, p.method)
            if allowDownload is None:
                return
            self._cancelToken = CancelToken()
            self._setRunning(self.ui.applyButton, self.ui.progressBar, True, _("Apply"))
            try:
                output = self.logic.process(
                    p.inputVolume, p.seedPoints, p.outputLandmarks, method=p.method, model=p.model or None,
                    mode=p.mode, device=p.device, roiSizeMm=p.roiSizeMm, createProbabilityMaps=p.createProbabilityMaps,
                    outputDirectory=p.outputDirectory if p.saveResults else None,
                    progressCallback=lambda f, m: self._showProgress(self.ui.progressBar, f, m),
                    cancelToken=self._cancelToken, allowDownload=allowDownload)
            except OperationCancelled:
                self.ui.resultsLabel.text = _("Cancelled: nothing was added to the scene.")
                return
            finally:
                self._cancelToken = None
                self._setRunning(self.ui.applyButton, self.ui.progressBar, False, _("Apply"))
                self._updateGUI()
            p.outputLandmarks = output.landmarks
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
            try:
                trained = self.logic.train(
                    p.trainDataDirectory, p.trainOutputDirectory, p.trainModelId, p.trainEpochs, p.trainDevice,
                    register=True, progressCallback=lambda f, m: self._showProgress(self.ui.trainProgressBar, f, m),
                    cancelToken=self._trainCancelToken)
            except OperationCancelled:
                self.ui.trainStatusLabel.text = _("Training cancelled: no model was written.")
                return
            finally:
                self._trainCancelToken = None
                self._setRunning(self.ui.trainButton, self.ui.trainProgressBar, False, _("Train"))
                self._updateGUI()
            self.ui.trainStatusLabel.text = self.logic.trainingSummary(trained)
            self._modelComboMethod = None  # the new model joins the list
            p.model = trained.entry.id if trained.registry_path else str(trained.model_path)


#
# CochleaLandmarksLogic
#


@dataclass
class LandmarkDetection:
    """What one seed point produced: the point list, the probability maps, the core result, the files.

    Attributes:
        seedLabel: label of the seed point (``"seed <n>"`` when it had none).
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
class CochleaLandmarksOutput:
    """What :meth:`CochleaLandmarksLogic.process` returns: one detection per seed point and one table.

    ``landmarks``, ``probabilityVolumes`` and ``result`` are those of the first seed, for the
    common case of one seed; ``detections`` has all of them (both ears of one scan).
    """

    detections: list
    table: Any

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
            lines.append(_("{name}: {found} of {total} landmarks found in {seconds:.1f} s ({model}, {mode} mode, "
                           "{device}).").format(name=detection.landmarks.GetName(), found=len(found),
                                                total=len(LANDMARK_NAMES), seconds=result.timings.get("total", 0.0),
                                                model=result.model_id, mode=result.mode, device=result.device))
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
        if not parameterNode.seedPoints or parameterNode.seedPoints.GetNumberOfDefinedControlPoints() == 0:
            return False, _("Place a seed point on the cochlea (one per ear).")
        return True, _("Detect the cochlear landmarks around each seed point.")

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
    def process(self, inputVolume: vtkMRMLScalarVolumeNode, seedPoints: vtkMRMLMarkupsFiducialNode,
                outputLandmarks: Optional[vtkMRMLMarkupsFiducialNode] = None, method: str = "smicnet",
                model: Optional[str] = None, mode: str = "fast", device: str = "auto",
                roiSizeMm: Optional[float] = None, createProbabilityMaps: bool = True,
                outputDirectory: Optional[str] = None,
                progressCallback: Optional[Callable[[float, str], Optional[bool]]] = None,
                cancelToken=None, allowDownload: bool = False) -> CochleaLandmarksOutput:
        """Detect Helicotrema, Modiolus base and Round Window around each seed point.

        Usable without the GUI, in a loop over many volumes (the network is loaded once). Every
        input is checked before any work starts, and nodes are created only after all seeds were
        processed: an error or a cancellation leaves the scene as it was.

        Results, per seed (several seeds = several ears; each gets its own point list):

        * a point list ``"<volume> landmarks"`` (``"<volume> landmarks (<seed label>)"`` with
          several seeds) holding the three landmarks in world RAS, under the volume's parent
          transform so they follow it; a landmark that was not found is an unplaced point;
        * with ``createProbabilityMaps``, one probability volume per landmark on the input's own
          voxel lattice (cropped to the searched region), coloured as a heat map;
        * with ``outputDirectory``, the files of ``write_landmark_outputs`` (``landmarks.fcsv``,
          ``landmarks.mrk.json``, ``probability_*.nrrd``, ``report.json``) in
          ``<outputDirectory>/<volume>[/<seed>]/``.

        and one table ``"<volume> landmarks table"`` with positions, confidences, reasons, the run
        (model, device) and timings. Running again on the same volume refills these nodes
        (the latest run wins) instead of adding new ones.

        :param inputVolume: CT or cone-beam CT of the temporal bone (any orientation, 0.1-0.6 mm voxels).
        :param seedPoints: point list with one point placed roughly on the cochlea of each ear.
        :param outputLandmarks: point list to fill for the first seed (None: reuse or create the
            volume's list). A list holding another volume's results is not overwritten.
        :param method: landmark detector; one of ``METHODS``.
        :param model: registry id or weights file; None for the method's bundled default.
        :param mode: ``fast`` (coarse-to-fine) or ``parity`` (the published procedure).
        :param device: ``auto``, ``cpu``, ``cuda``, ``cuda:<index>`` or ``mps``; an unavailable GPU
            falls back to the CPU with a warning.
        :param roiSizeMm: edge (mm, 5 to 60) of the cube searched around each seed in fast mode;
            None for the method's default (``DEFAULT_ROI_MM``).
        :param createProbabilityMaps: add the probability-map volumes.
        :param outputDirectory: folder to save the results in (created if needed); None: no files.
        :param progressCallback: ``callback(fraction, message)``; returning True requests cancellation.
        :param cancelToken: a ``CochleaCommonLib.progress.CancelToken`` the caller may cancel.
        :param allowDownload: download registered weights that are not on this computer yet.
        :return: a :class:`CochleaLandmarksOutput` (``landmarks``, ``probabilityVolumes``, ``table``,
            ``result``; ``detections`` for every seed).
        :raises CochleaError: invalid inputs (the message names the problem and the fix), "no cochlea
            found within N mm of the seed", missing or corrupt weights, PyTorch not installed
            (``MissingDependencyError``), cancellation (``OperationCancelled``).
        """
        from CochleaCommonLib.progress import Progress

        checked = self._checkInputs(inputVolume, seedPoints, outputLandmarks, method, mode, device, roiSizeMm,
                                    outputDirectory)
        image, seeds, outputFolder = checked
        progress = Progress(progressCallback, cancelToken)
        progress.update(0.0, _("Loading the model"))
        detector = self.loadDetector(method, model, device, allowDownload, progress.sub(0.0, 0.1))
        results = self._detectAll(image, seeds, detector, method, mode, roiSizeMm, createProbabilityMaps,
                                  progress.sub(0.1, 0.95))
        progress.update(0.95, _("Adding the results to the scene"))
        output = self._createNodes(inputVolume, seeds, results, outputLandmarks)
        if outputFolder is not None:
            progress.update(0.97, _("Saving the results"))
            self._writeFiles(output, inputVolume.GetName(), outputFolder)
        for warning in output.warnings:
            logging.warning(f"CochleaLandmarks: {warning}")
        logging.info("CochleaLandmarks: " + output.summary().replace("\n", " | "))
        progress.update(1.0, _("Done"))
        return output

    def _checkInputs(self, inputVolume, seedPoints, outputLandmarks, method, mode, device, roiSizeMm,
                     outputDirectory) -> tuple:
        """Everything that can be checked before loading a network: (image, seeds, output folder)."""
        from CochleaCommonLib.devices import normalise_device_request
        from CochleaCommonLib.errors import InvalidInputError
        from CochleaLandmarksLib.landmark_detection import validate_image

        from CochleaCommon import CochleaCommonLogic

        if method not in METHODS:
            raise InvalidInputError(f"Unknown landmark method '{method}'. Available: {', '.join(METHODS)}.")
        if mode not in MODES:
            raise InvalidInputError(f"Unknown mode '{mode}'. Available: {', '.join(MODES)}.")
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
        seeds = common.pointsInsideVolume(seedPoints, image, inputVolume.GetName(), _("Seed point"))
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

    def _createNodes(self, volume, seeds, results: list, outputLandmarks) -> CochleaLandmarksOutput:
        """Point lists, probability volumes and the table, refilling the previous run's nodes."""
        from CochleaCommonLib import slicer_io

        from CochleaCommon import LANDMARK_NAMES

        scene = slicer.mrmlScene
        transform = volume.GetParentTransformNode()
        pool = self._previousOutputs(volume)
        labels = self._seedLabels(seeds)
        several = len(results) > 1
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
        for n, (label, result) in enumerate(zip(labels, results)):
            seedKey = label if several else ""
            suffix = f" ({label})" if several else ""
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
            row(detection.seedLabel, "Run", note=f"{result.method} ({result.mode} mode), model {result.model_id}, "
                f"device {result.device}, {result.patches} patches, {result.search_box_mm:.1f} mm search cube")
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
            if several:
                target = target / self._safeName(detection.seedLabel)
            try:
                detection.files = write_landmark_outputs(detection.result, target,
                                                         name=detection.landmarks.GetName())
            except CochleaError as exc:
                raise CochleaError(f"{exc} The landmarks are in the scene, but the files were not saved.") from exc

    # --- training -------------------------------------------------------------------------------------
    def train(self, dataDirectory, outputDirectory, modelId: str, epochs: int, device: str = "auto",
              register: bool = True, progressCallback: Optional[Callable[[float, str], Optional[bool]]] = None,
              cancelToken=None):
        """Train SMICNet weights on a folder of annotated volumes (``CochleaLandmarksLib.smicnet_training``).

        :param dataDirectory: folder of volumes with their landmark files (``X.nrrd`` beside
            ``X_landmarks.fcsv`` or ``X_landmarks.mrk.json``).
        :param outputDirectory: folder for ``<modelId>.pt``, its registry entry, ``history.csv`` and
            ``training_curves.png`` (created).
        :param modelId: id of the new model (lower-case letters, digits, '.', '_', '-').
        :param epochs: maximum number of training epochs, 1 to 1000 (training stops early when the
            validation loss stops improving).
        :param device: ``auto``, ``cpu``, ``cuda``, ``cuda:<index>`` or ``mps``.
        :param register: also copy the weights into the per-user model cache and add them to the
            per-user registry, so ``process(model=modelId)`` and the model list offer them.
        :param progressCallback: ``callback(fraction, message)``; returning True requests cancellation.
        :param cancelToken: a ``CochleaCommonLib.progress.CancelToken`` the caller may cancel.
        :return: the core's ``SmicnetTrainingResult`` (``model_path``, ``entry``, ``curves_path``,
            ``history``, ``val_metrics``, ...).
        :raises CochleaError: bad settings or data (before training starts), PyTorch missing,
            cancellation (``OperationCancelled``: nothing is written).
        """
        from CochleaCommonLib.devices import normalise_device_request, require_torch
        from CochleaCommonLib.errors import InvalidInputError
        from CochleaCommonLib.progress import Progress

        if not str(dataDirectory or "").strip() or not pathlib.Path(dataDirectory).expanduser().is_dir():
            raise InvalidInputError(f"The training data folder '{dataDirectory}' does not exist. Choose the folder "
                                    "holding the annotated volumes and their landmark files.")
        outputFolder = self._checkOutputDirectory(outputDirectory)
        if outputFolder is None:
            raise InvalidInputError("Choose an output folder for the trained weights.")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= 1000:
            raise InvalidInputError(f"The number of epochs must be a whole number from 1 to 1000, not {epochs!r}.")
        normalise_device_request(device)
        from CochleaLandmarksLib.smicnet_training import SmicnetTrainingConfig, train_smicnet

        config = SmicnetTrainingConfig(epochs=epochs, device=device, model_id=str(modelId or ""))
        config.validate()
        require_torch()
        trained = train_smicnet(pathlib.Path(dataDirectory).expanduser(), outputFolder, config,
                                progress=Progress(progressCallback, cancelToken), register=register)
        logging.info(f"CochleaLandmarks: trained '{modelId}': {trained.model_path}")
        return trained

    @staticmethod
    def trainingSummary(trained) -> str:
        """A few lines about a finished training, for the Train section."""
        metrics = getattr(trained, "val_metrics", {}) or {}
        lines = [_("Model '{id}' written to {path}.").format(id=trained.entry.id, path=trained.model_path),
                 _("Best epoch {best} of {run}{early}; validation accuracy {accuracy:.3f}, macro F1 {f1:.3f}.").format(
                     best=trained.best_epoch, run=trained.epochs_run,
                     early=_(" (stopped early)") if trained.stopped_early else "",
                     accuracy=metrics.get("accuracy", 0.0), f1=metrics.get("f1_macro", 0.0))]
        if trained.registry_path:
            lines.append(_("Registered: choose '{id}' as the model.").format(id=trained.entry.id))
        if trained.curves_path:
            lines.append(_("Learning curves: {path}").format(path=trained.curves_path))
        return "\n".join(lines)


#
# CochleaLandmarksTest
#


class CochleaLandmarksTest(ScriptedLoadableModuleTest):
    """Self-test: parameter node storage, the input checks, and a real detection on a phantom.

    The detection uses the bundled weights on the CPU and checks every landmark against the
    phantom's exact ground truth. Without PyTorch or without any SMICNet weights those two tests
    are skipped with the reason (the others still run first).
    """

    #: Phantom used for the detection tests (generated in a few seconds; exact ground truth).
    PHANTOM_SEED = 1
    PHANTOM_FOV_MM = 30.0
    #: A "good click" 1 mm from the landmarks' centroid, and a search cube that reaches every landmark
    #: from it: smaller than the default so the CPU sweep takes tens of seconds, not minutes.
    SEED_OFFSET_MM = (0.6, -0.5, 0.6)
    SELF_TEST_ROI_MM = 13.0
    #: Where (fraction of the volume along i, j, k) the "far from the cochlea" seed goes.
    FAR_SEED_FRACTION = (0.9, 0.1, 0.9)
    #: Largest accepted distance (mm) from the ground truth with the bundled weights.
    MAX_ERROR_MM = 1.5

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
        # Last: these need PyTorch and weights, and skip without them.
        self.setUp()
        self.test_SeedFarFromCochleaChangesNothing()
        self.setUp()
        self.test_DetectionOnPhantom()

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

    def _requireDetector(self) -> str:
        """The weights to test with: the bundled default, else any SMICNet weights found; skip if none."""
        from CochleaCommonLib.devices import torch_installed
        from CochleaCommonLib.model_registry import ModelRegistry

        if not torch_installed():
            self.skipTest("PyTorch is not installed: landmark detection cannot run (install the PyTorch extension)")
        registry = ModelRegistry.load()
        default = CochleaLandmarksLogic.defaultModel()
        if default in registry and registry.find(default) is not None:
            return default
        for entry in registry.entries:
            if entry.task == MODEL_TASKS["smicnet"] and registry.find(entry.id) is not None:
                logging.warning(f"CochleaLandmarksTest: the bundled weights '{default}' were not found; testing with "
                                f"'{entry.id}' (accuracy on the phantom is not checked with them)")
                return entry.id
        self.skipTest(f"No SMICNet weights found (neither the bundled '{default}' nor any registered model; "
                      "set COCHLEA_TOOLKIT_MODEL_DIRS to a folder holding them)")

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

    def test_SeedFarFromCochleaChangesNothing(self) -> None:
        """A seed in the temporal bone far from the cochlea: "no cochlea found within N mm", and no new node."""
        import numpy as np
        from CochleaCommonLib import slicer_io
        from CochleaCommonLib.errors import CochleaError

        model = self._requireDetector()
        self.delayDisplay("Seed far from the cochlea")
        case = self._phantom()
        volume = slicer_io.image_to_volume_node(case.image, "Phantom CT")
        # Near a corner of the phantom, about 20 mm from the cochlea; the search cube reaches 4 mm.
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

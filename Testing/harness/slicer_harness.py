"""A headless 3D Slicer for tests: a real MRML scene with Slicer's own module logics, no Qt.

Why: the ``slicer-core`` wheel has Slicer's C++ MRML, IO and module logics, but no application:
no ``slicer.app``, ``slicer.mrmlScene``, ``slicer.modules``, ``slicer.ScriptedLoadableModule``.
Our module Logic and Test classes need exactly those few entry points, so this file supplies them
over the real scene (see /work/shared/docs/headless-slicer.md):

* ``setup()`` creates a ``vtkMRMLScene`` with a ``vtkSlicerApplicationLogic`` and the Colors,
  Volumes, Markups, Segmentations, Models, Transforms, SubjectHierarchy and Tables logics wired to
  it (the same wiring Slicer's application does; without it MRML logs "selection node not found"
  and "invalid Colors module logic" errors), and publishes ``slicer.mrmlScene``,
  ``slicer.modules.<lowercase>.logic()``, ``slicer.app`` and a logging ``slicer.util.delayDisplay``.
* ``slicer.app.coreIOManager()`` is a small shim over the real readers and writers, so
  ``slicer.util.loadVolume/loadLabelVolume/loadMarkups/loadModel/loadSegmentation/loadTransform/
  loadTable/loadScene`` and ``slicer.util.saveNode`` work.
* ``load_scripted_module(path)`` imports a module file the way Slicer does (its folder on
  ``sys.path``), instantiates ``<Module>(parent)`` and registers it in ``slicer.modules``.
* The stand-ins for ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper`` and
  ``slicer.i18n`` live in ``harness/slicer/`` (no ``__init__.py``): slicer-core's package
  ``__init__`` extends its path over every ``slicer/`` folder on ``sys.path``. If ``slicer`` was
  imported before this folder was on the path, ``setup()`` loads them explicitly instead.

``setup()`` is idempotent and returns the :class:`Harness` (scene, application logic, logics).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import slicer  # noqa: E402  (the harness folder must be on sys.path first)
import vtk  # noqa: E402

STAND_IN_MODULES = ("ScriptedLoadableModule", "parameterNodeWrapper", "i18n")

# Module logics created by setup(): Slicer module name -> factory. Lower-cased in slicer.modules.
_LOGIC_FACTORIES = {
    "Volumes": "vtkSlicerVolumesLogic",
    "Markups": "vtkSlicerMarkupsLogic",
    "Segmentations": "vtkSlicerSegmentationsModuleLogic",
    "Models": "vtkSlicerModelsLogic",
    "Transforms": "vtkSlicerTransformLogic",
    "SubjectHierarchy": "vtkSlicerSubjectHierarchyModuleLogic",
    "Tables": "vtkSlicerTablesLogic",
}

# File extension -> Slicer IO file type (longest extensions first when matching).
_FILE_TYPES = {
    ".seg.nrrd": "SegmentationFile",
    ".seg.nhdr": "SegmentationFile",
    ".mrk.json": "MarkupsFile",
    ".nii.gz": "VolumeFile",
    ".fcsv": "MarkupsFile",
    ".nrrd": "VolumeFile",
    ".nhdr": "VolumeFile",
    ".nii": "VolumeFile",
    ".mha": "VolumeFile",
    ".mhd": "VolumeFile",
    ".vtk": "ModelFile",
    ".vtp": "ModelFile",
    ".stl": "ModelFile",
    ".ply": "ModelFile",
    ".obj": "ModelFile",
    ".h5": "TransformFile",
    ".tfm": "TransformFile",
    ".mat": "TransformFile",
    ".csv": "TableFile",
    ".tsv": "TableFile",
    ".mrml": "SceneFile",
}

# Node class -> writer file type (first match by IsA, so subclasses go before their bases).
_WRITER_TYPES = (
    ("vtkMRMLSegmentationNode", "SegmentationFile"),
    ("vtkMRMLMarkupsNode", "MarkupsFile"),
    ("vtkMRMLVolumeNode", "VolumeFile"),
    ("vtkMRMLModelNode", "ModelFile"),
    ("vtkMRMLTransformNode", "TransformFile"),
    ("vtkMRMLTableNode", "TableFile"),
)

_harness: Harness | None = None


@dataclass
class Harness:
    """What ``setup()`` built: the scene, the application logic and the module logics by name."""

    scene: Any
    app_logic: Any
    logics: dict[str, Any] = field(default_factory=dict)

    def clear_scene(self) -> None:
        """Close the scene as Slicer's File > Close Scene does (singletons are reset, not removed)."""
        self.scene.Clear(0)


def _base_name(file_name: str) -> str:
    """Node name Slicer derives from a file name: the base name without its known extension."""
    base = os.path.basename(str(file_name))
    lower = base.lower()
    for ext in sorted(_FILE_TYPES, key=len, reverse=True):
        if lower.endswith(ext):
            return base[: -len(ext)]
    return os.path.splitext(base)[0]


class CoreIOManager:
    """Enough of ``qSlicerCoreIOManager`` for ``slicer.util.load*`` and ``saveNode``, over the real IO."""

    def __init__(self, harness: Harness) -> None:
        self._h = harness

    # --- what slicer.util calls ------------------------------------------------------------------
    def fileType(self, fileName: str) -> str:
        """IO file type of ``fileName`` from its extension (``NoFile`` when unknown)."""
        lower = str(fileName).lower()
        for ext in sorted(_FILE_TYPES, key=len, reverse=True):
            if lower.endswith(ext):
                return _FILE_TYPES[ext]
        return "NoFile"

    def fileWriterFileType(self, node) -> str:
        """Writer file type for ``node``'s class (``NoFile`` when none)."""
        for className, fileType in _WRITER_TYPES:
            if node.IsA(className):
                return fileType
        return "NoFile"

    def loadNodes(self, fileType: str, properties: dict, loadedNodes=None, userMessages=None) -> bool:
        """Load ``properties['fileName']`` with the real reader for ``fileType``; add the nodes to ``loadedNodes``."""
        fileName = str(properties["fileName"])
        if not os.path.isfile(fileName):
            return self._fail(userMessages, f"File not found: {fileName}")
        name = properties.get("name") or _base_name(fileName)
        logics = self._h.logics
        nodes = []
        if fileType == "VolumeFile":
            options = (1 if properties.get("labelmap") else 0) | (2 if properties.get("center") else 0) \
                | (4 if properties.get("singleFile") else 0)
            node = logics["Volumes"].AddArchetypeVolume(fileName, name, options, None, userMessages)
            if node is not None and properties.get("colorNodeID") and node.GetDisplayNode():
                node.GetDisplayNode().SetAndObserveColorNodeID(properties["colorNodeID"])
            nodes.append(node)
        elif fileType == "MarkupsFile":
            nodeId = logics["Markups"].LoadMarkups(fileName, name, userMessages)
            nodes.append(self._h.scene.GetNodeByID(nodeId) if nodeId else None)
        elif fileType == "SegmentationFile":
            nodes.append(logics["Segmentations"].LoadSegmentationFromFile(fileName, bool(properties.get(
                "autoOpacities", True)), name, None, userMessages))
        elif fileType == "ModelFile":
            coordinateSystem = properties.get("coordinateSystem", slicer.vtkMRMLStorageNode.CoordinateSystemLPS)
            node = logics["Models"].AddModel(fileName, coordinateSystem, userMessages)
            if node is not None and properties.get("name"):
                node.SetName(properties["name"])
            nodes.append(node)
        elif fileType == "TransformFile":
            nodes.append(logics["Transforms"].AddTransform(fileName, self._h.scene, userMessages))
        elif fileType == "TableFile":
            nodes.append(logics["Tables"].AddTable(fileName, name, True, None, userMessages))
        elif fileType == "SceneFile":
            self._h.scene.SetURL(fileName)
            ok = self._h.scene.Import() if not properties.get("clear") else self._h.scene.Connect()
            return bool(ok) or self._fail(userMessages, f"Failed to load scene {fileName}")
        else:
            return self._fail(userMessages, f"The headless IO shim cannot read file type {fileType!r} ({fileName})")
        nodes = [n for n in nodes if n is not None]
        if not nodes:
            return self._fail(userMessages, f"Failed to read {fileName} as {fileType}")
        if loadedNodes is not None:
            for n in nodes:
                loadedNodes.AddItem(n)
        return True

    def saveNodes(self, fileType: str, properties: dict, userMessages=None) -> bool:
        """Write the node ``properties['nodeID']`` to ``properties['fileName']`` with its storage node."""
        scene = self._h.scene
        node = scene.GetNodeByID(properties["nodeID"])
        fileName = str(properties["fileName"])
        if node is None:
            return self._fail(userMessages, f"No node with ID {properties['nodeID']!r} to save")
        storage = node.GetStorageNode()
        if fileName.lower().endswith(".fcsv"):
            if storage is None or not storage.IsA("vtkMRMLMarkupsFiducialStorageNode"):
                storage = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialStorageNode")
                node.SetAndObserveStorageNodeID(storage.GetID())
        elif storage is None or not storage.SupportedFileType(fileName):
            storage = node.CreateDefaultStorageNode()
            if storage is None:
                return self._fail(userMessages, f"{node.GetClassName()} has no storage node: cannot save it")
            storage.UnRegister(None)  # owned by Python until the scene takes it
            scene.AddNode(storage)
            node.SetAndObserveStorageNodeID(storage.GetID())
        if "useCompression" in properties:
            storage.SetUseCompression(int(bool(properties["useCompression"])))
        storage.SetFileName(fileName)
        if not storage.WriteData(node):
            return self._fail(userMessages, f"Failed to write {node.GetName()} to {fileName}")
        return True

    @staticmethod
    def _fail(userMessages, text: str) -> bool:
        if userMessages is not None:
            userMessages.AddMessage(vtk.vtkCommand.ErrorEvent, text)
        return False


class HeadlessApp:
    """Stand-in for ``slicer.app`` with the members module logic and tests use."""

    documentationBaseUrl = "https://slicer.readthedocs.io/en/latest/"

    def __init__(self, harness: Harness) -> None:
        self._h = harness
        self._io = CoreIOManager(harness)
        self.temporaryPath = tempfile.gettempdir()
        self.commandOptions = lambda: SimpleNamespace(noMainWindow=True, testingEnabled=True)

    def coreIOManager(self) -> CoreIOManager:
        return self._io

    def applicationLogic(self):
        return self._h.app_logic

    def mrmlScene(self):
        return self._h.scene

    def processEvents(self, *args) -> None:
        """No event loop headless; MRML events are delivered synchronously anyway."""

    def connect(self, *args) -> bool:
        """Qt signal connections (e.g. ``startupCompleted()``) have nothing to connect to headless."""
        return True

    def testingEnabled(self) -> bool:
        return True

    def moduleDocumentationUrl(self, moduleName: str) -> str:
        return f"{self.documentationBaseUrl}user_guide/modules/{moduleName.lower()}.html"


def _delay_display(message: str, autoCloseMsec: int = 1000, parent=None, **kwargs) -> None:
    """``slicer.util.delayDisplay`` without a message box: a log line."""
    logging.info(message)


def _ensure_stand_ins() -> None:
    """Make ``slicer.ScriptedLoadableModule`` & co importable even if ``slicer`` was imported early."""
    for name in STAND_IN_MODULES:
        full = f"slicer.{name}"
        if full in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(full, os.path.join(_HERE, "slicer", f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
        setattr(slicer, name, module)


def setup() -> Harness:
    """Build (once) the headless application: scene, application logic, module logics, ``slicer.*``."""
    global _harness
    if _harness is not None:
        return _harness
    _ensure_stand_ins()

    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)  # adds the selection, interaction, ... singletons
    color_logic = app_logic.GetColorLogic()
    color_logic.SetMRMLScene(scene)
    app_logic.SetModuleLogic("Colors", color_logic)
    app_logic.SetSliceLogics(vtk.vtkCollection())
    app_logic.SetViewLogics(vtk.vtkCollection())

    harness = Harness(scene=scene, app_logic=app_logic, logics={"Colors": color_logic})
    for name, className in _LOGIC_FACTORIES.items():
        logic = getattr(slicer, className)()
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name, logic)
        harness.logics[name] = logic

    slicer.mrmlScene = scene
    slicer.app = HeadlessApp(harness)
    slicer.modules = SimpleNamespace(**{
        name.lower(): SimpleNamespace(name=name, title=name, logic=(lambda lg=logic: lg), path="")
        for name, logic in harness.logics.items()
    })
    if not hasattr(slicer, "selfTests"):
        slicer.selfTests = {}
    slicer.util.delayDisplay = _delay_display
    _harness = harness
    return harness


def load_scripted_module(module_file: str, hidden: bool | None = None) -> SimpleNamespace:
    """Import a scripted module file and instantiate ``<Module>(parent)`` as Slicer's module factory does.

    The module folder goes on ``sys.path`` (Slicer does the same, which is how ``<Module>Lib``
    packages beside the file become importable). Returns the ``parent`` stand-in, also published
    as ``slicer.modules.<modulename>``; ``parent.module`` is the Python module and
    ``parent.self()`` the ``<Module>`` instance, mirroring ``qSlicerScriptedLoadableModule``.
    """
    setup()
    module_file = os.path.abspath(module_file)
    name = os.path.splitext(os.path.basename(module_file))[0]
    folder = os.path.dirname(module_file)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    pymodule = importlib.import_module(name)
    parent = SimpleNamespace(path=module_file, name=name)
    if hidden is not None:
        parent.hidden = hidden
    instance = getattr(pymodule, name)(parent)
    parent.module = pymodule
    parent.self = lambda: instance
    setattr(slicer.modules, name.lower(), parent)
    return parent

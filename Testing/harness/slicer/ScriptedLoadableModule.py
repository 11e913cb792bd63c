"""Headless stand-in for Slicer's ``slicer.ScriptedLoadableModule`` (not shipped in ``slicer-core``).

Why: our module files follow the Slicer template (``from slicer.ScriptedLoadableModule import *``)
so that they load unchanged inside Slicer. In CI there is no Slicer application, no PythonQt and
no Qt, but the *Logic* and *Test* classes only need a real MRML scene, which the slicer-core wheel
provides. This file is our own small re-implementation of the parts those classes use, with the
same class names and the same behaviour as Slicer's base classes:

* ``ScriptedLoadableModule(parent)`` fills ``parent`` (title, categories, ...), records the icon
  path and registers ``slicer.selfTests[<Module>]``; ``runTest()`` finds ``<Module>Test`` by name
  and calls its ``runTest()``, exactly like Slicer's SelfTests.
* ``ScriptedLoadableModuleLogic.getParameterNode()`` returns the singleton
  ``vtkMRMLScriptedModuleNode`` tagged with the module name, as Slicer does.
* ``ScriptedLoadableModuleTest`` is a ``unittest.TestCase`` whose ``delayDisplay`` logs and whose
  ``takeScreenshot`` only logs.
* ``ScriptedLoadableModuleWidget`` cannot work without PythonQt: constructing one raises.

The folder holding this file has no ``__init__.py`` on purpose (see ``slicer_harness``).
Module-level imports are underscored because slicer-core copies every public name of this module
onto the ``slicer`` namespace.
"""

import importlib as _importlib
import logging as _logging
import os as _os
import unittest as _unittest

__all__ = ["ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
           "ScriptedLoadableModuleTest"]


def _slicer():
    """The ``slicer`` namespace, imported late (this file is imported while ``slicer`` initialises)."""
    import slicer

    return slicer


class ScriptedLoadableModule:
    """Base class of a scripted module's module class (``<Module>(ScriptedLoadableModule)``)."""

    def __init__(self, parent) -> None:
        super().__init__()
        self.parent = parent
        self.moduleName = self.__class__.__name__

        parent.title = ""
        parent.categories = []
        parent.dependencies = []
        parent.contributors = []
        parent.helpText = "This module was created from a template and the help section has not yet been updated."
        parent.acknowledgementText = ""
        if not hasattr(parent, "hidden"):
            parent.hidden = False

        # Slicer sets parent.icon = qt.QIcon(Resources/Icons/<Module>.svg|png); headless we keep the path.
        moduleDir = _os.path.dirname(self.parent.path)
        parent.icon = None
        for iconExtension in (".svg", ".png"):
            iconPath = _os.path.join(moduleDir, "Resources", "Icons", self.moduleName + iconExtension)
            if _os.path.isfile(iconPath):
                parent.icon = iconPath
                break

        slicer = _slicer()
        if not hasattr(slicer, "selfTests"):
            slicer.selfTests = {}
        slicer.selfTests[self.moduleName] = self.runTest

    def resourcePath(self, filename: str) -> str:
        """Absolute path of ``filename`` in the module's ``Resources`` folder."""
        return _os.path.join(_os.path.dirname(self.parent.path), "Resources", filename)

    def getDefaultModuleDocumentationLink(self, docPage: str = None) -> str:
        """HTML link to the module documentation, as Slicer builds it."""
        app = _slicer().app
        url = app.documentationBaseUrl + docPage if docPage else app.moduleDocumentationUrl(self.moduleName)
        return f'<p>For more information see the <a href="{url}">online documentation</a>.</p>'

    def runTest(self, msec: int = 100, **kwargs) -> None:
        """Run ``<Module>Test().runTest(**kwargs)``, the entry point Slicer's SelfTests module uses."""
        module = _importlib.import_module(self.__module__)
        className = self.moduleName + "Test"
        try:
            TestCaseClass = getattr(module, className)
        except AttributeError:
            raise AssertionError(f"Test case class not found: {self.__module__}.{className}") from None
        testCase = TestCaseClass()
        testCase.messageDelay = msec
        testCase.runTest(**kwargs)


class ScriptedLoadableModuleWidget:
    """Base class of a module's widget. Needs PythonQt, so it cannot be built headless."""

    def __init__(self, parent=None) -> None:
        raise RuntimeError(
            f"{self.__class__.__name__} needs Slicer's Qt application (PythonQt, CTK, qMRML widgets), "
            "which does not exist outside Slicer. Test the Logic and the .ui file instead."
        )


class ScriptedLoadableModuleLogic:
    """Base class of a module's logic: owns the module's parameter node(s) in ``slicer.mrmlScene``."""

    def __init__(self, parent=None) -> None:
        super().__init__()
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Logic"):
            self.moduleName = self.moduleName[:-5]
        # Derived classes may set this to False to allow several parameter nodes in a scene.
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        """Return this module's parameter node, creating it (as a singleton) when the scene has none."""
        scene = _slicer().mrmlScene
        if self.isSingletonParameterNode:
            parameterNode = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if parameterNode:
                # After a scene close the ModuleName attribute may be gone; restore it as Slicer does.
                if parameterNode.GetAttribute("ModuleName") != self.moduleName:
                    parameterNode.SetAttribute("ModuleName", self.moduleName)
                return parameterNode
        else:
            for nodeIndex in range(scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode")):
                parameterNode = scene.GetNthNodeByClass(nodeIndex, "vtkMRMLScriptedModuleNode")
                if parameterNode.GetAttribute("ModuleName") == self.moduleName:
                    return parameterNode
        return scene.AddNode(self.createParameterNode())

    def getAllParameterNodes(self) -> list:
        """All parameter nodes of this module in the scene."""
        scene = _slicer().mrmlScene
        found = []
        for nodeIndex in range(scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode")):
            parameterNode = scene.GetNthNodeByClass(nodeIndex, "vtkMRMLScriptedModuleNode")
            if parameterNode.GetAttribute("ModuleName") == self.moduleName:
                found.append(parameterNode)
        return found

    def createParameterNode(self):
        """A new ``vtkMRMLScriptedModuleNode`` tagged with this module's name (not yet in the scene)."""
        scene = _slicer().mrmlScene
        if scene is None:
            return None
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)  # the Python variable owns the object now, as in Slicer
        if self.isSingletonParameterNode:
            node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(scene.GenerateUniqueName(self.moduleName))
        return node


class ScriptedLoadableModuleTest(_unittest.TestCase):
    """Base class of ``<Module>Test``: a ``unittest.TestCase`` run through ``runTest()``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.enableScreenshots = False
        self.screenshotScaleFactor = 1.0

    def delayDisplay(self, message: str, requestedDelay: int = None, msec: int = None) -> None:
        """Show a progress message; headless it is a log line (``slicer.util.delayDisplay``)."""
        if hasattr(self, "messageDelay"):
            msec = self.messageDelay
        if msec is None:
            msec = requestedDelay if requestedDelay is not None else 100
        _slicer().util.delayDisplay(message, msec)

    def takeScreenshot(self, name: str, description: str, type: int = -1) -> None:
        """Slicer stores a screenshot here; headless there is nothing to capture, so only log."""
        self.delayDisplay(description)

    def runTest(self) -> None:
        """Default test: nothing defined (Slicer logs the same warning)."""
        _logging.warning("No test is defined in " + self.__class__.__name__)

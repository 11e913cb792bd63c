"""Static checks of the Slicer extension layout: what Slicer packages, and what the widgets use.

Why: Slicer packages only the files a module's CMakeLists.txt lists, and silently drops the
rest, so a forgotten ``.py`` works in the source tree and breaks in the released extension.
The widget code cannot run in CI (no PythonQt), so a widget name mistyped in Python, or a
``SlicerParameterName`` in the ``.ui`` file that the parameter node does not have, would only
show up in front of a user. These checks read the files instead (no slicer import needed).

Each check is a function ``check_...(root) -> list[str]`` returning one line per problem; the
``*_detects_*`` tests run it on a deliberately broken copy to prove it can fail.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_CHECK = REPO.parent / "shared" / "tools" / "check_layout.py"
EXTENSION_NAME = "CochleaToolkit"
EXPECTED_MODULES = ("CochleaCommon", "CochleaLandmarks", "CochleaSegmentation", "ElectrodeAnnotation")

# Widget classes a parameter node can bind through ``SlicerParameterName`` (Slicer's GUI connectors).
CONNECTABLE_WIDGETS = {
    "qMRMLNodeComboBox", "qMRMLSubjectHierarchyTreeView", "QComboBox", "QSpinBox", "QSlider", "QDoubleSpinBox",
    "ctkSliderWidget", "ctkRangeWidget", "QCheckBox", "QPushButton", "QLineEdit", "QTextEdit", "ctkPathLineEdit",
    "ctkDirectoryButton",
}
GUI_IMPORT = re.compile(r"^\s*(?:import|from)\s+(slicer|qt|ctk|PythonQt|vtkSlicer\w*|qSlicer\w*|MRML\w*)\b", re.M)


# --- helpers ---------------------------------------------------------------------------------------
def module_dirs(root: Path) -> list[Path]:
    """Folders that are Slicer modules: ``<X>/<X>.py`` or a CMakeLists building a scripted module."""
    found = set()
    for folder in root.iterdir():
        if not folder.is_dir() or folder.name.startswith(".") or folder.name in ("Testing", "Resources"):
            continue
        cmake = folder / "CMakeLists.txt"
        builds_module = cmake.is_file() and "slicerMacroBuildScriptedModule" in cmake.read_text(
            encoding="utf-8", errors="replace")
        if (folder / f"{folder.name}.py").is_file() or builds_module:
            found.add(folder)
    return sorted(found)


def _cmake_text(path: Path) -> str:
    return "\n".join(line.split("#", 1)[0] for line in path.read_text(encoding="utf-8", errors="replace").splitlines())


def cmake_set(text: str, variable: str) -> list[str] | None:
    """Items of ``set(<variable> ...)`` in CMake text (quotes removed), or None when it is not set."""
    m = re.search(rf"\bset\(\s*{re.escape(variable)}(?=[\s)])", text, re.I)
    if m is None:
        return None
    items: list[str] = []
    token, quoted, i = None, False, m.end()
    while i < len(text):
        ch = text[i]
        if quoted:
            if ch == '"':
                quoted = False
            else:
                token += ch
        elif ch == '"':
            quoted, token = True, token or ""
        elif ch.isspace() or ch == ")":
            if token is not None:
                items.append(token)
                token = None
            if ch == ")":
                return items
        else:
            token = (token or "") + ch
        i += 1
    raise ValueError(f"unterminated set({variable} ...)")


def cmake_listed_files(module: Path) -> tuple[set[str], set[str]]:
    """(scripts, resources) listed in ``<module>/CMakeLists.txt``, relative paths, ``${MODULE_NAME}`` expanded."""
    text = _cmake_text(module / "CMakeLists.txt")
    name = (cmake_set(text, "MODULE_NAME") or [module.name])[0]

    def expand(items: list[str] | None) -> list[str]:
        return [i.replace("${MODULE_NAME}", name) for i in (items or [])]

    scripts = {s if s.endswith(".py") else f"{s}.py" for s in expand(cmake_set(text, "MODULE_PYTHON_SCRIPTS"))}
    resources = set(expand(cmake_set(text, "MODULE_PYTHON_RESOURCES")))
    return scripts, resources


def shipped_files(module: Path) -> list[str]:
    """Files Slicer must package from a module folder (everything but build/test leftovers)."""
    out = []
    for f in sorted(module.rglob("*")):
        rel = f.relative_to(module).as_posix()
        if not f.is_file() or "__pycache__" in f.parts or f.suffix == ".pyc" or f.name == "CMakeLists.txt":
            continue
        if rel.startswith("Testing/") or f.name.startswith("."):
            continue
        out.append(rel)
    return out


def parameter_node_fields(tree: ast.Module) -> set[str]:
    """Annotated field names of the class(es) decorated with ``@parameterNodeWrapper``."""
    fields = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper")
                or (isinstance(d, ast.Call) and getattr(d.func, "id", None) == "parameterNodeWrapper")
                for d in node.decorator_list):
            fields |= {s.target.id for s in node.body
                       if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    return fields


def ui_widgets(ui_file: Path) -> dict[str, ET.Element]:
    """Widget name -> element for every widget in a Qt Designer file."""
    return {w.get("name"): w for w in ET.parse(ui_file).getroot().iter("widget")}


# --- checks ----------------------------------------------------------------------------------------
def check_cmake_lists_every_file(root: Path) -> list[str]:
    """Every .py and resource in a module folder is listed in its CMakeLists.txt, and every listed file exists."""
    problems = []
    for module in module_dirs(root):
        if not (module / "CMakeLists.txt").is_file():
            problems.append(f"{module.name}: no CMakeLists.txt (Slicer would not build or package the module)")
            continue
        scripts, resources = cmake_listed_files(module)
        for rel in shipped_files(module):
            listed = scripts if rel.endswith(".py") else resources
            if rel not in listed:
                kind = "MODULE_PYTHON_SCRIPTS" if rel.endswith(".py") else "MODULE_PYTHON_RESOURCES"
                problems.append(f"{module.name}/CMakeLists.txt: {rel} is not listed in {kind}")
        for rel in sorted(scripts | resources):
            if not (module / rel).is_file():
                problems.append(f"{module.name}/CMakeLists.txt lists {rel}, which does not exist")
    return problems


def check_module_cmake(root: Path) -> list[str]:
    """Each module CMakeLists builds the module with generic tests and registers its self-test."""
    problems = []
    for module in module_dirs(root):
        cmake = module / "CMakeLists.txt"
        if not cmake.is_file():
            continue
        text = _cmake_text(cmake)
        name = (cmake_set(text, "MODULE_NAME") or [""])[0]
        if name != module.name:
            problems.append(f"{module.name}/CMakeLists.txt: MODULE_NAME is {name!r}, not the folder name")
        for needle in ("slicerMacroBuildScriptedModule", "WITH_GENERIC_TESTS", "SCRIPTS ${MODULE_PYTHON_SCRIPTS}",
                       "RESOURCES ${MODULE_PYTHON_RESOURCES}"):
            if needle not in text:
                problems.append(f"{module.name}/CMakeLists.txt: missing {needle}")
        if not re.search(r"if\s*\(\s*BUILD_TESTING\s*\).*slicer_add_python_unittest\s*\(\s*SCRIPT\s+"
                         r"\$\{MODULE_NAME\}\.py\s*\).*endif", text, re.S):
            problems.append(f"{module.name}/CMakeLists.txt: no slicer_add_python_unittest(SCRIPT ${{MODULE_NAME}}.py) "
                            "inside if(BUILD_TESTING)")
        scripts, _resources = cmake_listed_files(module)
        if f"{module.name}.py" not in scripts:
            problems.append(f"{module.name}/CMakeLists.txt: the module file {module.name}.py is not listed")
    return problems


def check_top_level_cmake(root: Path) -> list[str]:
    """The extension CMakeLists has the metadata, PyTorch dependency and one add_subdirectory per module."""
    cmake = root / "CMakeLists.txt"
    if not cmake.is_file():
        return ["CMakeLists.txt (extension) is missing"]
    text = _cmake_text(cmake)
    problems = []
    if not re.search(rf"\bproject\(\s*{EXTENSION_NAME}\b", text):
        problems.append(f"CMakeLists.txt: project({EXTENSION_NAME}) is missing")
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        if not cmake_set(text, var):
            problems.append(f"CMakeLists.txt: {var} is not set")
    if "PyTorch" not in " ".join(cmake_set(text, "EXTENSION_DEPENDS") or []):
        problems.append("CMakeLists.txt: EXTENSION_DEPENDS does not include PyTorch")
    for needle in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                   "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        if needle not in text:
            problems.append(f"CMakeLists.txt: missing {needle}")
    subdirs = set(re.findall(r"\badd_subdirectory\(\s*([\w.-]+)\s*\)", text))
    for module in module_dirs(root):
        if module.name not in subdirs:
            problems.append(f"CMakeLists.txt: no add_subdirectory({module.name})")
    for sub in sorted(subdirs):
        if not (root / sub / "CMakeLists.txt").is_file():
            problems.append(f"CMakeLists.txt: add_subdirectory({sub}) names no folder with a CMakeLists.txt")
    return problems


def check_libs_are_pure(root: Path) -> list[str]:
    """No ``<Module>Lib`` file imports slicer/qt/ctk, except the one adapter, slicer_io."""
    problems = []
    for module in module_dirs(root):
        for py in sorted(module.glob("*Lib/**/*.py")):
            if py.name == "slicer_io.py":
                continue
            m = GUI_IMPORT.search(py.read_text(encoding="utf-8", errors="replace"))
            if m:
                problems.append(f"{py.relative_to(root)} imports {m.group(1)}: the core must run without Slicer")
    return problems


def check_module_files(root: Path) -> list[str]:
    """Template form: <M>, <M>Widget, <M>Logic, <M>Test with the right bases; no top-level qt/ctk import."""
    problems = []
    bases = {"": "ScriptedLoadableModule", "Widget": "ScriptedLoadableModuleWidget",
             "Logic": "ScriptedLoadableModuleLogic", "Test": "ScriptedLoadableModuleTest"}
    for module in module_dirs(root):
        py = module / f"{module.name}.py"
        if not py.is_file():
            problems.append(f"{module.name}: the module file {module.name}.py is missing")
            continue
        tree = ast.parse(py.read_text(encoding="utf-8"), filename=str(py))
        classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
        for suffix, base in bases.items():
            cls = classes.get(module.name + suffix)
            if cls is None:
                problems.append(f"{module.name}.py: class {module.name + suffix} is missing")
            elif base not in {getattr(b, "id", getattr(b, "attr", None)) for b in cls.bases}:
                problems.append(f"{module.name}.py: {module.name + suffix} does not derive from {base}")
        for node in tree.body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name.split(".")[0] in ("qt", "ctk"):
                    problems.append(f"{module.name}.py: top-level import of {name} (import it inside the widget)")
    return problems


def check_widgets_match_ui(root: Path) -> list[str]:
    """Every ``self.ui.<name>`` exists in the .ui; every SlicerParameterName is a bindable parameter field."""
    problems = []
    for module in module_dirs(root):
        py = module / f"{module.name}.py"
        if not py.is_file():
            continue
        source = py.read_text(encoding="utf-8")
        used = set(re.findall(r"\bself\.ui\.(\w+)", source))
        loaded = set(re.findall(r"""loadUI\(\s*self\.resourcePath\(\s*["']UI/([\w.]+\.ui)["']""", source))
        if used and not loaded:
            problems.append(f"{module.name}.py uses self.ui but loads no Resources/UI/*.ui file")
        widgets: dict[str, ET.Element] = {}
        for ui_name in loaded:
            ui_file = module / "Resources" / "UI" / ui_name
            if not ui_file.is_file():
                problems.append(f"{module.name}.py loads UI/{ui_name}, which does not exist")
                continue
            widgets.update(ui_widgets(ui_file))
            root_el = ET.parse(ui_file).getroot()
            declared = {c.findtext("class") for c in root_el.iter("customwidget")}
            for w in root_el.iter("widget"):
                cls = w.get("class")
                if not cls.startswith("Q") and cls not in declared:
                    problems.append(f"{module.name}/Resources/UI/{ui_name}: {cls} is not declared in <customwidgets>")
        for name in sorted(used - set(widgets)):
            problems.append(f"{module.name}.py uses self.ui.{name}, which is not a widget in its .ui file")
        fields = parameter_node_fields(ast.parse(source))
        for name, w in sorted(widgets.items()):
            prop = next((p for p in w.findall("property") if p.get("name") == "SlicerParameterName"), None)
            if prop is None:
                continue
            param = prop.findtext("string")
            if param not in fields:
                problems.append(f"{module.name}: widget {name} is bound to '{param}', "
                                "not a field of the parameter node")
            if w.get("class") not in CONNECTABLE_WIDGETS:
                problems.append(f"{module.name}: widget {name} ({w.get('class')}) cannot be bound by connectGui")
    return problems


def _png_size(path: Path) -> tuple[int, int] | None:
    data = path.read_bytes()[:24]
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def check_icons(root: Path) -> list[str]:
    """The extension icon is a 128x128 PNG; every module has a PNG icon named after it."""
    problems = []
    icon = root / f"{EXTENSION_NAME}.png"
    if not icon.is_file() or _png_size(icon) != (128, 128):
        size = _png_size(icon) if icon.is_file() else "no file"
        problems.append(f"{EXTENSION_NAME}.png must be a 128x128 PNG (got {size})")
    for module in module_dirs(root):
        path = module / "Resources" / "Icons" / f"{module.name}.png"
        if not path.is_file() or _png_size(path) is None:
            problems.append(f"{module.name}: Resources/Icons/{module.name}.png is missing or not a PNG")
    return problems


ALL_CHECKS = (check_cmake_lists_every_file, check_module_cmake, check_top_level_cmake, check_libs_are_pure,
              check_module_files, check_widgets_match_ui, check_icons)


# --- the checks pass on the repository ---------------------------------------------------------------
def test_all_expected_modules_are_present() -> None:
    assert [m.name for m in module_dirs(REPO)] == sorted(EXPECTED_MODULES)


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
def test_repository_passes(check) -> None:
    problems = check(REPO)
    assert problems == [], "\n".join(problems)


@pytest.mark.shared
def test_shared_check_layout_passes() -> None:
    if not SHARED_CHECK.is_file():
        pytest.skip(f"{SHARED_CHECK} is absent: the shared layout checker lives beside the repository (../shared)")
    result = subprocess.run([sys.executable, str(SHARED_CHECK)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_visible_modules_start_with_apply_disabled() -> None:
    """Processing is not available yet: the .ui must not offer a working-looking Apply button."""
    for module in module_dirs(REPO):
        ui_file = module / "Resources" / "UI" / f"{module.name}.ui"
        if not ui_file.is_file():
            continue
        apply = ui_widgets(ui_file).get("applyButton")
        assert apply is not None, f"{ui_file.name}: no applyButton"
        enabled = next((p.findtext("bool") for p in apply.findall("property") if p.get("name") == "enabled"), "true")
        assert enabled == "false", f"{ui_file.name}: applyButton starts enabled"


# --- each check can fail: run it on a broken copy --------------------------------------------------
@pytest.fixture
def copy_root(tmp_path: Path) -> Path:
    """A copy of the extension files the checks read (module folders, top CMakeLists, icon)."""
    root = tmp_path / "ext"
    root.mkdir()
    for module in module_dirs(REPO):
        shutil.copytree(module, root / module.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("CMakeLists.txt", f"{EXTENSION_NAME}.png"):
        shutil.copy2(REPO / name, root / name)
    return root


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def new_problems(check, root: Path, breakage) -> list[str]:
    """Problems ``check`` reports after ``breakage(root)`` that it did not report before.

    Relative to the copy's own state, so a file another change adds to the repository (and that
    ``test_repository_passes`` reports) does not make these tests fail too.
    """
    before = set(check(root))
    breakage(root)
    return [p for p in check(root) if p not in before]


def test_cmake_check_detects_unlisted_and_missing_files(copy_root: Path) -> None:
    def breakage(root: Path) -> None:
        (root / "CochleaLandmarks" / "CochleaLandmarksLib" / "forgotten.py").write_text("x = 1\n", encoding="utf-8")
        (root / "CochleaSegmentation" / "Resources" / "atlas.nrrd").write_bytes(b"NRRD0004\n")
        _edit(root / "ElectrodeAnnotation" / "CMakeLists.txt", "  Resources/UI/ElectrodeAnnotation.ui\n", "")
        _edit(root / "CochleaCommon" / "CMakeLists.txt", "  CochleaCommon.py\n", "  CochleaCommon.py\n  Ghost.py\n")

    assert sorted(new_problems(check_cmake_lists_every_file, copy_root, breakage)) == [
        "CochleaCommon/CMakeLists.txt lists Ghost.py, which does not exist",
        "CochleaLandmarks/CMakeLists.txt: CochleaLandmarksLib/forgotten.py is not listed in MODULE_PYTHON_SCRIPTS",
        "CochleaSegmentation/CMakeLists.txt: Resources/atlas.nrrd is not listed in MODULE_PYTHON_RESOURCES",
        "ElectrodeAnnotation/CMakeLists.txt: Resources/UI/ElectrodeAnnotation.ui is not listed in "
        "MODULE_PYTHON_RESOURCES",
    ]


@pytest.mark.shared
def test_shared_check_layout_detects_unlisted_file(copy_root: Path) -> None:
    if not SHARED_CHECK.is_file():
        pytest.skip(f"{SHARED_CHECK} is absent: the shared layout checker lives beside the repository (../shared)")
    forgotten = copy_root / "CochleaLandmarks" / "CochleaLandmarksLib" / "forgotten_module.py"
    forgotten.write_text("x = 1\n", encoding="utf-8")
    result = subprocess.run([sys.executable, str(SHARED_CHECK)], cwd=copy_root, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1 and "forgotten_module.py" in result.stdout


def test_module_cmake_check_detects_missing_tests(copy_root: Path) -> None:
    def breakage(root: Path) -> None:
        cmake = root / "CochleaLandmarks" / "CMakeLists.txt"
        _edit(cmake, "WITH_GENERIC_TESTS", "")
        _edit(cmake, "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)", "")
        _edit(root / "ElectrodeAnnotation" / "CMakeLists.txt", "set(MODULE_NAME ElectrodeAnnotation)",
              "set(MODULE_NAME Electrodes)")

    assert sorted(new_problems(check_module_cmake, copy_root, breakage)) == [
        "CochleaLandmarks/CMakeLists.txt: missing WITH_GENERIC_TESTS",
        "CochleaLandmarks/CMakeLists.txt: no slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py) inside "
        "if(BUILD_TESTING)",
        "ElectrodeAnnotation/CMakeLists.txt: MODULE_NAME is 'Electrodes', not the folder name",
    ]


def test_top_level_check_detects_missing_module_and_dependency(copy_root: Path) -> None:
    def breakage(root: Path) -> None:
        _edit(root / "CMakeLists.txt", "add_subdirectory(ElectrodeAnnotation)", "add_subdirectory(Electrodes)")
        _edit(root / "CMakeLists.txt", 'set(EXTENSION_DEPENDS "PyTorch")', 'set(EXTENSION_DEPENDS "NA")')
        _edit(root / "CMakeLists.txt", "include(${Slicer_EXTENSION_CPACK})", "")

    assert sorted(new_problems(check_top_level_cmake, copy_root, breakage)) == [
        "CMakeLists.txt: EXTENSION_DEPENDS does not include PyTorch",
        "CMakeLists.txt: add_subdirectory(Electrodes) names no folder with a CMakeLists.txt",
        "CMakeLists.txt: missing include(${Slicer_EXTENSION_CPACK})",
        "CMakeLists.txt: no add_subdirectory(ElectrodeAnnotation)",
    ]


def test_purity_check_detects_slicer_import_in_lib(copy_root: Path) -> None:
    def breakage(root: Path) -> None:
        lib = root / "CochleaSegmentation" / "CochleaSegmentationLib"
        (lib / "sneaky.py").write_text("def f():\n    import qt\n    return qt\n", encoding="utf-8")
        (lib / "sneaky2.py").write_text("from slicer.util import arrayFromVolume\n", encoding="utf-8")
        (lib / "fine.py").write_text("import vtk\nimport numpy\n# import slicer is only mentioned here\n",
                                     encoding="utf-8")

    assert sorted(new_problems(check_libs_are_pure, copy_root, breakage)) == [
        "CochleaSegmentation/CochleaSegmentationLib/sneaky.py imports qt: the core must run without Slicer",
        "CochleaSegmentation/CochleaSegmentationLib/sneaky2.py imports slicer: the core must run without Slicer",
    ]


def test_module_file_check_detects_missing_class_and_qt_import(copy_root: Path) -> None:
    def breakage(root: Path) -> None:
        py = root / "ElectrodeAnnotation" / "ElectrodeAnnotation.py"
        _edit(py, "class ElectrodeAnnotationTest(ScriptedLoadableModuleTest):", "class SomethingElse:")
        _edit(py, "class ElectrodeAnnotationLogic(ScriptedLoadableModuleLogic):", "class ElectrodeAnnotationLogic:")
        _edit(py, "import vtk\n", "import qt\nimport vtk\n")

    assert sorted(new_problems(check_module_files, copy_root, breakage)) == [
        "ElectrodeAnnotation.py: ElectrodeAnnotationLogic does not derive from ScriptedLoadableModuleLogic",
        "ElectrodeAnnotation.py: class ElectrodeAnnotationTest is missing",
        "ElectrodeAnnotation.py: top-level import of qt (import it inside the widget)",
    ]


def test_widget_check_detects_unknown_ui_name_and_unbound_parameter(copy_root: Path) -> None:
    def breakage(root: Path) -> None:
        _edit(root / "CochleaLandmarks" / "CochleaLandmarks.py", "self.ui.applyButton.enabled = canApply",
              "self.ui.applyButon.enabled = canApply")
        _edit(root / "CochleaLandmarks" / "Resources" / "UI" / "CochleaLandmarks.ui", "<string>roiSizeMm</string>",
              "<string>roiSize</string>")

    assert sorted(new_problems(check_widgets_match_ui, copy_root, breakage)) == [
        "CochleaLandmarks.py uses self.ui.applyButon, which is not a widget in its .ui file",
        "CochleaLandmarks: widget roiSizeSliderWidget is bound to 'roiSize', not a field of the parameter node",
    ]


def test_widget_check_detects_unbindable_and_undeclared_widgets(copy_root: Path) -> None:
    def breakage(root: Path) -> None:
        ui = root / "CochleaLandmarks" / "Resources" / "UI" / "CochleaLandmarks.ui"
        _edit(ui, '<widget class="qSlicerMarkupsPlaceWidget" name="seedPointsPlaceWidget">',
              '<widget class="qSlicerMarkupsPlaceWidget" name="seedPointsPlaceWidget">\n'
              '<property name="SlicerParameterName" stdset="0"><string>seedPoints</string></property>')
        _edit(ui, "<class>ctkSliderWidget</class>", "<class>ctkSliderWidgetTypo</class>")

    assert sorted(new_problems(check_widgets_match_ui, copy_root, breakage)) == [
        "CochleaLandmarks/Resources/UI/CochleaLandmarks.ui: ctkSliderWidget is not declared in <customwidgets>",
        "CochleaLandmarks: widget seedPointsPlaceWidget (qSlicerMarkupsPlaceWidget) cannot be bound by connectGui",
    ]


def test_icon_check_detects_wrong_size_and_missing_icon(copy_root: Path) -> None:
    def breakage(root: Path) -> None:
        png = (REPO / f"{EXTENSION_NAME}.png").read_bytes()
        (root / f"{EXTENSION_NAME}.png").write_bytes(png[:16] + (64).to_bytes(4, "big") + (64).to_bytes(4, "big"))
        (root / "CochleaCommon" / "Resources" / "Icons" / "CochleaCommon.png").unlink()

    assert sorted(new_problems(check_icons, copy_root, breakage)) == [
        "CochleaCommon: Resources/Icons/CochleaCommon.png is missing or not a PNG",
        "CochleaToolkit.png must be a 128x128 PNG (got (64, 64))",
    ]

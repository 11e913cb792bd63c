"""Test-wide setup: the headless Slicer harness, a clean scene per test, and VTK errors as failures.

Why:
* ``slicer_harness`` must be imported before any test module imports ``slicer``, so that the
  stand-ins in ``Testing/harness/slicer/`` join the ``slicer`` package (pyproject puts
  ``Testing/harness`` on ``sys.path`` first).
* VTK and MRML report problems through ``vtkOutputWindow`` and never raise, so a test could pass
  while Slicer logged ``ERROR: ... Failed to read node``. An observer collects every error; a
  test during which one was logged fails with the messages. A test that provokes errors on
  purpose marks itself ``@pytest.mark.expected_vtk_errors`` (any error allowed) or
  ``@pytest.mark.expected_vtk_errors(r"regex", ...)`` (each pattern must match a logged error,
  and every error must match a pattern). The ``vtk_messages`` fixture gives the collected
  errors and warnings to the test.
* The core tests must run where ``slicer-core`` is not installed: then the harness is skipped,
  tests marked ``mrml`` are skipped with the reason, and everything else runs.
"""

from __future__ import annotations

import logging
import re

import pytest

try:
    import slicer_harness
    import vtk
except ImportError as _exc:  # slicer-core (or vtk) not installed: core tests only
    slicer_harness = None
    SLICER_MISSING_REASON = (
        f"slicer-core is not installed ({_exc}); install the test extras: pip install -e '.[test]'"
    )
else:
    SLICER_MISSING_REASON = ""

HARNESS = slicer_harness.setup() if slicer_harness is not None else None


class VTKMessageLog:
    """Collects the errors and warnings VTK/MRML send to ``vtkOutputWindow``."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self._tags: list[int] = []

    def install(self) -> None:
        window = vtk.vtkOutputWindow.GetInstance()

        @vtk.calldata_type(vtk.VTK_STRING)
        def on_error(caller, event, text) -> None:
            self.errors.append(str(text).strip())

        @vtk.calldata_type(vtk.VTK_STRING)
        def on_warning(caller, event, text) -> None:
            self.warnings.append(str(text).strip())

        self._callbacks = (on_error, on_warning)  # keep the Python callables alive
        self._tags = [window.AddObserver(vtk.vtkCommand.ErrorEvent, on_error),
                      window.AddObserver(vtk.vtkCommand.WarningEvent, on_warning)]

    def clear(self) -> None:
        self.errors.clear()
        self.warnings.clear()

    def take_errors(self) -> list[str]:
        errors, self.errors = self.errors, []
        return errors


VTK_LOG = VTKMessageLog()
if HARNESS is not None:
    VTK_LOG.install()


def unexpected_vtk_errors(errors: list[str], marker, require_matches: bool = True) -> list[str]:
    """Errors not allowed by the test's ``expected_vtk_errors`` marker (plus unmet expectations).

    No marker: every error is unexpected. Marker without arguments: none is. Marker with regex
    patterns: errors matching no pattern are unexpected, and (if ``require_matches``) so is a
    pattern that matched nothing.
    """
    if marker is None:
        return list(errors)
    patterns = [re.compile(p, re.S) for p in marker.args]
    if not patterns:
        return []
    problems = [e for e in errors if not any(p.search(e) for p in patterns)]
    if require_matches:
        problems += [f"(expected a VTK error matching {p.pattern!r}, none was logged)"
                     for p in patterns if not any(p.search(e) for e in errors)]
    return problems


def _format(errors: list[str]) -> str:
    return "\n---\n".join(errors)


def pytest_collection_modifyitems(config, items) -> None:
    if HARNESS is not None:
        return
    skip = pytest.mark.skip(reason=SLICER_MISSING_REASON)
    for item in items:
        if "mrml" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _clean_scene_and_vtk_errors(request):
    """Start every test with a closed scene and an empty error log; fail on errors left at teardown."""
    if HARNESS is None:
        yield
        return
    HARNESS.clear_scene()
    leftovers = VTK_LOG.take_errors()
    if leftovers:
        pytest.fail("VTK/MRML logged errors while closing the scene left by the previous test:\n"
                    + _format(leftovers), pytrace=False)
    VTK_LOG.clear()
    yield
    late = unexpected_vtk_errors(VTK_LOG.take_errors(), request.node.get_closest_marker("expected_vtk_errors"),
                                 require_matches=False)
    if late:
        pytest.fail("VTK/MRML logged errors during teardown:\n" + _format(late), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Turn VTK/MRML errors logged while the test body ran into a failure of that test."""
    try:
        result = yield
    except BaseException:
        if HARNESS is not None and VTK_LOG.errors:
            logging.error("VTK/MRML errors logged before the failure:\n%s", _format(VTK_LOG.errors))
        raise
    if HARNESS is not None:
        errors = unexpected_vtk_errors(VTK_LOG.take_errors(), item.get_closest_marker("expected_vtk_errors"))
        if errors:
            pytest.fail(f"VTK/MRML logged {len(errors)} error(s) during the test:\n{_format(errors)}", pytrace=False)
    return result


@pytest.fixture
def vtk_messages() -> VTKMessageLog:
    """The errors and warnings VTK/MRML logged so far in this test (errors are checked after it)."""
    if HARNESS is None:
        pytest.skip(SLICER_MISSING_REASON)
    return VTK_LOG


@pytest.fixture
def harness():
    """The headless Slicer harness (scene, application logic, module logics)."""
    if HARNESS is None:
        pytest.skip(SLICER_MISSING_REASON)
    return HARNESS

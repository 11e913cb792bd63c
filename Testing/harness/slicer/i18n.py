"""Headless stand-in for Slicer's ``slicer.i18n`` (not shipped in the ``slicer-core`` wheel).

Why: module files follow the Slicer template and wrap user-visible strings in ``_()`` /
``translate()``. Inside Slicer these look up Qt translations; in CI there is no Qt, so the text
is returned unchanged, which is exactly what an untranslated Slicer shows.

This folder has no ``__init__.py`` on purpose: slicer-core's ``slicer/__init__.py`` extends its
package path over every ``slicer/`` folder on ``sys.path`` and imports the modules it finds there.
"""


def tr(text: str) -> str:
    """Translate ``text`` in the current context (identity without Qt)."""
    return text


def translate(context: str, text: str) -> str:
    """Translate ``text`` in ``context`` (identity without Qt)."""
    return text


"""Write outputs all-or-nothing: to a temporary name beside the target, then move into place.

Why: a crash, a cancel or a full disk must never leave a half-written ``.nrrd`` or ``.fcsv`` that a
later run (or a clinician) mistakes for a result. ``os.replace`` within one folder is atomic.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import InputFileError

#: Multi-part extensions that writers dispatch on; the temporary name must keep them.
COMPOUND_SUFFIXES = (".nii.gz", ".mrk.json", ".seg.nrrd")


def full_suffix(path: str | os.PathLike) -> str:
    """The format-defining extension of ``path``, lower case (``.nii.gz``, ``.mrk.json``, ``.nrrd``)."""
    name = Path(path).name.lower()
    for suffix in COMPOUND_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path with the same extension; on success move it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    if target.parent.exists() and not target.parent.is_dir():
        raise InputFileError(f"Cannot write {target.name}: the output folder {target.parent} is a file. "
                             "Choose another output folder.")
    if not target.parent.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputFileError(f"Cannot create the output folder {target.parent}: {exc.strerror}. "
                                 "Choose a folder you can write to.") from exc
    suffix = full_suffix(target)
    tmp = target.with_name(f".{target.name[: len(target.name) - len(suffix)]}.tmp-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise

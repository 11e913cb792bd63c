"""Small helpers shared by the ``cochlea`` subcommands (not a subcommand itself: the name starts with ``_``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..progress import Progress, TextProgressBar


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1, with a message that says what was wrong."""
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_registry_argument(parser: argparse.ArgumentParser) -> None:
    """``--registry PATH``: use another models.json than the bundled one (project-trained or test registries)."""
    parser.add_argument("--registry", type=Path, default=None, metavar="PATH",
                        help="model registry file (default: the models.json shipped with CochleaToolkit)")


def load_registry(args: argparse.Namespace):
    """The :class:`~CochleaCommonLib.model_registry.ModelRegistry` chosen by ``--registry`` (or the bundled one)."""
    from ..model_registry import ModelRegistry

    return ModelRegistry.load(getattr(args, "registry", None))


@contextlib.contextmanager
def cli_progress(args: argparse.Namespace) -> Iterator[Progress]:
    """A :class:`Progress` drawing a bar on stderr, or silent with ``--quiet``; the bar's line is closed after."""
    if getattr(args, "quiet", False):
        yield Progress()
        return
    bar = TextProgressBar(sys.stderr)
    try:
        yield Progress(bar)
    finally:
        bar.close()


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout (paths and other objects as strings)."""
    print(json.dumps(data, indent=2, default=str))

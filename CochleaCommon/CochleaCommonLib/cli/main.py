"""Entry point of the ``cochlea`` command line: parse arguments, run one subcommand, turn errors into messages.

Why subcommands register themselves: each module in this package (``info.py``, ``convert.py``,
``models.py``, later ``landmarks.py`` ...) defines ``register(subparsers)``, which adds its parser and
sets ``handler=run``; :func:`build_parser` discovers them, so a new command is one new file and never
an edit here. Modules whose name starts with ``_`` are helpers, not commands. Subcommand modules must
import heavy packages (torch, vtk, SimpleITK) inside ``run`` so ``cochlea --help`` stays fast.

Every :class:`~CochleaCommonLib.errors.CochleaError` is printed as ``cochlea: error: <message>`` with
exit status 2 and no traceback (``--verbose`` adds it). Unexpected exceptions (bugs) exit with 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
import traceback
from collections.abc import Iterator
from types import ModuleType

from .. import __version__
from ..errors import CochleaError

#: Exit statuses: success, a bug, a user-fixable error (bad input, missing file, ...), Ctrl+C.
EXIT_OK, EXIT_BUG, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


def subcommand_modules() -> list[ModuleType]:
    """The modules of this package that define ``register(subparsers)``, sorted by name."""
    package = importlib.import_module(__package__)
    found = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "main":
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        if callable(getattr(module, "register", None)):
            found.append(module)
    return found


def _all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every (nested) subcommand parser below it, each once."""
    seen: set[int] = set()
    stack = [parser]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())


def _add_common_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # Below the top level the default is SUPPRESS so `cochlea -v info` is not reset by the info parser.
    default_flag = False if top else argparse.SUPPRESS
    parser.add_argument("-v", "--verbose", action="store_true", default=default_flag,
                        help="show details and, on errors, the Python traceback")
    parser.add_argument("-q", "--quiet", action="store_true", default=default_flag, help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The full ``cochlea`` argument parser with every discovered subcommand."""
    parser = argparse.ArgumentParser(
        prog="cochlea",
        description="CochleaToolkit on the command line: cochlea analysis in CT and cone-beam CT, "
                    "file conversion and model management.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module in subcommand_modules():
        module.register(subparsers)
    for index, each in enumerate(_all_parsers(parser)):
        _add_common_options(each, top=index == 0)
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="cochlea: %(message)s",
                        stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run ``cochlea`` with ``argv`` (default: the process arguments) and return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version or a usage error (argparse already printed it)
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_ERROR)
    verbose = bool(getattr(args, "verbose", False))
    _configure_logging(verbose)
    from .. import malloc_tuning

    malloc_tuning.tune_malloc_for_batches()  # our own process: batch buffers are reused, not re-faulted
    try:
        return int(args.handler(args) or EXIT_OK)
    except (CochleaError, OSError) as exc:
        if verbose:
            traceback.print_exc()
        print(f"cochlea: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\ncochlea: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if verbose:
            traceback.print_exc()
        print(f"cochlea: internal error: {type(exc).__name__}: {exc}. Run the command again with --verbose to see "
              "where it happened, and please report it.", file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())

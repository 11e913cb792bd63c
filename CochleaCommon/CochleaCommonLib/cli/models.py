"""``cochlea models list|download|verify|import``: manage the weights of the registered models.

Why a command for this: published weights are downloaded on demand (never shipped), and hospitals often
block downloads. ``download`` fetches and checks them; ``import`` installs a file fetched elsewhere (a
browser, a USB stick) after checking it is the right one; ``verify`` finds corrupt copies.
"""

from __future__ import annotations

import argparse

from ..errors import InvalidInputError, ModelWeightsError
from ._common import add_registry_argument, cli_progress, load_registry, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``models`` subcommand and its actions."""
    parser = subparsers.add_parser("models", help="list, download, verify or import model weights",
                                   description="Manage model weights: list, download, verify, import.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    p = actions.add_parser("list", help="list the registered models and whether their weights are present")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    add_registry_argument(p)
    p.set_defaults(handler=run_list)

    p = actions.add_parser("download", help="download model weights into the per-user cache (SHA256-checked)")
    p.add_argument("ids", nargs="*", metavar="ID", help="model id(s); see `cochlea models list`")
    p.add_argument("--all", action="store_true", help="download every model that has a download address")
    p.add_argument("--force", action="store_true", help="download again even if a valid copy is cached")
    add_registry_argument(p)
    p.set_defaults(handler=run_download)

    p = actions.add_parser("verify", help="check the SHA256 of the model files that are present")
    p.add_argument("id", nargs="?", metavar="ID", help="one model id (default: all; missing ones are listed)")
    add_registry_argument(p)
    p.set_defaults(handler=run_verify)

    p = actions.add_parser("import", help="install a weights file obtained elsewhere (offline install)")
    p.add_argument("id", metavar="ID", help="the model id the file belongs to")
    p.add_argument("file", metavar="FILE", help="the downloaded weights file")
    add_registry_argument(p)
    p.set_defaults(handler=run_import)


def run_list(args: argparse.Namespace) -> int:
    """Print one line per registered model."""
    registry = load_registry(args)
    statuses = registry.status()
    if args.json:
        print_json([{**s.to_dict(), "source": s.entry.source, "license": s.entry.license,
                     "description": s.entry.description} for s in statuses])
        return 0
    for s in statuses:
        state = {"ok": "installed", "missing": "not installed", "mismatch": "CORRUPT"}[s.state]
        print(f"{s.entry.id:<22} v{s.entry.version:<6} {s.entry.task:<20} {state:<13} {s.entry.license:<11} "
              f"{s.entry.description}")
    if not statuses:
        print("(no models registered)")
    return 0


def run_download(args: argparse.Namespace) -> int:
    """Download the chosen models (each verified); stop at the first failure."""
    registry = load_registry(args)
    if args.all == bool(args.ids):
        raise InvalidInputError("Name the model id(s) to download, or use --all. Known models: "
                                f"{', '.join(registry.ids)}.")
    ids = [e.id for e in registry.entries if e.url] if args.all else args.ids
    for model_id in ids:
        registry.get(model_id)  # unknown ids fail before anything is downloaded
    for model_id in ids:
        with cli_progress(args) as progress:
            found = registry.download(model_id, progress=progress, force=args.force)
        verb = "already present" if found.origin == "cache" else "downloaded"
        print(f"{model_id}: {verb}, SHA256 verified: {found.path}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """Check one model (missing or corrupt is an error) or all present models (corrupt is an error)."""
    registry = load_registry(args)
    if args.id:
        registry.get(args.id)  # an id, not a file path
        with cli_progress(args) as progress:
            found = registry.locate(args.id, progress=progress)  # raises if missing or corrupt
        print(f"{args.id}: ok ({found.origin}) {found.path}")
        return 0
    corrupt = []
    for s in registry.status():
        if s.state == "ok":
            print(f"{s.entry.id}: ok ({s.origin}) {s.path}")
        elif s.state == "missing":
            print(f"{s.entry.id}: not installed")
        else:
            print(f"{s.entry.id}: CORRUPT {s.path} (SHA256 {s.actual_sha256}, expected {s.entry.sha256})")
            corrupt.append(s)
    if corrupt:
        names = ", ".join(str(s.path) for s in corrupt)
        raise ModelWeightsError(f"{len(corrupt)} model file(s) are corrupt or a different version: {names}. "
                                "Delete them and run `cochlea models download ID` again.")
    return 0


def run_import(args: argparse.Namespace) -> int:
    """Copy a checked weights file into the per-user cache."""
    registry = load_registry(args)
    with cli_progress(args) as progress:
        dest = registry.import_file(args.id, args.file, progress=progress)
    print(f"{args.id}: imported, SHA256 verified: {dest}")
    return 0

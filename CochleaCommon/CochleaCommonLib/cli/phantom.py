"""``cochlea phantom`` and ``cochlea phantom-suite``: synthetic temporal-bone CT/CBCT cases with ground truth.

Why on the command line: the README demo, the CI end-to-end tests and anyone without a real scan
need data; one command makes a case folder that loads in Slicer as it is, and the suite command
makes a reproducible set (with a manifest) for training or benchmarking.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import cli_progress, print_json


def _spacing(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"spacing must be one number or three (i,j,k), got {text!r}") from exc
    if len(values) not in (1, 3):
        raise argparse.ArgumentTypeError(f"spacing must be one number or three (i,j,k), got {text!r}")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``phantom`` and ``phantom-suite`` subcommands."""
    p = subparsers.add_parser(
        "phantom", help="make one synthetic temporal-bone CT/CBCT case with ground truth",
        description="Generate a synthetic temporal-bone CT, CBCT or post-operative CT with exact ground truth "
                    "(landmarks, seed click, label map, contacts, case.json) in a folder that loads in Slicer.")
    p.add_argument("--kind", choices=("ct", "cbct", "postop"), default="ct", help="image kind (default: ct)")
    p.add_argument("--seed", type=int, default=0, help="case seed: the same seed gives the same case (default: 0)")
    p.add_argument("--spacing", type=_spacing, default=None, metavar="MM",
                   help="voxel spacing in mm, one value or i,j,k (default: drawn, 0.2-0.4 mm)")
    p.add_argument("--fov", type=_spacing, default=None, metavar="MM",
                   help="field of view in mm, one value or i,j,k (default: drawn, 34-48 mm)")
    p.add_argument("--side", choices=("left", "right"), default=None, help="ear side (default: drawn)")
    p.add_argument("--out", type=Path, required=True, help="output folder; the case goes into OUT/<case id>/")
    p.add_argument("--preview", action="store_true", help="also write preview.png (three sections with the truth)")
    p.add_argument("--meshes", action="store_true", help="also write surface meshes (meshes/*.vtk)")
    p.set_defaults(handler=run)

    s = subparsers.add_parser(
        "phantom-suite", help="make a reproducible set of phantom cases with a manifest",
        description="Generate COUNT cases (cycling through the kinds) and OUT/manifest.json. The same arguments "
                    "always give the same files.")
    s.add_argument("--count", type=int, required=True, help="number of cases")
    s.add_argument("--out", type=Path, required=True, help="output folder")
    s.add_argument("--seed", type=int, default=0, help="suite seed (default: 0)")
    s.add_argument("--kinds", default="ct,cbct,postop", help="comma-separated kinds to cycle (default: ct,cbct,postop)")
    s.add_argument("--spacing", type=_spacing, default=None, metavar="MM", help="fix the spacing of every case")
    s.add_argument("--fov", type=_spacing, default=None, metavar="MM", help="fix the field of view of every case")
    s.add_argument("--preview", action="store_true", help="write preview.png for every case")
    s.add_argument("--meshes", action="store_true", help="write surface meshes for every case")
    s.set_defaults(handler=run_suite)

    h = subparsers.add_parser(
        "phantom-head", help="make a synthetic head CT/CBCT with both ears (seed-free detection data)",
        description="Generate a posed head with both temporal bones on a grid centred on the head (plus --offset), "
                    "with one landmark file per ear inside the volume (OUT/<id>/<id>_left_landmarks.fcsv, ...).")
    h.add_argument("--kind", choices=("ct", "cbct"), default="ct", help="image kind (default: ct)")
    h.add_argument("--seed", type=int, default=0, help="case seed (default: 0)")
    h.add_argument("--spacing", type=_spacing, default=[1.0], metavar="MM",
                   help="voxel spacing in mm, one value or i,j,k, at most 1 (default: 1)")
    h.add_argument("--fov", type=_spacing, default=[230.0, 230.0, 180.0], metavar="MM",
                   help="field of view in mm, one value or i,j,k (default: 230,230,180)")
    h.add_argument("--offset", type=_spacing, default=[0.0, 0.0, 0.0], metavar="MM",
                   help="grid centre relative to the head centre, R,A,S in head axes (default: 0,0,0); "
                        "e.g. 60,0,0 keeps only the right ear, 0,0,80 no ear")
    h.add_argument("--out", type=Path, required=True, help="output folder; the case goes into OUT/<case id>/")
    h.set_defaults(handler=run_head)


def _one(values: list[float] | None):
    if values is None:
        return None
    return values[0] if len(values) == 1 else values


def run(args: argparse.Namespace) -> int:
    from ..phantom import generate_case

    with cli_progress(args) as progress:
        case = generate_case(args.kind, args.seed, spacing=_one(args.spacing), fov_mm=_one(args.fov),
                             side=args.side, progress=progress.sub(0.0, 0.9))
        folder = case.write(args.out, preview=args.preview, meshes=args.meshes)
        progress.update(1.0, "Written")
    if not getattr(args, "quiet", False):
        print_json({"case": case.case_id, "folder": str(folder), "kind": case.params.kind, "side": case.params.side,
                    "a_value_mm": case.info["cochlea"]["a_value_mm"], "turns": case.info["cochlea"]["turns"]})
    return 0


def run_suite(args: argparse.Namespace) -> int:
    from ..phantom import build_suite

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    with cli_progress(args) as progress:
        manifest = build_suite(args.count, args.out, seed=args.seed, kinds=kinds, preview=args.preview,
                               meshes=args.meshes, progress=progress, spacing=_one(args.spacing),
                               fov_mm=_one(args.fov))
    if not getattr(args, "quiet", False):
        print_json({"manifest": str(manifest), "count": args.count})
    return 0


def run_head(args: argparse.Namespace) -> int:
    from ..errors import InvalidInputError
    from ..phantom.heads import generate_head_case, write_head_case

    if len(args.offset) != 3:
        raise InvalidInputError(f"--offset needs three values R,A,S in mm, got {args.offset}.")
    with cli_progress(args) as progress:
        progress.update(0.0, "Rendering the head")
        case = generate_head_case(args.kind, args.seed, spacing=_one(args.spacing), fov_mm=_one(args.fov),
                                  offset_mm=args.offset)
        folder = write_head_case(case, args.out)
        progress.update(1.0, "Written")
    if not getattr(args, "quiet", False):
        print_json({"case": case.case_id, "folder": str(folder), "ears": sorted(case.ears),
                    "shape_ijk": case.info["shape_ijk"]})
    return 0

"""``cochlea evaluate landmarks``: landmark errors, patch F1 and timings over a folder of annotated volumes.

Why a command: "is it accurate enough on my scans?" must be answerable without writing code, and the
answer must be the same tables whoever asks. Several ``--model`` and ``--mode`` values are evaluated
on the same cases with the same seeds, and ``--include`` adds the runs of an earlier evaluation
folder, so methods and models can be compared side by side in one report.

Output folder: ``landmark_errors.csv``, ``patch_predictions.csv``, ``patch_f1.csv``, ``summary.json``,
``report.md`` and ``landmark_errors.png`` (see ``CochleaLandmarksLib.evaluation_report``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InvalidInputError
from ._common import add_registry_argument, cli_progress, load_registry, positive_int, print_json

#: Kept in step with ``CochleaLandmarksLib.landmark_detection`` (checked by the tests); duplicated so that
#: ``cochlea --help`` does not import the landmark package.
METHOD_CHOICES = ("smicnet",)
MODE_CHOICES = ("fast", "parity")


def _offset_range(text: str) -> tuple[float, float]:
    try:
        values = [float(v) for v in text.replace(":", ",").split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX in mm (for example 1,5), got {text!r}") from exc
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not 0.0 <= values[0] <= values[1]:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX in mm with 0 <= MIN <= MAX (for example 1,5), got {text!r}")
    return values[0], values[1]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` with its ``landmarks`` action."""
    parser = subparsers.add_parser("evaluate", help="measure accuracy and speed on annotated volumes",
                                   description="Evaluate a method against ground truth.")
    what = parser.add_subparsers(dest="what", metavar="WHAT")
    what.required = True
    p = what.add_parser(
        "landmarks", help="landmark errors (mm), patch F1 and timings over a folder of annotated volumes",
        description="Detect the landmarks in every volume of --data that has a landmark file (X.nrrd with "
                    "X_landmarks.fcsv, optional X_seed.fcsv) and write errors, statistics, patch F1, a Markdown "
                    "report and a plot. Repeat --model and --mode to compare several runs on the same cases.")
    p.add_argument("--data", type=Path, required=True, help="folder of annotated volumes (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="output folder for the CSV, JSON, Markdown and PNG files")
    p.add_argument("--method", choices=METHOD_CHOICES, default="smicnet", help="detection method (default: smicnet)")
    p.add_argument("--model", action="append", default=None, metavar="ID|FILE",
                   help="model id or weights file; repeat to compare (default: the method's bundled model)")
    p.add_argument("--mode", action="append", choices=MODE_CHOICES, default=None,
                   help="fast or parity; repeat to run both (default: fast)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N", help="PyTorch CPU threads")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N", help="evaluate only the first N cases")
    p.add_argument("--seed-offset-mm", type=_offset_range, default=(1.0, 5.0), metavar="MIN,MAX",
                   help="for cases without a seed file: distance of the simulated click from the landmark "
                        "centroid, drawn uniformly (default: 1,5)")
    p.add_argument("--seed", type=int, default=0, help="random seed for simulated clicks and background points")
    p.add_argument("--roi-mm", type=float, default=None, metavar="MM",
                   help="fast mode: edge of the searched cube (default: the method's)")
    p.add_argument("--background-points", type=int, default=30, metavar="N",
                   help="background patches per case for the patch F1 (0: no patch F1; default: 30)")
    p.add_argument("--failure-mm", type=float, default=3.0, metavar="MM",
                   help="an error above this (or a missing landmark) is a failure (default: 3)")
    p.add_argument("--include", action="append", type=Path, default=[], metavar="DIR",
                   help="output folder of an earlier evaluation whose runs are added to the report")
    p.add_argument("--no-plot", action="store_true", help="do not draw landmark_errors.png")
    add_registry_argument(p)
    p.set_defaults(handler=run_landmarks)


def run_landmarks(args: argparse.Namespace) -> int:
    """Validate everything, load every model, evaluate, write the report and print where it is."""
    from CochleaLandmarksLib.evaluation_report import json_ready, load_evaluation, merge_results, write_report
    from CochleaLandmarksLib.landmark_dataset import find_landmark_cases
    from CochleaLandmarksLib.landmark_detection import DEFAULT_MODELS, METHODS, MODES
    from CochleaLandmarksLib.landmark_evaluation import RunSpec, evaluate_landmarks, run_label, select_cases

    if args.method not in METHODS:
        raise InvalidInputError(f"Unknown method '{args.method}'. Choose one of: {', '.join(METHODS)}.")
    modes = list(dict.fromkeys(args.mode or ["fast"]))
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise InvalidInputError(f"Unknown mode(s) {', '.join(bad)}. Choose from: {', '.join(MODES)}.")
    if args.background_points < 0:
        raise InvalidInputError(f"--background-points must be 0 or more, got {args.background_points}.")
    if args.out.exists() and not args.out.is_dir():
        raise InvalidInputError(f"The output folder {args.out} is a file; choose a folder.")
    earlier = [load_evaluation(folder) for folder in args.include]  # fail on a bad folder before any work
    cases = select_cases(find_landmark_cases(args.data), args.limit)
    models = list(dict.fromkeys(args.model or [DEFAULT_MODELS[args.method]]))
    runs = [RunSpec(args.method, model, mode) for model in models for mode in modes]
    included = {r.run for res in earlier for r in res.errors}
    clash = sorted(included & {run_label(r.method, r.model, r.mode) for r in runs})
    if clash:
        raise InvalidInputError(f"The run(s) {', '.join(clash)} are already in the --include folder(s); evaluate "
                                "other models or modes, or leave that folder out.")
    if args.threads:
        from ..devices import require_torch

        require_torch().set_num_threads(args.threads)
    registry = load_registry(args) if getattr(args, "registry", None) is not None else None
    with cli_progress(args) as progress:
        result = evaluate_landmarks(cases, runs, device=args.device, registry=registry, roi_mm=args.roi_mm,
                                    seed_offset_mm=args.seed_offset_mm, seed=args.seed,
                                    background_count=args.background_points, failure_mm=args.failure_mm,
                                    progress=progress)
    result.settings["data"] = str(args.data)
    if earlier:
        result = merge_results([result, *earlier])
    written = write_report(result, args.out, plot=not args.no_plot)
    summary = result.summary()
    if not getattr(args, "quiet", False):
        print_json(json_ready({
            "out": str(args.out), "files": {k: p.name for k, p in written.items()}, "cases": len(cases),
            "runs": [{"run": r["run"], "failures": r["landmarks"]["all"]["failures"],
                      "median_mm": r["landmarks"]["all"]["median_mm"], "p95_mm": r["landmarks"]["all"]["p95_mm"],
                      "median_detect_s": r["timing"]["median_s"]} for r in summary["runs"]],
        }))
    return 0

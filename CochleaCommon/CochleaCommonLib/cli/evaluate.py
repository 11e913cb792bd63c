"""``cochlea evaluate landmarks``: landmark errors, patch F1 and timings over a folder of annotated volumes.

Why a command: "is it accurate enough on my scans?" must be answerable without writing code, and the
answer must be the same tables whoever asks. Several ``--method``, ``--model`` and ``--mode`` values are
evaluated on the same cases with the same seeds, and ``--include`` adds the runs of an earlier
evaluation folder, so methods and models can be compared side by side in one report.

Output folder: ``landmark_errors.csv``, ``patch_predictions.csv``, ``patch_f1.csv``, ``summary.json``,
``report.md`` and ``landmark_errors.png`` (see ``CochleaLandmarksLib.evaluation_report``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from ._common import add_registry_argument, cli_progress, load_registry, positive_int, print_json
from .landmarks import METHOD_CHOICES, MODE_CHOICES

__all__ = ["METHOD_CHOICES", "MODE_CHOICES", "register", "run_landmarks", "runs_from_arguments"]


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
                    "report and a plot. Repeat --method, --model and --mode to compare several runs on the same "
                    "cases, e.g. --method smicnet --method detector.")
    p.add_argument("--data", type=Path, required=True, help="folder of annotated volumes (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="output folder for the CSV, JSON, Markdown and PNG files")
    p.add_argument("--method", action="append", choices=METHOD_CHOICES, default=None, metavar="METHOD",
                   help="detection method: %(choices)s; repeat to compare methods (default: smicnet)")
    p.add_argument("--model", action="append", default=None, metavar="[METHOD=]ID|FILE",
                   help="model id or weights file; repeat to compare (default: each method's bundled model). With "
                        "several --method, write METHOD=ID (e.g. detector=detector-phantom)")
    p.add_argument("--mode", action="append", choices=MODE_CHOICES, default=None, metavar="MODE",
                   help="fast or parity; repeat to run both (default: fast; the 3D detector runs fast only)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N", help="PyTorch CPU threads")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N", help="evaluate only the first N cases")
    p.add_argument("--seed-offset-mm", type=_offset_range, default=(1.0, 5.0), metavar="MIN,MAX",
                   help="for cases without a seed file: distance of the simulated click from the landmark "
                        "centroid, drawn uniformly (default: 1,5)")
    p.add_argument("--seed", type=int, default=0, help="random seed for simulated clicks and background points")
    p.add_argument("--roi-mm", type=float, default=None, metavar="MM",
                   help="fast mode: edge of the search box, whose inscribed ball is searched (default: the method's)")
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
    from CochleaLandmarksLib.landmark_evaluation import evaluate_landmarks, run_label, select_cases

    runs, notes = runs_from_arguments(args.method, args.model, args.mode)
    if args.background_points < 0:
        raise InvalidInputError(f"--background-points must be 0 or more, got {args.background_points}.")
    if args.out.exists() and not args.out.is_dir():
        raise InvalidInputError(f"The output folder {args.out} is a file; choose a folder.")
    earlier = [load_evaluation(folder) for folder in args.include]  # fail on a bad folder before any work
    cases = select_cases(find_landmark_cases(args.data), args.limit)
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
    result.warnings[:0] = notes
    for note in notes:
        print(f"cochlea: note: {note}", file=sys.stderr)
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


def runs_from_arguments(methods: list[str] | None, models: list[str] | None, modes: list[str] | None
                        ) -> tuple[list[Any], list[str]]:
    """The runs (method x model x mode) that ``--method``, ``--model`` and ``--mode`` ask for, and notes on what
    was left out (the 3D detector has no parity mode). Clear errors for unknown names and ambiguous models.

    ``--model`` is ``ID|FILE`` (one method) or ``METHOD=ID|FILE`` (any number of methods; a prefix that is
    not a method name is part of the file name). A method without a model of its own runs its default model.
    """
    from CochleaLandmarksLib.landmark_detection import DEFAULT_MODELS, METHODS, MODES
    from CochleaLandmarksLib.landmark_evaluation import RunSpec

    chosen = list(dict.fromkeys(methods or ["smicnet"]))
    bad = [m for m in chosen if m not in METHODS]
    if bad:
        raise InvalidInputError(f"Unknown method(s) {', '.join(bad)}. Choose from: {', '.join(METHODS)}.")
    wanted_modes = list(dict.fromkeys(modes or ["fast"]))
    bad = [m for m in wanted_modes if m not in MODES]
    if bad:
        raise InvalidInputError(f"Unknown mode(s) {', '.join(bad)}. Choose from: {', '.join(MODES)}.")
    per_method: dict[str, list[str]] = {m: [] for m in chosen}
    for text in models or []:
        prefix, sep, rest = text.partition("=")
        if sep and prefix in METHODS:
            if prefix not in per_method:
                raise InvalidInputError(f"--model {text} names the method '{prefix}', which is not evaluated; add "
                                        f"--method {prefix}, or drop that --model.")
            if not rest:
                raise InvalidInputError(f"--model {text} names no model after '='.")
            per_method[prefix].append(rest)
        elif len(chosen) == 1:
            per_method[chosen[0]].append(text)
        else:
            raise InvalidInputError(f"--model {text} is ambiguous with several methods ({', '.join(chosen)}): write "
                                    f"it as METHOD=ID, e.g. --model {chosen[-1]}={text}.")
    runs, notes = [], []
    for method in chosen:
        method_modes = wanted_modes
        if method == "detector":
            method_modes = [m for m in wanted_modes if m == "fast"]
            skipped = [m for m in wanted_modes if m != "fast"]
            if skipped and not method_modes:
                raise InvalidInputError(f"The 3D detector has no {' or '.join(skipped)} mode (parity reproduces "
                                        "SMICNet's published sweep); add --mode fast to evaluate it.")
            if skipped:
                notes.append(f"The 3D detector has no {' or '.join(skipped)} mode; it ran in fast mode only.")
        for model in dict.fromkeys(per_method[method] or [DEFAULT_MODELS[method]]):
            runs.extend(RunSpec(method, model, mode) for mode in method_modes)
    return runs, notes

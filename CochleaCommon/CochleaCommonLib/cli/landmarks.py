"""``cochlea landmarks``: find Helicotrema, Modiolus base and Round Window, files in and out.

Why a stable contract: benchmarks and batch users script this command, so its arguments and the
files it writes (``landmarks.fcsv`` in LPS, ``landmarks.mrk.json``, ``probability_<name>.nrrd`` on the
input's voxel lattice, ``report.json``) do not change without a major version. Every method writes
the same files. Without ``--seed`` (3D detector only) each cochlea found gets its own folder
``OUT/right``, ``OUT/left`` (``OUT/ear-1`` when the side is unknown) with those files, and
``OUT/ears.json``, written last, lists them: a folder without a current ``ears.json`` entry is not a result.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ._common import add_registry_argument, cli_progress, load_registry

#: File of the seed-free summary, written last into the output folder.
EARS_JSON = "ears.json"


class LazyChoices(Sequence):
    """argparse ``choices`` read from a core module only when needed (parsing the option, help, errors).

    Why: the method and mode names are defined once, in ``CochleaLandmarksLib.landmark_detection``, but
    importing it (numpy, SimpleITK ...) at parser build time would slow every ``cochlea`` command down.
    Give the option a ``metavar``: argparse then never iterates the choices while building the parser.
    """

    def __init__(self, module: str, name: str) -> None:
        self._module, self._name = module, name

    def _values(self) -> tuple[str, ...]:
        return tuple(getattr(importlib.import_module(self._module), self._name))

    def __getitem__(self, index):  # type: ignore[override]
        return self._values()[index]

    def __len__(self) -> int:
        return len(self._values())

    def __iter__(self) -> Iterator[str]:
        return iter(self._values())

    def __contains__(self, value: object) -> bool:
        return value in self._values()

    def __eq__(self, other: object) -> bool:
        return self._values() == (tuple(other) if isinstance(other, (tuple, list, LazyChoices)) else other)

    def __hash__(self) -> int:
        return hash((self._module, self._name))

    def __repr__(self) -> str:
        return repr(self._values())


#: The landmark methods and modes of ``CochleaLandmarksLib.landmark_detection`` (``METHODS``, ``MODES``).
METHOD_CHOICES = LazyChoices("CochleaLandmarksLib.landmark_detection", "METHODS")
MODE_CHOICES = LazyChoices("CochleaLandmarksLib.landmark_detection", "MODES")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``landmarks`` subcommand."""
    p = subparsers.add_parser(
        "landmarks", help="find the cochlear landmarks (around a seed point, or anywhere with the 3D detector)",
        description="Find the helicotrema, the modiolus base and the round-window centre in a CT or cone-beam CT "
                    "from one rough seed point on the cochlea. Writes OUT/landmarks.fcsv (LPS), "
                    "OUT/landmarks.mrk.json, OUT/probability_<landmark>.nrrd and OUT/report.json. With "
                    "--method detector the seed may be left out: every cochlea in the volume is found and each "
                    "ear's files go into OUT/right, OUT/left (OUT/ear-1 when the side is unknown), listed "
                    "by OUT/ears.json.")
    p.add_argument("volume", type=Path, help="CT or CBCT volume (.nrrd, .nii, .nii.gz, .mha, or a DICOM folder)")
    p.add_argument("--seed", default=None,
                   help="seed point: a .fcsv or .mrk.json file (its first point) or R,A,S in mm (RAS); required "
                        "for smicnet, optional for detector (without it, every cochlea in the volume is searched)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--method", choices=METHOD_CHOICES, default="smicnet", metavar="METHOD",
                   help="landmark method: %(choices)s (default: smicnet)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--model", default=None, metavar="ID",
                         help="registry model id (default: the bundled model of the method; see `cochlea models list`)")
    weights.add_argument("--weights", type=Path, default=None, metavar="FILE",
                         help="weight file instead of a registry model (.pt, or the authors' Keras .h5)")
    p.add_argument("--mode", choices=MODE_CHOICES, default="fast", metavar="MODE",
                   help="fast (default): coarse-to-fine, centring corrected, 8 views averaged near the landmarks; "
                        "parity: the authors' exact procedure (SMICNet only)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--roi-mm", type=float, default=None, metavar="MM",
                   help="SMICNet fast mode: edge of the search box; everything within half of it from the seed "
                        "is searched (default: 21 mm, reaches the round window from a click 5 mm off)")
    p.add_argument("--download", action="store_true",
                   help="allow downloading a published model that is not on this computer yet (checksummed)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: all cores)")
    add_registry_argument(p)
    p.set_defaults(handler=run)


def parse_seed(text: str):
    """RAS seed from ``R,A,S`` or the first point of a markups file; clear errors for anything else."""
    import numpy as np

    from ..errors import InputFileError, InvalidInputError

    candidate = Path(text)
    lowered = text.lower()
    if lowered.endswith((".fcsv", ".json", ".mrk.json")) or candidate.exists():
        if not candidate.is_file():
            raise InputFileError(f"The seed file {candidate} does not exist.")
        from ..markups_io import read_markups

        points = read_markups(candidate)
        if len(points) == 0:
            raise InvalidInputError(f"The seed file {candidate} has no point; place one point on the cochlea.")
        return np.asarray(points.positions_ras[0], dtype=np.float64)
    parts = [p for p in text.replace(" ", ",").split(",") if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3:
        raise InvalidInputError(
            f"--seed must be a .fcsv/.mrk.json file or three numbers R,A,S in mm (RAS), got {text!r}.")
    return np.asarray(values, dtype=np.float64)


def check_method_options(args: argparse.Namespace) -> None:
    """Refuse combinations the chosen method cannot run, before any file is read."""
    from ..errors import InvalidInputError

    if args.method == "detector" and args.mode != "fast":
        raise InvalidInputError(f"The 3D detector has no {args.mode} mode (parity reproduces SMICNet's published "
                                "sweep); leave --mode out, or use --method smicnet.")
    if args.seed is None and args.method != "detector":
        raise InvalidInputError(f"The {args.method} method needs a seed point on the cochlea: give --seed R,A,S or a "
                                ".fcsv/.mrk.json file, or use --method detector to find the cochleae without one.")


def run(args: argparse.Namespace) -> int:
    """Detect the landmarks and write the output files; status 0 on success."""
    from CochleaLandmarksLib.landmark_detection import load_detector, validate_image, validate_seed

    from ..devices import require_torch
    from ..image_io import read_image

    check_method_options(args)
    seed = parse_seed(args.seed) if args.seed is not None else None
    image = read_image(args.volume)
    validate_image(image)  # before the model is loaded: bad input is reported first and fast
    if seed is not None:
        validate_seed(image, seed)
    torch = require_torch()
    if args.threads:
        torch.set_num_threads(int(args.threads))
    # No --registry: None lets the core also find models trained here (``cochlea train ... --register``) by id.
    registry = load_registry(args) if args.registry is not None else None
    model = str(args.weights) if args.weights is not None else args.model
    with cli_progress(args) as progress:  # the bar is closed before anything is printed on stdout
        # One volume, then the process ends: no CUDA set-up that only repeated runs win back.
        detector = load_detector(args.method, model, device=args.device, registry=registry,
                                 allow_download=args.download, progress=progress.sub(0.0, 0.05), one_shot=True)
        if seed is None:
            from CochleaLandmarksLib.landmark_detection import detect_cochleae

            if args.roi_mm is not None:
                print(f"cochlea: warning: --roi-mm {args.roi_mm:g} applies to SMICNet only; the 3D detector "
                      "searches its own fixed cubes, so it was ignored.", file=sys.stderr)
            results = detect_cochleae(image, detector=detector, output_maps=True, progress=progress.sub(0.05, 1.0))
        else:
            from CochleaLandmarksLib.landmark_detection import detect_landmarks

            result = detect_landmarks(image, seed, method=args.method, detector=detector, mode=args.mode,
                                      roi_mm=args.roi_mm, progress=progress.sub(0.05, 1.0))
    if seed is None:
        return _write_seed_free(args, results, detector)
    return _write_seeded(args, result, detector)


def _write_seeded(args: argparse.Namespace, result: Any, detector: Any) -> int:
    from CochleaLandmarksLib.landmark_detection import write_landmark_outputs

    result.timings["load_model"] = detector.load_seconds
    result.timings["total"] += detector.load_seconds
    paths = write_landmark_outputs(result, args.out, name=f"{_volume_name(args.volume)} landmarks")
    _print_warnings(result.warnings)
    if not args.quiet:
        _print_landmarks(result)
        scored = f"{result.patches} patches " if result.method == "smicnet" else ""
        print(f"{scored}on {result.device} in {result.timings['total']:.2f} s; wrote "
              f"{', '.join(p.name for p in paths.values())} to {args.out}")
    return 0


def _write_seed_free(args: argparse.Namespace, results: list[Any], detector: Any) -> int:
    """One folder per ear, then ``ears.json`` (``detect_cochleae`` raised, and nothing was written, if none)."""
    from CochleaLandmarksLib.landmark_detection import ear_name, write_landmark_outputs

    from ..atomic import atomic_output

    base = f"{_volume_name(args.volume)} landmarks"
    ears: list[dict[str, Any]] = []
    t = time.perf_counter()
    for n, result in enumerate(results, start=1):
        result.timings["load_model"] = detector.load_seconds
        folder = result.side or f"ear-{n}"
        paths = write_landmark_outputs(result, args.out / folder, name=ear_name(result, base=base))
        report = result.report()
        ears.append({
            "side": result.side, "folder": folder, "name": ear_name(result, base=base),
            "found": list(result.found_names),
            "confidences": {lm["label"]: lm["confidence"] for lm in report["landmarks"]},
            "positions_ras": {lm["label"]: lm.get("position_ras") for lm in report["landmarks"]},
            "timings_s": report["timings_s"], "warnings": report["warnings"],
            "files": {kind: f"{folder}/{path.name}" for kind, path in paths.items()},
        })
    timings = {"load_model": round(float(detector.load_seconds), 4),
               "seed_free_total": round(float(results[0].timings.get("seed_free_total", 0.0)), 4),
               "write": round(time.perf_counter() - t, 4)}
    summary = {"volume": str(args.volume), "method": "detector", "model": detector.model_id,
               "device": detector.device, "seed_free": True, "sides": [e["side"] for e in ears],
               "folders": [e["folder"] for e in ears], "ears": ears, "timings_s": timings}
    with atomic_output(args.out / EARS_JSON) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    _print_warnings(list(dict.fromkeys(w for result in results for w in result.warnings)))
    if not args.quiet:
        for ear, result in zip(ears, results):
            print(f"{ear['name']} ({ear['folder']}/):")
            _print_landmarks(result)
        total = timings["load_model"] + timings["seed_free_total"]
        print(f"{len(results)} cochlea(e) found on {detector.device} in {total:.2f} s; wrote "
              f"{', '.join(e['folder'] + '/' for e in ears)} and {EARS_JSON} to {args.out}")
    return 0


def _print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"cochlea: warning: {warning}", file=sys.stderr)


def _print_landmarks(result: Any) -> None:
    for landmark in result.report()["landmarks"]:
        if landmark["found"]:
            r, a, s = landmark["position_ras"]
            print(f"{landmark['label']:<14} R {r:8.2f}  A {a:8.2f}  S {s:8.2f}  "
                  f"confidence {landmark['confidence']:.3f}")
        else:
            print(f"{landmark['label']:<14} not found: {landmark['reason']}")


def _volume_name(path: Path) -> str:
    from CochleaLandmarksLib.landmark_dataset import file_stem

    return file_stem(path) if path.is_file() else path.name  # a DICOM folder keeps its name

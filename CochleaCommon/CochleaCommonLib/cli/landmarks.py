"""``cochlea landmarks``: find Helicotrema, Modiolus base and Round Window from one seed, files in and out.

Why a stable contract: benchmarks and batch users script this command, so its arguments and the
files it writes (``landmarks.fcsv`` in LPS, ``landmarks.mrk.json``, ``probability_<name>.nrrd`` on the
input's voxel lattice, ``report.json``) do not change without a major version.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import add_registry_argument, cli_progress, load_registry


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``landmarks`` subcommand."""
    p = subparsers.add_parser(
        "landmarks", help="find the cochlear landmarks around a seed point",
        description="Find the helicotrema, the modiolus base and the round-window centre in a CT or cone-beam CT "
                    "from one rough seed point on the cochlea. Writes OUT/landmarks.fcsv (LPS), "
                    "OUT/landmarks.mrk.json, OUT/probability_<landmark>.nrrd and OUT/report.json.")
    p.add_argument("volume", type=Path, help="CT or CBCT volume (.nrrd, .nii, .nii.gz, .mha, or a DICOM folder)")
    p.add_argument("--seed", required=True,
                   help="seed point: a .fcsv or .mrk.json file (its first point) or R,A,S in mm (RAS)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--method", default="smicnet", help="detector (default: smicnet)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--model", default=None, metavar="ID",
                         help="registry model id (default: the bundled model of the method; see `cochlea models list`)")
    weights.add_argument("--weights", type=Path, default=None, metavar="FILE",
                         help="weight file instead of a registry model (.pt, or the authors' Keras .h5)")
    p.add_argument("--mode", choices=("fast", "parity"), default="fast",
                   help="fast (default): coarse-to-fine, centring corrected; parity: the authors' exact procedure")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--roi-mm", type=float, default=None, metavar="MM",
                   help="edge of the searched cube in fast mode (default: 21 mm, reaches the round window from a "
                        "click 5 mm off)")
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


def run(args: argparse.Namespace) -> int:
    """Detect the landmarks and write the output files; status 0 on success."""
    from CochleaLandmarksLib.landmark_detection import (
        detect_landmarks,
        load_detector,
        validate_image,
        validate_seed,
        write_landmark_outputs,
    )

    from ..devices import require_torch
    from ..image_io import read_image

    seed = parse_seed(args.seed)
    image = read_image(args.volume)
    validate_image(image)  # before the model is loaded: bad input is reported first and fast
    validate_seed(image, seed)
    torch = require_torch()
    if args.threads:
        torch.set_num_threads(int(args.threads))
    registry = load_registry(args)
    model = str(args.weights) if args.weights is not None else args.model
    with cli_progress(args) as progress:
        detector = load_detector(args.method, model, device=args.device, registry=registry,
                                 allow_download=args.download, progress=progress.sub(0.0, 0.05))
        result = detect_landmarks(image, seed, method=args.method, detector=detector, mode=args.mode,
                                  roi_mm=args.roi_mm, progress=progress.sub(0.05, 1.0))
        result.timings["load_model"] = detector.load_seconds
        result.timings["total"] += detector.load_seconds
    name = f"{_volume_name(args.volume)} landmarks"
    paths = write_landmark_outputs(result, args.out, name=name)
    for warning in result.warnings:
        print(f"cochlea: warning: {warning}", file=sys.stderr)
    if not args.quiet:
        for landmark in result.report()["landmarks"]:
            if landmark["found"]:
                r, a, s = landmark["position_ras"]
                print(f"{landmark['label']:<14} R {r:8.2f}  A {a:8.2f}  S {s:8.2f}  "
                      f"confidence {landmark['confidence']:.3f}")
            else:
                print(f"{landmark['label']:<14} not found: {landmark['reason']}")
        print(f"{result.patches} patches on {result.device} in {result.timings['total']:.2f} s; wrote "
              f"{', '.join(p.name for p in paths.values())} to {args.out}")
    return 0


def _volume_name(path: Path) -> str:
    from CochleaLandmarksLib.landmark_dataset import file_stem

    return file_stem(path) if path.is_file() else path.name  # a DICOM folder keeps its name

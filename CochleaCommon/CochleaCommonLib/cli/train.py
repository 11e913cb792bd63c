"""``cochlea train smicnet`` and ``cochlea train detector``: train a landmark model from annotated volumes.

Why a nested subcommand: each trainable model gets its own options while ``cochlea train --help``
lists them all. The heavy imports (torch, the landmark package) happen inside the ``run_*``
functions, so ``cochlea --help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..errors import MissingDependencyError
from ._common import cli_progress, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and its model subcommands."""
    parser = subparsers.add_parser("train", help="train a model on your annotated volumes",
                                   description="Train one of CochleaToolkit's models on annotated volumes.")
    models = parser.add_subparsers(dest="model", metavar="MODEL")
    models.required = True

    p = models.add_parser(
        "smicnet", help="the SMICNet landmark patch classifier (Helicotrema, Modiolus base, Round Window)",
        description="Train SMICNet (81x81 patches at 0.3 mm, 4 classes) from a folder of volumes X.nrrd with "
                    "landmark files X_landmarks.fcsv (points labelled Helicotrema, Modiolus base, Round Window). "
                    "Validation holds out whole cases. Writes MODEL_ID.pt, MODEL_ID.json (registry entry), "
                    "history.csv and training_curves.png into --out.")
    p.add_argument("--data", type=Path, required=True, help="folder of annotated volumes (sub-folders are searched)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--model-id", default="smicnet-custom", help="model id (lower case, digits, . _ -; "
                                                               "default: smicnet-custom)")
    p.add_argument("--model-version", dest="model_version", default="1.0", help="model version (default: 1.0)")
    p.add_argument("--epochs", type=positive_int, default=60, help="maximum epochs (default: 60)")
    p.add_argument("--steps-per-epoch", type=positive_int, default=200, help="batches per epoch (default: 200)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="patches per batch (default: 128)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: 0.001)")
    p.add_argument("--optimizer", choices=("adam", "rmsprop"), default="adam", help="optimizer (default: adam)")
    p.add_argument("--schedule", choices=("cosine", "plateau"), default="cosine",
                   help="learning-rate schedule: warm-up + cosine, or reduce by 0.8 on plateau (default: cosine)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="fraction of the cases held out for validation (default: 0.2)")
    p.add_argument("--val-samples", type=positive_int, default=2048,
                   help="size of the fixed validation patch set (default: 2048)")
    p.add_argument("--patience", type=positive_int, default=12,
                   help="stop after this many epochs without a better validation loss (default: 12)")
    p.add_argument("--background-fraction", type=float, default=0.5,
                   help="share of background patches in each batch (default: 0.5)")
    p.add_argument("--background-extent", type=float, default=16.0, metavar="MM",
                   help="background patches are centred up to this far from the landmark centroid; cover the "
                        "searched box plus the click error (default: 16)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--init", default=None, metavar="ID|FILE",
                   help="start from these weights (a registry id such as smicnet-published-5, or a file)")
    p.add_argument("--mine-from", default=None, metavar="ID|FILE",
                   help="hard-negative mining: sweep the training cases with this SMICNet model and use the places "
                        "it scores a landmark wrongly (> 0.9 mm away) as background patches (often with --init of "
                        "the same model)")
    p.add_argument("--mined-fraction", type=float, default=None, metavar="F",
                   help="share of the background patches drawn from the mined points (default with --mine-from: "
                        "0.2, taken from the uniform share)")
    p.add_argument("--mine-min-distance", type=float, default=0.9, metavar="MM",
                   help="with --mine-from: a detection farther than this from its landmark is a mistake (default: "
                        "0.9; larger keeps only gross mistakes such as a neighbouring turn)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for PyTorch")
    p.add_argument("--register", action="store_true",
                   help="also install the model in the per-user cache and the user registry")
    p.set_defaults(handler=run_smicnet)
    _register_detector(models)


def _mined_fraction(args: argparse.Namespace) -> float:
    """The mined share of the background: as given, 0.2 by default with --mine-from, else 0."""
    if args.mined_fraction is not None:
        return float(args.mined_fraction)
    return 0.2 if args.mine_from else 0.0


def _stages(text: str) -> tuple[str, ...]:
    stages = tuple(dict.fromkeys(s.strip().lower() for s in text.split(",") if s.strip()))
    if not stages:
        raise argparse.ArgumentTypeError(f"expected passes such as coarse,fine or coarse,fine,global, got {text!r}")
    return stages


def _register_detector(models: argparse._SubParsersAction) -> None:
    p = models.add_parser(
        "detector", help="the 3D landmark detector (coarse and fine passes; a global pass for seed-free search)",
        description="Train the 3D heatmap-and-displacement detector. The coarse (30 mm cube at 0.75 mm) and fine "
                    "(8 mm at 0.25 mm) passes learn from --data, a folder of volumes X.nrrd with landmark files "
                    "X_landmarks.fcsv (Helicotrema, Modiolus base, Round Window). The optional global pass, which "
                    "finds the cochleae of a head CT without a seed, learns from --heads: head volumes X.nrrd with "
                    "X_left_landmarks.fcsv and/or X_right_landmarks.fcsv (every ear shown annotated; `cochlea "
                    "phantom-head` makes one). With --base, the passes of an existing detector that are not "
                    "trained here are kept (e.g. --base detector-phantom --heads DIR adds your own global pass). "
                    "Validation holds out whole cases. Writes MODEL_ID.pt, MODEL_ID.json (registry entry) and "
                    "history.csv into --out.")
    p.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help="folder of annotated volumes for the coarse and fine passes (sub-folders are searched)")
    p.add_argument("--heads", type=Path, default=None, metavar="DIR",
                   help="folder of annotated head volumes for the global pass (adds 'global' to the default passes)")
    p.add_argument("--base", default=None, metavar="ID|FILE",
                   help="existing detector (registry id or .pt file) whose passes not trained here are kept")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--model-id", default="detector-custom", help="model id (lower case, digits, . _ -; "
                                                                 "default: detector-custom)")
    p.add_argument("--model-version", dest="model_version", default="1.0", help="model version (default: 1.0)")
    p.add_argument("--stages", type=_stages, default=None, metavar="PASSES",
                   help="passes to train, comma-separated: coarse, fine, global (default: coarse,fine, plus "
                        "global with --heads; with --base and --heads: global only)")
    p.add_argument("--steps-coarse", type=positive_int, default=1500, metavar="N",
                   help="training steps of the coarse pass (default: 1500)")
    p.add_argument("--steps-fine", type=positive_int, default=1500, metavar="N",
                   help="training steps of the fine pass (default: 1500)")
    p.add_argument("--steps-global", type=positive_int, default=800, metavar="N",
                   help="training steps of the global pass (default: 800)")
    p.add_argument("--batch-size", type=positive_int, default=6, help="cubes per batch (default: 6)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: 0.002)")
    p.add_argument("--val-fraction", type=float, default=0.15,
                   help="fraction of the cases held out for validation (default: 0.15)")
    p.add_argument("--val-cubes", type=positive_int, default=48,
                   help="size of the fixed validation cube set of each pass (default: 48)")
    p.add_argument("--eval-every", type=positive_int, default=100, metavar="N",
                   help="validate (and keep the best weights) every N steps (default: 100)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for PyTorch")
    p.add_argument("--description", default="", help="description stored in the registry entry (default: the "
                                                     "passes and their validation figures)")
    p.add_argument("--register", action="store_true",
                   help="also install the model in the per-user cache and the user registry")
    p.set_defaults(handler=run_detector)


def run_smicnet(args: argparse.Namespace) -> int:
    """Train, then print where the outputs are and how the best epoch did."""
    try:
        from CochleaLandmarksLib.smicnet_augment import AugmentConfig
        from CochleaLandmarksLib.smicnet_model import CLASS_NAMES
        from CochleaLandmarksLib.smicnet_training import SmicnetTrainingConfig, train_smicnet
    except ImportError as exc:
        raise MissingDependencyError(f"The CochleaLandmarks package cannot be imported ({exc}); put CochleaLandmarks "
                                     "on PYTHONPATH or install CochleaToolkit with pip.") from exc
    from ..devices import require_torch

    require_torch()
    config = SmicnetTrainingConfig(
        model_id=args.model_id, version=args.model_version, epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
        schedule=args.schedule, val_fraction=args.val_fraction, val_samples=args.val_samples,
        patience=args.patience, background_extent_mm=args.background_extent, seed=args.seed, device=args.device,
        init=args.init, threads=args.threads, mine_from=args.mine_from, mine_min_distance_mm=args.mine_min_distance,
        augment=AugmentConfig(background_fraction=args.background_fraction,
                              mined_fraction=_mined_fraction(args)))
    config.validate()
    with cli_progress(args) as progress:
        result = train_smicnet(args.data, args.out, config, progress=progress, register=args.register)
    m = result.val_metrics
    stop = "stopped early" if result.stopped_early else "all epochs"
    print(f"model:      {result.model_path}")
    print(f"entry:      {result.entry_path} (sha256 {result.entry.sha256[:16]}...)")
    print(f"history:    {result.history_path}" + (f", curves {result.curves_path}" if result.curves_path else ""))
    print(f"cases:      {len(result.train_cases)} training, {len(result.val_cases)} validation; "
          f"validation on {result.validation.split(':')[0]}")
    print(f"epochs:     {result.epochs_run} run ({stop}), best {result.best_epoch}; device {result.device}")
    print(f"validation: loss {m['val_loss']:.4f}, accuracy {m['accuracy']:.4f}, macro F1 {m['f1_macro']:.4f}")
    print("F1:         " + ", ".join(f"{n} {f:.3f}" for n, f in zip(CLASS_NAMES, m["f1"])))
    if result.registry_path is not None:
        print(f"registered: '{result.entry.id}' in {result.registry_path} (use --registry {result.registry_path})")
    sys.stdout.flush()
    return 0


def _check_detector_args(args: argparse.Namespace) -> tuple[str, ...]:
    """The passes to train; :class:`InvalidInputError` for anything that would fail later (before any work)."""
    from ..errors import InvalidInputError
    from ..model_registry import _ID, _VERSION

    if args.stages:
        stages = args.stages
    elif args.heads is not None:
        stages = ("global",) if args.base is not None else ("coarse", "fine", "global")
    else:
        stages = ("coarse", "fine")
    known = ("coarse", "fine", "global")
    unknown = [s for s in stages if s not in known]
    if unknown:
        raise InvalidInputError(f"Unknown detector pass(es) {', '.join(unknown)} in --stages; choose from "
                                f"{', '.join(known)}.")
    if args.base is None and not {"coarse", "fine"} <= set(stages):
        raise InvalidInputError("A detector needs both the coarse and the fine pass (they work as a pair): "
                                "--stages must include coarse,fine, or give --base with a detector that has them.")
    if args.data is None and ({"coarse", "fine"} & set(stages)):
        raise InvalidInputError("The coarse and fine passes learn from annotated volumes: give --data DIR with "
                                "volumes X.nrrd and landmark files X_landmarks.fcsv.")
    if "global" in stages and args.heads is None:
        raise InvalidInputError("The global (seed-free) pass needs head volumes: give --heads DIR with volumes "
                                "X.nrrd and X_left_landmarks.fcsv / X_right_landmarks.fcsv, or leave global out "
                                "of --stages.")
    if args.heads is not None and "global" not in stages:
        raise InvalidInputError("--heads is used by the global pass only: add global to --stages "
                                "(coarse,fine,global), or leave --heads out.")
    for name, folder in (("--data", args.data), ("--heads", args.heads)):
        if folder is not None and not folder.is_dir():
            raise InvalidInputError(f"The {name} folder {folder} does not exist or is not a folder.")
    if args.data is not None and not ({"coarse", "fine"} & set(stages)):
        raise InvalidInputError("--data is used by the coarse and fine passes only, which --stages leaves out; "
                                "leave --data out, or add coarse,fine to --stages.")
    if not _ID.match(args.model_id):
        raise InvalidInputError(f"The model id '{args.model_id}' may only use lower-case letters, digits, '.', '_' "
                                "and '-', starting with a letter or digit (for example detector-mine).")
    if not _VERSION.match(args.model_version):
        raise InvalidInputError(f"The model version '{args.model_version}' may only use letters, digits, "
                                "'.', '_', '+' and '-' (for example 1.0).")
    if not 0.0 <= args.val_fraction < 1.0:
        raise InvalidInputError(f"--val-fraction must be at least 0 and below 1, got {args.val_fraction}.")
    if not args.lr > 0:
        raise InvalidInputError(f"--lr must be positive, got {args.lr}.")
    if args.out.exists() and not args.out.is_dir():
        raise InvalidInputError(f"The output folder {args.out} is a file; choose a folder.")
    return stages


def run_detector(args: argparse.Namespace) -> int:
    """Train the detector's passes, then print where the outputs are and how each pass did."""
    stages = _check_detector_args(args)
    try:
        from CochleaLandmarksLib.detector_training import DetectorTrainingConfig, train_detector
        from CochleaLandmarksLib.smicnet_training import register_trained_model
    except ImportError as exc:
        raise MissingDependencyError(f"The CochleaLandmarks package cannot be imported ({exc}); put CochleaLandmarks "
                                     "on PYTHONPATH or install CochleaToolkit with pip.") from exc
    from ..devices import require_torch

    require_torch()
    base = _base_weights(args.base) if args.base is not None else None
    config = DetectorTrainingConfig(
        model_id=args.model_id, version=args.model_version, stages=stages,
        steps={"coarse": args.steps_coarse, "fine": args.steps_fine, "global": args.steps_global},
        batch_size=args.batch_size, lr=args.lr, val_fraction=args.val_fraction, val_cubes=args.val_cubes,
        eval_every=args.eval_every, seed=args.seed, device=args.device, threads=args.threads,
        description=args.description)
    config.validate()
    with cli_progress(args) as progress:
        result = train_detector(args.data, args.out, config, heads=args.heads, base=base, progress=progress)
    entry, record = result["entry_obj"], result["record"]
    registry_path = register_trained_model(result["model"], entry) if args.register else None
    print(f"model:      {result['model']}")
    print(f"entry:      {result['entry']} (sha256 {entry.sha256[:16]}...)")
    print(f"history:    {result['history']}")
    kept = record.get("base", {}).get("passes_kept", [])
    for group, passes in (("local", "coarse and fine passes"), ("global", "global pass")):
        cases = record.get("cases", {}).get(group)
        if cases and not (group == "global" and "global" in kept):
            print(f"cases:      {len(cases['train'])} training, {len(cases['validation'])} validation ({passes})")
    print(f"passes:     {', '.join(stages)} trained" + (f", {', '.join(kept)} kept from {args.base}" if kept else "")
          + f"; device {record.get('device')}, {record.get('seconds', 0.0):.1f} s")
    for name, figures in record.get("validation", {}).items():
        best, last = figures.get("best_error_mm"), figures.get("val_error_mm")
        origin = f" (kept from {args.base})" if name in kept else ""
        if best is None and name in kept:
            print(f"validation: {name:<6} no figures recorded{origin}")
            continue
        if best is None or not math.isfinite(best):
            print(f"validation: {name:<6} no landmark found in the validation cubes{origin}")
            continue
        print(f"validation: {name:<6} best mean distance {best:.3f} mm, last {last:.3f} mm, "
              f"found {100.0 * figures.get('val_found', 0.0):.0f} %{origin}")
    if registry_path is not None:
        print(f"registered: '{entry.id}' in {registry_path} (use --model {entry.id}, or --registry {registry_path})")
    sys.stdout.flush()
    return 0


def _base_weights(base: str) -> Path:
    """The weight file of ``--base``: a file, or the verified file of a registry id (bundled or trained here)."""
    from CochleaLandmarksLib.landmark_detection import registry_for

    return registry_for(base).locate(base).path

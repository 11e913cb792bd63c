"""``cochlea train smicnet``: train the SMICNet landmark patch classifier from annotated volumes.

Why a nested subcommand: each trainable model gets its own options (``cochlea train detector`` can
be added beside ``smicnet`` later) while ``cochlea train --help`` lists them all. The heavy imports
(torch, the landmark package) happen inside :func:`run_smicnet`, so ``cochlea --help`` stays fast.
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for PyTorch")
    p.add_argument("--register", action="store_true",
                   help="also install the model in the per-user cache and the user registry")
    p.set_defaults(handler=run_smicnet)


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
        init=args.init, threads=args.threads,
        augment=AugmentConfig(background_fraction=args.background_fraction))
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

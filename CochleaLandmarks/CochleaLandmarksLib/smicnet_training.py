"""Few-shot training of the SMICNet patch classifier from a folder of volumes with landmark files.

Why these choices (seed-methods.md 1.6 describes what the authors did; this is what we do and why):

* **Validation by case, never by patch**: patches of one volume are strongly correlated, so a
  patch-level split measures memory, not generalisation. ``val_fraction`` of the cases (at least one)
  are held out. With a single case (or ``val_fraction=0``) there is nothing to hold out: validation
  then uses a fixed set of augmented patches of the training case(s), drawn with another seed, and
  the result says so (``validation`` in the metadata): it is a convergence check, not an estimate.
* **A fixed validation batch** drawn once with a fixed seed, so epochs are compared on the same patches.
* **Adam** (lr 1e-3, linear warm-up then cosine decay to 2 % of it) by default rather than the authors'
  RMSprop: with larger batches on a GPU and a fresh BatchNorm network, Adam's bias-corrected momentum
  converges more reliably from the first steps, and the cosine schedule needs no tuning of plateau
  patience. ``optimizer="rmsprop"`` with ``schedule="plateau"`` (factor 0.8, as the learning rate
  stored in the published files suggests) reproduces the authors' setting.
* **Loss**: cross-entropy on the logits plus the authors' L1/L2 penalty on the 384-unit dense kernel
  (:meth:`SMICNet.regularization_loss`). Early stopping watches the validation cross-entropy alone
  (the penalty is not a property of the predictions) and restores the best weights.
* Per-class accuracy (recall) and F1 on the validation batch every epoch, in ``history.csv`` and
  ``training_curves.png``.

Outputs in ``out_dir`` (each written to a temporary name and moved into place, so a crash or a cancel
never leaves a half-written file): ``<model_id>.pt`` (our weight format, with the training metadata
and ``landmark_pixel``), ``<model_id>.json`` (a registry entry), ``history.csv``, ``training_curves.png``.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from CochleaCommonLib import __version__ as toolkit_version
from CochleaCommonLib.atomic import atomic_output
from CochleaCommonLib.devices import require_torch, resolve_device
from CochleaCommonLib.downloads import sha256_file
from CochleaCommonLib.errors import InputFileError, InvalidInputError
from CochleaCommonLib.model_registry import ModelEntry, ModelRegistry, default_cache_root, register_user_model
from CochleaCommonLib.progress import Progress

from .keras_import import TORCH_FORMAT, save_smicnet_weights
from .landmark_dataset import LandmarkCase
from .smicnet_augment import LANDMARK_PIXEL, AugmentConfig, PatchSampler
from .smicnet_detector import landmark_pixel_of
from .smicnet_mining import MINING_MIN_DISTANCE_MM
from .smicnet_model import CLASS_NAMES, PATCH_SIZE, SPACING_MM, build_smicnet
from .smicnet_training_data import DEFAULT_BACKGROUND_EXTENT_MM, MAX_SCALE, TrainingVolume, load_cases, resolve_cases

log = logging.getLogger(__name__)

TASK = "landmarks-smicnet"
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
HISTORY_FIELDS = ("epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_f1_macro",
                  "val_f1_weighted", *(f"val_f1_{i}" for i in range(4)), *(f"val_accuracy_{i}" for i in range(4)),
                  "seconds")


@dataclass
class SmicnetTrainingConfig:
    """Everything that defines a training run (recorded in the weight file)."""

    model_id: str = "smicnet-custom"
    version: str = "1.0"
    epochs: int = 60
    steps_per_epoch: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"  # or "rmsprop"
    schedule: str = "cosine"  # warm-up + cosine, or "plateau" (ReduceLROnPlateau, factor 0.8)
    warmup_epochs: float = 1.0
    min_lr_factor: float = 0.02
    val_fraction: float = 0.2
    val_samples: int = 2048
    patience: int = 12
    min_delta: float = 1e-4
    seed: int = 0
    device: str = "auto"
    init: str | None = None  # a registry id (e.g. smicnet-published-5) or a weights file to fine-tune
    mine_from: str | None = None  # a SMICNet model whose mistakes on the training cases become background
    mine_min_distance_mm: float = MINING_MIN_DISTANCE_MM  # a detection farther than this from its landmark is a mistake
    threads: int | None = None
    background_extent_mm: float = DEFAULT_BACKGROUND_EXTENT_MM
    description: str = ""
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self) -> None:
        """Raise :class:`InvalidInputError` for settings that cannot work, before any data is read."""
        if not _ID.match(self.model_id or ""):
            raise InvalidInputError(f"The model id '{self.model_id}' may only use lower-case letters, digits, "
                                    "'.', '_' and '-' (and must start with a letter or digit).")
        for name in ("epochs", "steps_per_epoch", "batch_size", "val_samples"):
            if int(getattr(self, name)) < 1:
                raise InvalidInputError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.patience < 1:
            raise InvalidInputError(f"patience must be at least 1 epoch, got {self.patience}.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InvalidInputError(f"The learning rate must be positive, got {self.lr}.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InvalidInputError(f"val_fraction must be in [0, 1), got {self.val_fraction}.")
        if self.optimizer not in ("adam", "rmsprop"):
            raise InvalidInputError(f"optimizer must be 'adam' or 'rmsprop', got '{self.optimizer}'.")
        if self.schedule not in ("cosine", "plateau"):
            raise InvalidInputError(f"schedule must be 'cosine' or 'plateau', got '{self.schedule}'.")
        if bool(self.mine_from) != (self.augment.mined_fraction > 0):
            raise InvalidInputError("Hard-negative mining needs both a model to mine with (mine_from) and a share of "
                                    "the background for its points (augment.mined_fraction > 0).")
        if not (self.mine_min_distance_mm > 0 and math.isfinite(self.mine_min_distance_mm)):
            raise InvalidInputError(f"mine_min_distance_mm must be positive, got {self.mine_min_distance_mm}.")
        if self.threads is not None and self.threads < 1:
            raise InvalidInputError(f"threads must be at least 1, got {self.threads}.")
        self.augment.validate()

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly settings."""
        data = asdict(self)
        data["augment"] = self.augment.to_dict()
        return data


@dataclass
class SmicnetTrainingResult:
    """What a training run produced and how well the restored (best) weights did on validation."""

    model_path: Path
    entry_path: Path
    entry: ModelEntry
    history_path: Path
    curves_path: Path | None
    history: list[dict[str, float]]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    val_metrics: dict[str, Any]
    train_cases: list[str]
    val_cases: list[str]
    validation: str
    device: str
    registry_path: Path | None = None


# --- metrics -----------------------------------------------------------------------------------------
def classification_metrics(labels: np.ndarray, predicted: np.ndarray, n_classes: int = len(CLASS_NAMES)
                           ) -> dict[str, Any]:
    """Accuracy, per-class accuracy (recall), precision and F1, macro and support-weighted F1, confusion matrix."""
    y = np.asarray(labels, dtype=np.int64).ravel()
    p = np.asarray(predicted, dtype=np.int64).ravel()
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (y, p), 1)
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1).astype(np.float64)
    predicted_n = confusion.sum(axis=0).astype(np.float64)
    recall = np.divide(tp, support, out=np.zeros(n_classes), where=support > 0)
    precision = np.divide(tp, predicted_n, out=np.zeros(n_classes), where=predicted_n > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n_classes), where=denom > 0)
    present = support > 0
    return {"accuracy": float(tp.sum() / max(1, y.size)),
            "per_class_accuracy": [float(v) for v in recall], "precision": [float(v) for v in precision],
            "f1": [float(v) for v in f1], "support": [int(v) for v in support],
            "f1_macro": float(f1[present].mean()) if present.any() else 0.0,
            "f1_weighted": float((f1 * support).sum() / max(1.0, support.sum())),
            "confusion": confusion.tolist()}


# --- splitting -----------------------------------------------------------------------------------------
def split_cases(cases: list[LandmarkCase], val_fraction: float, seed: int) -> tuple[list[LandmarkCase],
                                                                                     list[LandmarkCase]]:
    """Split by case: ``round(val_fraction * n)`` cases (at least 1, leaving at least 1) for validation.

    One case, or ``val_fraction == 0``, gives no validation cases (see the module docstring).
    """
    n = len(cases)
    if n < 2 or val_fraction <= 0:
        return list(cases), []
    n_val = min(max(1, int(round(val_fraction * n))), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    val = sorted((cases[i] for i in order[:n_val]), key=lambda c: c.case_id)
    train = sorted((cases[i] for i in order[n_val:]), key=lambda c: c.case_id)
    return train, val


# --- the run -------------------------------------------------------------------------------------------
def _lr_lambda(total_steps: int, warmup_steps: int, min_factor: float):
    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return 0.1 + 0.9 * step / warmup_steps
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


def _fixed_batch(sampler: PatchSampler, n: int, seed: int, chunk: int) -> tuple[Any, Any]:
    torch = require_torch()
    g = torch.Generator(device=sampler.device).manual_seed(seed)
    xs, ys = [], []
    for start in range(0, n, chunk):
        batch = sampler.sample(min(chunk, n - start), g)
        xs.append(batch.patches)
        ys.append(batch.labels)
    return torch.cat(xs), torch.cat(ys)


def _evaluate(model: Any, x: Any, y: Any, chunk: int) -> tuple[float, dict[str, Any]]:
    torch = require_torch()
    model.eval()
    losses, preds = [], []
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk):
            logits = model.inference_logits(x[start:start + chunk])
            losses.append(torch.nn.functional.cross_entropy(logits, y[start:start + chunk], reduction="sum"))
            preds.append(logits.argmax(dim=1))
    loss = float(torch.stack(losses).sum()) / x.shape[0]
    metrics = classification_metrics(y.cpu().numpy(), torch.cat(preds).cpu().numpy())
    model.train()
    return loss, metrics


def _build_model(config: SmicnetTrainingConfig, device: Any) -> tuple[Any, dict[str, Any]]:
    torch = require_torch()
    torch.manual_seed(config.seed)
    if config.init:
        from .keras_import import load_smicnet_weights

        model = load_smicnet_weights(config.init, device=device)
        info = {k: v for k, v in model.metadata.items() if isinstance(v, (str, int, float, type(None)))}
    else:
        model = build_smicnet(device)
        info = {"from": "Keras-style random initialisation (Glorot uniform)"}
    return model.train(), info


def _mine(cfg: SmicnetTrainingConfig, cases: list[LandmarkCase], volumes: list[TrainingVolume], device: str,
          progress: Progress) -> dict[str, Any]:
    """Attach the ``mine_from`` model's mistakes to the training volumes (crop indices, replaced in ``volumes``);
    return a summary to record."""
    from .smicnet_detector import load_smicnet_detector
    from .smicnet_mining import MINING_THRESHOLD, mine_false_positives

    detector = load_smicnet_detector(cfg.mine_from, device=device)
    mined = mine_false_positives(detector, cases, min_distance_mm=cfg.mine_min_distance_mm, seed=cfg.seed,
                                 progress=progress)
    per_landmark: dict[str, int] = {}
    for n, volume in enumerate(volumes):
        ras = np.asarray(mined[volume.case_id]["points_ras"], dtype=np.float64).reshape(-1, 3)
        inv = np.linalg.inv(volume.ijk_to_ras)
        ijk = ras @ inv[:3, :3].T + inv[:3, 3]
        # Only points the sampler can use: inside the crop and away from every landmark (as any background).
        limits = np.array(volume.array.shape[::-1], dtype=np.float64) - 1.0
        far = np.linalg.norm(ijk[:, None, :] - volume.landmarks_ijk[None], axis=-1).min(axis=1, initial=np.inf)
        keep = np.all((ijk >= 0) & (ijk <= limits), axis=1) & (far > cfg.augment.min_background_distance_vox)
        volumes[n] = dataclasses.replace(volume, mined_ijk=ijk[keep].astype(np.float32))
        for name, count in mined[volume.case_id]["per_landmark"].items():
            per_landmark[name] = per_landmark.get(name, 0) + count
    summary = {"from": detector.model_id, "threshold": MINING_THRESHOLD, "min_distance_mm": cfg.mine_min_distance_mm,
               "wrong_voxels_per_landmark": per_landmark, "points": int(sum(len(v.mined_ijk) for v in volumes)),
               "cases_with_mistakes": int(sum(len(v.mined_ijk) > 0 for v in volumes))}
    log.info("Mined %d background points from %s's mistakes (%s).", summary["points"], detector.model_id,
             ", ".join(f"{k}: {v}" for k, v in per_landmark.items()))
    return summary


def _json_safe(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))


def train_smicnet(data: str | os.PathLike | Iterable[LandmarkCase], out_dir: str | os.PathLike,
                  config: SmicnetTrainingConfig | None = None, *, progress: Progress | None = None,
                  register: bool = False, registry_path: str | os.PathLike | None = None) -> SmicnetTrainingResult:
    """Train SMICNet on annotated volumes and write the weights, a registry entry, the history and curves.

    Args:
        data: a folder searched with ``find_landmark_cases`` (volume ``X.nrrd`` + ``X_landmarks.fcsv``), or
            a list of :class:`LandmarkCase`.
        out_dir: output folder (created).
        config: the run's settings (default :class:`SmicnetTrainingConfig`).
        progress: progress reporting and cancellation (:class:`OperationCancelled` stops the run and
            writes nothing).
        register: also copy the weights into the per-user model cache and add the entry to the user
            registry (``registry_path``, default :func:`user_registry_path`).

    Raises :class:`InvalidInputError` (bad settings, landmarks missing), :class:`InputFileError` (no cases,
    unreadable files), :class:`MissingDependencyError` (no PyTorch).
    """
    cfg = config if config is not None else SmicnetTrainingConfig()
    cfg.validate()
    prog = Progress.ensure(progress)
    torch = require_torch()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputFileError(f"The output folder {out} is a file; choose a folder.")
    choice = resolve_device(cfg.device)
    if choice.message:
        log.warning(choice.message)
    device = torch.device(choice.name)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    cases = resolve_cases(data)
    train_cases, val_cases = split_cases(cases, cfg.val_fraction, cfg.seed)
    scale_max = 1.0 + cfg.augment.scale_jitter
    volumes = load_cases(cases, progress=prog.sub(0.0, 0.1), background_extent_mm=cfg.background_extent_mm,
                         scale_max=min(scale_max, MAX_SCALE))
    by_id: dict[str, TrainingVolume] = {v.case_id: v for v in volumes}
    train_vols = [by_id[c.case_id] for c in train_cases]
    val_vols = [by_id[c.case_id] for c in val_cases]
    if val_vols:
        validation = f"held-out cases ({len(val_vols)} of {len(cases)})"
    else:
        validation = ("augmented patches of the training case(s), drawn with another seed: only one case or "
                      "val_fraction 0, so this is a convergence check, not an independent estimate")
        log.warning("Validation uses %s.", validation)
    model, init_info = _build_model(cfg, device)
    # Fine-tuning keeps the convention of the weights it starts from (the authors': landmark at pixel 41),
    # so the features they learned stay where they were; a fresh model uses ours (pixel 40).
    pixel = landmark_pixel_of(getattr(model, "metadata", {}) or {}) if cfg.init else LANDMARK_PIXEL[0]
    if pixel != LANDMARK_PIXEL[0]:
        log.info("Fine-tuning weights that see the landmark at patch pixel %d; the new model keeps it.", pixel)
    mining = _mine(cfg, train_cases, train_vols, choice.name, prog.sub(0.1, 0.15)) if cfg.mine_from else None
    sampler = PatchSampler(train_vols, cfg.augment, device, landmark_pixel=pixel)
    val_sampler = PatchSampler(val_vols, cfg.augment, device, landmark_pixel=pixel) if val_vols else sampler
    chunk = max(cfg.batch_size, 256)
    prog.update(0.1, f"Drawing {cfg.val_samples} validation patches")
    val_x, val_y = _fixed_batch(val_sampler, cfg.val_samples, cfg.seed + 104729, chunk)

    if cfg.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    else:
        optimizer = torch.optim.RMSprop(model.parameters(), lr=cfg.lr, alpha=0.9, eps=1e-8)
    total_steps = cfg.epochs * cfg.steps_per_epoch
    if cfg.schedule == "cosine":
        warmup = int(round(cfg.warmup_epochs * cfg.steps_per_epoch))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, warmup, cfg.min_lr_factor))
    else:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.8, patience=3)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)

    train_prog = prog.sub(0.1, 0.97)
    history: list[dict[str, float]] = []
    best_loss, best_epoch, best_state, best_metrics, wait = math.inf, 0, None, {}, 0
    stopped_early = False
    step_done = 0
    for epoch in range(1, cfg.epochs + 1):
        started = time.monotonic()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        lr_now = optimizer.param_groups[0]["lr"]
        for _ in range(cfg.steps_per_epoch):
            batch = sampler.sample(cfg.batch_size, generator)
            logits = model.fast_forward(batch.patches)  # forward's values and gradients, about twice as fast
            loss = torch.nn.functional.cross_entropy(logits, batch.labels) + model.regularization_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if cfg.schedule == "cosine":
                scheduler.step()
            loss_sum += loss.detach()
            correct += (logits.detach().argmax(dim=1) == batch.labels).sum()
            step_done += 1
            train_prog.update(step_done / total_steps, f"Epoch {epoch}/{cfg.epochs}")
        val_loss, metrics = _evaluate(model, val_x, val_y, chunk)
        if cfg.schedule == "plateau":
            scheduler.step(val_loss)
        row = {"epoch": epoch, "lr": lr_now,
               "train_loss": float(loss_sum) / cfg.steps_per_epoch,
               "train_accuracy": float(correct) / (cfg.steps_per_epoch * cfg.batch_size),
               "val_loss": val_loss, "val_accuracy": metrics["accuracy"], "val_f1_macro": metrics["f1_macro"],
               "val_f1_weighted": metrics["f1_weighted"],
               **{f"val_f1_{i}": metrics["f1"][i] for i in range(4)},
               **{f"val_accuracy_{i}": metrics["per_class_accuracy"][i] for i in range(4)},
               "seconds": time.monotonic() - started}
        history.append(row)
        log.info("epoch %d: train loss %.4f, val loss %.4f, val accuracy %.4f, val F1 %s", epoch, row["train_loss"],
                 val_loss, metrics["accuracy"], " ".join(f"{f:.3f}" for f in metrics["f1"]))
        if not math.isfinite(row["train_loss"]):
            raise InvalidInputError(f"Training diverged at epoch {epoch} (the loss is not finite); "
                                    "use a smaller learning rate.")
        if val_loss < best_loss - cfg.min_delta:
            best_loss, best_epoch, best_metrics, wait = val_loss, epoch, metrics, 0
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        else:
            wait += 1
        train_prog.update(step_done / total_steps, f"Epoch {epoch}/{cfg.epochs}: val loss {val_loss:.4f}, "
                                                   f"accuracy {metrics['accuracy']:.3f} (best epoch {best_epoch})")
        if wait >= cfg.patience:
            stopped_early = epoch < cfg.epochs
            break
    if best_state is None:
        raise InvalidInputError("The validation loss was never finite; training failed. Use a smaller learning rate.")
    model.load_state_dict(best_state)
    model.eval()

    prog.update(0.97, "Writing the model")
    val_metrics = {"val_loss": best_loss, **best_metrics, "classes": list(CLASS_NAMES)}
    result_args = dict(history=history, best_epoch=best_epoch, epochs_run=len(history), stopped_early=stopped_early,
                       val_metrics=val_metrics, train_cases=[c.case_id for c in train_cases],
                       val_cases=[c.case_id for c in val_cases], validation=validation, device=choice.name)
    source = {"format": TORCH_FORMAT, "file": f"{cfg.model_id}.pt", "trained_by": f"CochleaToolkit {toolkit_version}",
              "task": TASK, "landmark_pixel": [pixel, pixel], "config": cfg.to_dict(), "init": init_info,
              "mining": mining,
              "cases": {"train": [by_id[c].describe() for c in result_args["train_cases"]],
                        "validation": [by_id[c].describe() for c in result_args["val_cases"]]},
              "validation": validation, "epochs_run": len(history), "best_epoch": best_epoch,
              "stopped_early": stopped_early, "val_metrics": val_metrics, "device": choice.name,
              "torch_version": str(torch.__version__)}
    written = write_outputs(model, out, cfg, _json_safe(source), history, len(cases))
    registry = None
    if register:
        registry = register_trained_model(written["model"], written["entry_obj"], registry_path)
    prog.update(1.0, f"Trained {cfg.model_id}: best epoch {best_epoch}, val accuracy "
                     f"{val_metrics.get('accuracy', 0.0):.3f}")
    return SmicnetTrainingResult(model_path=written["model"], entry_path=written["entry"], entry=written["entry_obj"],
                                 history_path=written["history"], curves_path=written["curves"],
                                 registry_path=registry, **result_args)


# --- outputs -------------------------------------------------------------------------------------------
def model_entry(cfg: SmicnetTrainingConfig, model_path: Path, source: dict[str, Any], n_cases: int) -> ModelEntry:
    """The registry entry of a trained model file."""
    m = source.get("val_metrics", {})
    description = cfg.description or (
        f"SMICNet 4-class patch classifier trained by CochleaToolkit on {n_cases} annotated volume(s) "
        f"({len(source['cases']['train'])} training, {len(source['cases']['validation'])} validation), best epoch "
        f"{source['best_epoch']} of {source['epochs_run']}; validation accuracy {m.get('accuracy', 0.0):.3f}, "
        f"macro F1 {m.get('f1_macro', 0.0):.3f} ({source['validation'].split(':')[0]}). The landmark is at patch "
        f"pixel ({source['landmark_pixel'][0]}, {source['landmark_pixel'][1]}).")
    return ModelEntry(
        id=cfg.model_id, version=cfg.version, task=TASK,
        input={"patch": [PATCH_SIZE, PATCH_SIZE], "spacing_mm": SPACING_MM, "classes": list(CLASS_NAMES),
               "landmark_pixel": list(source["landmark_pixel"])},
        file=model_path.name, sha256=sha256_file(model_path),
        source=f"trained by CochleaToolkit {toolkit_version} (cochlea train smicnet; settings and cases in the "
               "weight file's metadata)",
        license="Apache-2.0", format=TORCH_FORMAT, description=description)


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(HISTORY_FIELDS))
        writer.writeheader()
        for row in history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def write_curves(path: Path, history: list[dict[str, float]], title: str = "") -> Path | None:
    """Loss, validation accuracy/F1 and learning rate per epoch as a PNG (matplotlib's Agg canvas, no pyplot).

    Returns None (with a warning) when matplotlib is not installed: the curves are a convenience.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed; training_curves.png was not written.")
        return None
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(12, 3.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 3, 1)
    ax.plot(epochs, [r["train_loss"] for r in history], label="train (with L1/L2)")
    ax.plot(epochs, [r["val_loss"] for r in history], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    ax.set_yscale("log")
    ax.legend()
    ax = fig.add_subplot(1, 3, 2)
    ax.plot(epochs, [r["val_accuracy"] for r in history], "k", label="accuracy")
    ax.plot(epochs, [r["val_f1_macro"] for r in history], "k--", label="macro F1")
    for i, name in enumerate(CLASS_NAMES):
        ax.plot(epochs, [r[f"val_f1_{i}"] for r in history], lw=0.8, label=f"F1 {name}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(1, 3, 3)
    ax.plot(epochs, [r["lr"] for r in history])
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate (epoch start)")
    ax.set_yscale("log")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def write_outputs(model: Any, out: Path, cfg: SmicnetTrainingConfig, source: dict[str, Any],
                  history: list[dict[str, float]], n_cases: int) -> dict[str, Any]:
    """history.csv, training_curves.png, ``<id>.pt``, then ``<id>.json`` (which holds the .pt's SHA256)."""
    out.mkdir(parents=True, exist_ok=True)
    history_path = out / "history.csv"
    _write_history(history_path, history)
    curves = write_curves(out / "training_curves.png", history, f"{cfg.model_id}: {source['validation'][:60]}")
    model_path = save_smicnet_weights(model, out / f"{cfg.model_id}.pt", source=source)
    entry = model_entry(cfg, model_path, source, n_cases)
    entry_path = out / f"{cfg.model_id}.json"
    with atomic_output(entry_path) as tmp:
        tmp.write_text(json.dumps(entry.to_dict(), indent=2) + "\n", encoding="utf-8")
    return {"model": model_path, "entry": entry_path, "entry_obj": entry, "history": history_path, "curves": curves}


def user_registry_path() -> Path:
    """The per-user registry of models trained here: ``<cache root>/user-models.json``.

    Load it with ``ModelRegistry.load(user_registry_path())`` (or ``--registry`` on the command line); its
    weights live in the per-user model cache, ``<cache root>/models/<id>-v<version>/``.
    """
    from .landmark_detection import USER_REGISTRY_NAME

    return default_cache_root() / USER_REGISTRY_NAME


def register_trained_model(model_path: Path, entry: ModelEntry, registry_path: str | os.PathLike | None = None
                           ) -> Path:
    """Copy the weights into the per-user cache and add (or replace) the entry in the user registry."""
    reg_path = Path(registry_path) if registry_path is not None else user_registry_path()
    dest = ModelRegistry([], reg_path).cache_path(entry)
    try:
        with atomic_output(dest) as tmp:
            shutil.copyfile(model_path, tmp)
    except OSError as exc:
        raise InputFileError(f"Cannot copy the trained weights into the model cache {dest.parent}: {exc}.") from exc
    return register_user_model(entry, reg_path, replace=True)

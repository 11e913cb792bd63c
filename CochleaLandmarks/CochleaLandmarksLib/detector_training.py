"""Training of the 3D detector's passes from annotated volumes (and, for the seed-free pass, annotated heads).

Why these choices:

* **Each pass is trained on the cubes it will see**: coarse cubes centred within 9 mm of the cochlea
  (clicks up to 8 mm off), fine cubes within 1.5 mm of one landmark (the coarse pass's errors), global
  cubes of heads anywhere, half of them around an ear. Pose (+-20 deg), scale (+-10 %), side
  (mirroring) and grey values (gamma, contrast, offset, blur, noise) are drawn per cube.
* **Loss**: a quality focal loss on the heatmap (binary cross-entropy against the Gaussian target,
  weighted by |p - t|^2 so the many easy background cells fade; SkullEngine's focal loss adapted to soft
  targets) normalised by the target's mass, plus a smooth-L1 loss on the displacements of the cells near
  each landmark (Noothout's regression, in cube voxels / 8 instead of a log transform).
* **Validation by case**: ``val_fraction`` of the volumes are held out; a fixed set of their cubes is
  scored every ``eval_every`` steps by the mean distance between predicted and true landmarks (the
  measure that matters, not the loss), and the best weights are kept.
* **AdamW** with a 5 % warm-up and cosine decay; one thread count for the whole run; seeded sampling.
"""

from __future__ import annotations

import copy
import csv
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from CochleaCommonLib import __version__ as toolkit_version
from CochleaCommonLib.atomic import atomic_output
from CochleaCommonLib.devices import require_torch, resolve_device
from CochleaCommonLib.downloads import sha256_file
from CochleaCommonLib.errors import InvalidInputError
from CochleaCommonLib.model_registry import _VERSION, ModelEntry
from CochleaCommonLib.progress import Progress

from .detector_inference import PRESENT_THRESHOLD
from .detector_model import build_network, parameter_count
from .detector_readout import readout_cells
from .detector_stages import STAGES, StageGeometry
from .detector_training_data import (
    DetectorVolume,
    load_head_volumes,
    load_landmark_volumes,
    random_centre,
    sample_batch,
    sample_cube,
)
from .detector_weights import DETECTOR_FORMAT, TASK, save_detector_weights
from .landmark_result import LANDMARK_NAMES
from .smicnet_training import _ID, _lr_lambda, split_cases

log = logging.getLogger(__name__)

HISTORY_FIELDS = ("stage", "step", "lr", "train_loss", "val_error_mm", "val_found")


@dataclass
class DetectorTrainingConfig:
    """Settings of ``cochlea train detector`` (see the module docstring for why)."""

    model_id: str = "detector-user"
    version: str = "1.0"
    stages: tuple[str, ...] = ("coarse", "fine")
    steps: dict[str, int] = field(default_factory=lambda: {"coarse": 1500, "fine": 1500, "global": 800})
    batch_size: int = 6
    lr: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.15
    val_cubes: int = 48
    eval_every: int = 100
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    description: str = ""

    def validate(self) -> None:
        if not _ID.match(self.model_id or "") or not _VERSION.match(self.version or ""):
            raise InvalidInputError(f"The model id '{self.model_id}' and version '{self.version}' may only use "
                                    "lower-case letters, digits, '.', '_' and '-' (they name the file and the model).")
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown or not self.stages:
            raise InvalidInputError(f"Unknown detector pass(es) {unknown}; choose from {', '.join(STAGES)}.")
        if self.batch_size < 1 or self.lr <= 0 or not (0 <= self.val_fraction < 1) or self.eval_every < 1:
            raise InvalidInputError("batch size and eval interval must be >= 1, lr > 0 and 0 <= val fraction < 1.")
        for s in self.stages:
            if int(self.steps.get(s, 0)) < 1:
                raise InvalidInputError(f"The {s} pass needs at least one training step.")


def detector_loss(heat_logits: Any, disp: Any, heat_t: Any, disp_t: Any, mask: Any) -> Any:
    """Quality focal loss on the heatmap plus masked smooth-L1 on displacements (see the module docstring)."""
    torch = require_torch()
    F = torch.nn.functional

    p = torch.sigmoid(heat_logits)
    bce = F.binary_cross_entropy_with_logits(heat_logits, heat_t, reduction="none")
    focal = (bce * (p - heat_t).abs().pow(2)).sum(dim=(2, 3, 4))
    mass = heat_t.sum(dim=(2, 3, 4)).clamp_min(1.0)
    heat_loss = (focal / mass).mean()
    reg = F.smooth_l1_loss(disp, disp_t, reduction="none", beta=0.05).sum(dim=2)
    disp_loss = (reg * mask).sum() / mask.sum().clamp_min(1.0)
    return heat_loss + disp_loss


def _validation_error(net: Any, stage: StageGeometry, x: Any, cubes_truth: list[list[np.ndarray]]
                      ) -> tuple[float, float]:
    """Mean distance (mm) from each channel's read-out to the nearest true landmark of that channel in the cube
    (a head cube may hold both ears), and the share of channels found (peak >= PRESENT_THRESHOLD)."""
    torch = require_torch()
    errors, found, total = [], 0, 0
    with torch.no_grad():
        heat, disp = net(x)
        heat = torch.sigmoid(heat).cpu().numpy()
        disp = disp.cpu().numpy()
    for b, truth in enumerate(cubes_truth):
        for ch in range(len(stage.channels)):
            if len(truth[ch]) == 0:
                continue
            total += 1
            ijk, peak = readout_cells(heat[b, ch], disp[b, ch])
            if peak >= PRESENT_THRESHOLD:
                found += 1
                errors.append(float(np.min(np.linalg.norm(truth[ch] - ijk, axis=1))) * stage.spacing_mm)
    return (float(np.mean(errors)) if errors else float("inf")), found / max(1, total)


def _fixed_validation(volumes: list[DetectorVolume], stage: StageGeometry, n: int, seed: int, device: Any
                      ) -> tuple[Any, list[list[np.ndarray]]]:
    """Unaugmented validation cubes and, per channel, the true landmarks inside each cube (cube indices)."""
    from .detector_geometry import CANONICAL_AXES, ras_to_cube_points

    torch = require_torch()
    rng = np.random.default_rng(seed)
    xs, truths = [], []
    for i in range(n):
        vol = volumes[i % len(volumes)]
        centre = random_centre(vol, stage, rng)
        x, _, _, _, cube = sample_cube(vol, stage, centre, CANONICAL_AXES, vol.centroid)
        xs.append(x)
        t = []
        for name in stage.channels:
            p = ras_to_cube_points(cube, vol.points[name])
            t.append(p[np.all((p >= 0) & (p <= stage.size - 1), axis=1)])
        truths.append(t)
    return torch.stack(xs).to(device), truths


def train_stage(stage: StageGeometry, train: list[DetectorVolume], val: list[DetectorVolume], steps: int,
                cfg: DetectorTrainingConfig, device: Any, progress: Progress) -> tuple[Any, list[dict[str, Any]]]:
    """Train one pass; return the best network (by validation error) and its history rows."""
    torch = require_torch()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, sum(map(ord, stage.name))])
    net = build_network(len(stage.channels), stage.widths).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, max(1, steps // 20), 0.02))
    val_set = _fixed_validation(val or train, stage, cfg.val_cubes, cfg.seed + 7, device)
    history: list[dict[str, Any]] = []
    best, best_error, losses = None, float("inf"), []
    for step in range(1, steps + 1):
        progress.update(step / steps, f"Training the {stage.name} pass: step {step} of {steps}")
        net.train()
        x, heat_t, disp_t, mask = sample_batch(train, stage, rng, cfg.batch_size, device=device)
        heat, disp = net(x)
        loss = detector_loss(heat, disp, heat_t, disp_t, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % cfg.eval_every == 0 or step == steps:
            net.eval()
            error, found = _validation_error(net, stage, *val_set)
            row = {"stage": stage.name, "step": step, "lr": opt.param_groups[0]["lr"],
                   "train_loss": float(np.mean(losses)), "val_error_mm": error, "val_found": found}
            history.append(row)
            log.info("%s step %d: loss %.4f, validation error %.3f mm, found %.2f", stage.name, step,
                     row["train_loss"], error, found)
            losses = []
            score = error + 10.0 * (1.0 - found)
            if score < best_error:
                best_error, best = score, copy.deepcopy(net.state_dict())
    if best is not None:
        net.load_state_dict(best)
    return net.eval(), history


def train_detector(data: str | os.PathLike, out_dir: str | os.PathLike, config: DetectorTrainingConfig | None = None,
                   *, heads: str | os.PathLike | None = None, base: str | os.PathLike | None = None,
                   progress: Any = None) -> dict[str, Any]:
    """Train the passes of ``config.stages`` and write ``<model_id>.pt``, ``<model_id>.json`` and ``history.csv``.

    ``data``: volumes with landmark files (coarse and fine passes); ``heads``: head volumes with every ear
    annotated (the global pass, see :func:`find_head_cases`); ``base``: an existing detector weight file
    whose other passes are kept (e.g. add a global pass trained on your heads to detector-phantom's local
    passes). Returns paths and the validation figures.
    """
    torch = require_torch()
    cfg = config or DetectorTrainingConfig()
    cfg.validate()
    if base is not None and not Path(base).is_file():
        raise InvalidInputError(f"The base detector weight file {base} does not exist.")
    if base is None and not {"coarse", "fine"} <= set(cfg.stages):
        raise InvalidInputError("A detector needs its coarse and fine passes: train both, or keep them from an "
                                "existing detector with base=FILE (--base).")
    if "global" in cfg.stages and heads is None:
        raise InvalidInputError("The global (seed-free) pass needs head volumes: give --heads DIR with volumes "
                                "X.nrrd and X_left_landmarks.fcsv / X_right_landmarks.fcsv.")
    prog = Progress.ensure(progress)
    device = resolve_device(cfg.device).name
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    try:
        return _train_all(cfg, data, out_dir, heads, base, device, prog)
    finally:
        torch.set_num_threads(previous_threads)


def _train_all(cfg: DetectorTrainingConfig, data: Any, out_dir: Any, heads: Any, base: Any, device: str,
               prog: Progress) -> dict[str, Any]:
    start = time.perf_counter()
    networks: dict[str, Any] = {}
    geometries: dict[str, StageGeometry] = {name: STAGES[name] for name in cfg.stages}
    history: list[dict[str, Any]] = []
    record: dict[str, Any] = {"trained_by": f"CochleaToolkit {toolkit_version}", "config": asdict(cfg),
                              "device": device, "cases": {}, "validation": {}}
    if base is not None:
        from .detector_weights import load_detector_weights

        base_networks, base_geometries, base_source = load_detector_weights(base)
        for name, net in base_networks.items():
            if name not in cfg.stages:
                networks[name] = net
                geometries[name] = base_geometries[name]
                record["validation"][name] = dict(base_source.get("validation", {}).get(name, {}))
                group = "global" if name == "global" else "local"
                if group in base_source.get("cases", {}):
                    record["cases"][group] = base_source["cases"][group]
        record["base"] = {"file": Path(base).name, "sha256": sha256_file(Path(base)),
                          "passes_kept": sorted(n for n in base_networks if n not in cfg.stages)}
    local = [s for s in cfg.stages if s != "global"]
    n = len(cfg.stages)
    if local:
        volumes = load_landmark_volumes(data, prog.sub(0.0, 0.03))
        train, val = split_cases(volumes, cfg.val_fraction, cfg.seed)
        record["cases"]["local"] = {"train": [v.case_id for v in train], "validation": [v.case_id for v in val]}
        for i, name in enumerate(local):
            net, rows = train_stage(STAGES[name], train, val, int(cfg.steps[name]), cfg, device,
                                    prog.sub(0.03 + 0.97 * i / n, 0.03 + 0.97 * (i + 1) / n))
            networks[name] = net
            history += rows
            record["validation"][name] = {**(rows[-1] if rows else {}),
                                          "best_error_mm": min(r["val_error_mm"] for r in rows)}
    if "global" in cfg.stages:
        heads_volumes = load_head_volumes(heads, STAGES["global"].spacing_mm)
        train, val = split_cases(heads_volumes, cfg.val_fraction, cfg.seed)
        record["cases"]["global"] = {"train": [v.case_id for v in train], "validation": [v.case_id for v in val]}
        net, rows = train_stage(STAGES["global"], train, val, int(cfg.steps["global"]), cfg, device,
                                prog.sub(0.03 + 0.97 * (n - 1) / n, 1.0))
        networks["global"] = net
        history += rows
        record["validation"]["global"] = {**rows[-1], "best_error_mm": min(r["val_error_mm"] for r in rows)}
    record["seconds"] = time.perf_counter() - start
    record["parameters"] = {k: parameter_count(networks[k]) for k in ("global", "coarse", "fine") if k in networks}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    history_path = out / "history.csv"
    with atomic_output(history_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(HISTORY_FIELDS))
        writer.writeheader()
        for row in history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    order = [k for k in ("global", "coarse", "fine") if k in networks]
    model_path = save_detector_weights({k: networks[k] for k in order}, {k: geometries[k] for k in order},
                                       out / f"{cfg.model_id}.pt", source=record)
    entry = detector_model_entry(cfg, model_path, record, geometries)
    entry_path = out / f"{cfg.model_id}.json"
    import json

    with atomic_output(entry_path) as tmp:
        tmp.write_text(json.dumps(entry.to_dict(), indent=2) + "\n", encoding="utf-8")
    return {"model": model_path, "entry": entry_path, "entry_obj": entry, "history": history_path, "record": record}


def detector_model_entry(cfg: DetectorTrainingConfig, model_path: Path, record: dict[str, Any],
                         geometries: dict[str, StageGeometry]) -> ModelEntry:
    """The registry entry of a trained detector file."""
    val = record.get("validation", {})
    figures = ", ".join(f"{k} {v.get('best_error_mm', float('nan')):.2f} mm" for k, v in val.items())
    description = cfg.description or (
        f"3D landmark detector (passes: {', '.join(record['parameters'])}) trained by CochleaToolkit; mean "
        f"validation distance per pass on held-out cases: {figures}.")
    return ModelEntry(
        id=cfg.model_id, version=cfg.version, task=TASK,
        input={"spacing_mm": [geometries[k].spacing_mm for k in record["parameters"]],
               "patch": [geometries[k].size for k in record["parameters"]],
               "classes": list(geometries["coarse"].channels) if "coarse" in geometries else list(LANDMARK_NAMES),
               "passes": list(record["parameters"])},
        file=model_path.name, sha256=sha256_file(model_path),
        source=f"trained by CochleaToolkit {toolkit_version} (cochlea train detector; settings and cases in the "
               "weight file)", license="Apache-2.0", format=DETECTOR_FORMAT, description=description)

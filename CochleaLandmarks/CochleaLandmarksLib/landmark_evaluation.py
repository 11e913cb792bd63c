"""Evaluate landmark detectors on annotated volumes: per-landmark errors, patch F1 and timings.

Why one runner for every method, model and mode: the question a researcher asks is "which of these
is better on my cases", so every run (method x model x mode) sees the same cases with the same seed
clicks and the same background points, and its rows carry the run's label. The statistics are then
computed from the rows alone, which is what lets a report put runs side by side, or merge rows read
back from an earlier evaluation's CSV files (see :mod:`.evaluation_report`).

Honesty rules:

* A landmark the detector did not find is a failure with an infinite error. It is never dropped:
  the median, 95th percentile and maximum count it as +inf, the mean is taken over found landmarks
  only and is labelled so, and ``found`` says how many there were.
* Seeds come from the case's seed file when there is one (the phantom's simulated click); otherwise
  they are the ground-truth centroid plus a random offset whose generator is seeded by the case id,
  so reruns and other runs get the same seed.
* Patch F1 (the published SMICNet figure) is measured on the patches at the three ground-truth
  landmarks and a fixed, seeded set of background points 3-40 network voxels (0.3 mm) away from every
  landmark, half of them in a near shell of 3-12 voxels where confusions happen.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from CochleaCommonLib.errors import InvalidInputError
from CochleaCommonLib.image import Image
from CochleaCommonLib.progress import Progress, ProgressCallback

from .landmark_dataset import LandmarkCase, read_ground_truth, read_seed
from .landmark_result import LANDMARK_NAMES

#: Class names of the patch classification, in class-index order (three landmarks, then background).
PATCH_CLASSES = (*LANDMARK_NAMES, "background")
BACKGROUND = len(LANDMARK_NAMES)
#: A landmark further than this from the truth (or not found) is a failure.
DEFAULT_FAILURE_MM = 3.0
DEFAULT_SEED_OFFSET_MM = (1.0, 5.0)
DEFAULT_BACKGROUND_POINTS = 30
#: Background points lie 3-40 network voxels from every landmark; the near half 3-12 voxels from one.
NETWORK_VOXEL_MM = 0.3
BACKGROUND_NEAR_VOX = (3.0, 12.0)
BACKGROUND_FAR_VOX = (12.0, 40.0)
UNKNOWN_KIND = "unknown"
#: Accepted ``roi_mm`` (fast-mode search cube edge), as in :func:`~.landmark_detection.detect_landmarks`.
ROI_RANGE_MM = (5.0, 60.0)


# --- what is run ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """One detector configuration to evaluate: ``method`` (``smicnet`` ...), ``model`` (id or file), ``mode``."""

    method: str
    model: str
    mode: str = "fast"


@dataclass
class RunInfo:
    """A run as it actually ran: the resolved model id, the device and the model loading time."""

    run: str
    method: str
    model: str
    mode: str
    device: str
    load_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"run": self.run, "method": self.method, "model": self.model, "mode": self.mode,
                "device": self.device, "load_s": round(float(self.load_s), 4)}


def run_label(method: str, model: str, mode: str) -> str:
    """``smicnet:smicnet-published-5:parity``: the name of a run in every table, plot and CSV row."""
    return f"{method}:{model}:{mode}"


# --- rows -------------------------------------------------------------------------------------
@dataclass
class LandmarkError:
    """One landmark of one case in one run. ``error_mm`` is ``inf`` when the landmark was not found."""

    run: str
    method: str
    model: str
    mode: str
    device: str
    case_id: str
    kind: str
    spacing_mm: float
    landmark: str
    error_mm: float
    confidence: float = 0.0
    predicted_ras: tuple[float, float, float] | None = None
    truth_ras: tuple[float, float, float] | None = None
    seed_source: str = "file"
    seed_distance_mm: float = float("nan")
    detect_s: float = float("nan")
    patches: int = 0
    reason: str = ""

    @property
    def found(self) -> bool:
        return math.isfinite(self.error_mm)

    def failed(self, failure_mm: float = DEFAULT_FAILURE_MM) -> bool:
        """Not found, or further than ``failure_mm`` from the truth."""
        return not self.found or self.error_mm > failure_mm


@dataclass
class PatchPrediction:
    """The classifier's answer for the patch centred at one evaluation point of one case."""

    run: str
    case_id: str
    kind: str
    point: str
    true_class: int
    predicted_class: int
    probabilities: tuple[float, ...]
    distance_mm: float = 0.0  # to the nearest ground-truth landmark


@dataclass
class EvaluationResult:
    """Everything one evaluation produced: the runs, their rows, and settings (for the report)."""

    runs: list[RunInfo]
    errors: list[LandmarkError]
    patches: list[PatchPrediction] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def summary(self, failure_mm: float | None = None) -> dict[str, Any]:
        """The statistics of every run (see :func:`summarize`)."""
        threshold = float(self.settings.get("failure_mm", DEFAULT_FAILURE_MM)) if failure_mm is None else failure_mm
        return summarize(self.runs, self.errors, self.patches, failure_mm=threshold,
                         settings=self.settings, warnings=self.warnings)


# --- statistics -------------------------------------------------------------------------------
def percentile(values: Sequence[float] | np.ndarray, q: float) -> float:
    """The ``q``-th percentile with linear interpolation (numpy's default), where +inf values take part.

    Why not ``np.percentile``: interpolating towards ``inf`` gives ``nan`` there, while a missing
    landmark must push the percentile to ``inf``. Empty input gives ``nan``.
    """
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if v.size == 0:
        return float("nan")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be within 0..100, got {q}")
    position = q / 100.0 * (v.size - 1)
    lo = int(math.floor(position))
    hi = min(lo + 1, v.size - 1)
    t = position - lo
    if t == 0.0 or v[lo] == v[hi]:
        return float(v[lo])
    if math.isinf(v[hi]):
        return float("inf")
    return float(v[lo] + (v[hi] - v[lo]) * t)


def error_statistics(errors_mm: Sequence[float] | np.ndarray, failure_mm: float = DEFAULT_FAILURE_MM
                     ) -> dict[str, float | int]:
    """n, found, mean (of found), median, p95, max (missing = +inf) and failures (> ``failure_mm`` or missing)."""
    e = np.asarray(errors_mm, dtype=np.float64).ravel()
    if np.any(np.isnan(e)) or np.any(e < 0):
        raise InvalidInputError("Landmark errors must be distances >= 0 (inf for a missing landmark), not NaN.")
    finite = e[np.isfinite(e)]
    return {
        "n": int(e.size),
        "found": int(finite.size),
        "mean_mm": float(finite.mean()) if finite.size else float("nan"),
        "median_mm": percentile(e, 50.0),
        "p95_mm": percentile(e, 95.0),
        "max_mm": float(e.max()) if e.size else float("nan"),
        "failures": int(np.count_nonzero(~np.isfinite(e) | (e > failure_mm))),
    }


def confusion_matrix(true: Sequence[int], predicted: Sequence[int], n_classes: int = len(PATCH_CLASSES)
                     ) -> np.ndarray:
    """``m[t, p]``: how many samples of true class t were predicted as p."""
    t = np.asarray(true, dtype=np.int64).ravel()
    p = np.asarray(predicted, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise InvalidInputError(f"{t.size} true classes but {p.size} predictions.")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise InvalidInputError(f"Class indices must be within 0..{n_classes - 1}.")
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (t, p), 1)
    return m


def classification_scores(true: Sequence[int], predicted: Sequence[int],
                          class_names: Sequence[str] = PATCH_CLASSES) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, plus weighted F1, macro F1 and accuracy.

    Same definitions as scikit-learn (which the SMICNet authors used): a 0/0 ratio is 0, the
    weighted F1 averages the per-class F1 by support, macro F1 averages the classes with support.
    """
    m = confusion_matrix(true, predicted, len(class_names))
    tp = np.diag(m).astype(np.float64)
    predicted_count = m.sum(axis=0).astype(np.float64)
    support = m.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted_count > 0, tp / predicted_count, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    total = support.sum()
    present = support > 0
    return {
        "classes": {name: {"precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
                           "support": int(support[c])} for c, name in enumerate(class_names)},
        "weighted_f1": float((f1 * support).sum() / total) if total else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "accuracy": float(tp.sum() / total) if total else float("nan"),
        "samples": int(total),
        "confusion": m.tolist(),
    }


def _timing_statistics(errors: list[LandmarkError]) -> dict[str, float | int]:
    per_case: dict[str, tuple[float, int]] = {}
    for row in errors:
        per_case.setdefault(row.case_id, (row.detect_s, row.patches))
    seconds = np.array([v[0] for v in per_case.values()], dtype=np.float64)
    seconds = seconds[np.isfinite(seconds)]
    patches = np.array([v[1] for v in per_case.values()], dtype=np.float64)
    nan = float("nan")
    return {
        "cases": len(per_case),
        "median_s": float(np.median(seconds)) if seconds.size else nan,
        "mean_s": float(seconds.mean()) if seconds.size else nan,
        "max_s": float(seconds.max()) if seconds.size else nan,
        "median_patches": float(np.median(patches)) if patches.size else nan,
        "mean_patches": float(patches.mean()) if patches.size else nan,
    }


def _landmark_table(rows: list[LandmarkError], failure_mm: float) -> dict[str, dict[str, float | int]]:
    table = {}
    for name in LANDMARK_NAMES:
        selected = [r.error_mm for r in rows if r.landmark == name]
        if selected:
            table[name] = error_statistics(selected, failure_mm)
    table["all"] = error_statistics([r.error_mm for r in rows], failure_mm)
    return table


def summarize(runs: Sequence[RunInfo], errors: Sequence[LandmarkError], patches: Sequence[PatchPrediction] = (),
              *, failure_mm: float = DEFAULT_FAILURE_MM, settings: dict[str, Any] | None = None,
              warnings: Sequence[str] = ()) -> dict[str, Any]:
    """Statistics per run: per landmark (and all pooled), per image kind, timings and patch F1.

    Runs listed in ``runs`` come first in their order; rows of runs not listed are summarised too
    (rows read back from an earlier CSV), so nothing is silently dropped.
    """
    infos = {r.run: r for r in runs}
    for row in errors:
        if row.run not in infos:
            infos[row.run] = RunInfo(row.run, row.method, row.model, row.mode, row.device, float("nan"))
    out_runs = []
    for label, info in infos.items():
        rows = [r for r in errors if r.run == label]
        kinds = sorted({r.kind for r in rows})
        entry: dict[str, Any] = {**info.as_dict(), "cases": len({r.case_id for r in rows}),
                                 "landmarks": _landmark_table(rows, failure_mm) if rows else {},
                                 "timing": _timing_statistics(rows)}
        if len(kinds) > 1 or (kinds and kinds[0] != UNKNOWN_KIND):
            entry["by_kind"] = {k: _landmark_table([r for r in rows if r.kind == k], failure_mm) for k in kinds}
        points = [p for p in patches if p.run == label]
        if points:
            scores = classification_scores([p.true_class for p in points], [p.predicted_class for p in points])
            case_f1 = []
            for case_id in sorted({p.case_id for p in points}):
                mine = [p for p in points if p.case_id == case_id]
                case_f1.append(classification_scores([p.true_class for p in mine],
                                                     [p.predicted_class for p in mine])["weighted_f1"])
            scores["median_case_weighted_f1"] = float(np.median(case_f1))
            entry["patch_f1"] = scores
        out_runs.append(entry)
    return {"failure_mm": failure_mm, "settings": dict(settings or {}), "runs": out_runs,
            "warnings": list(warnings)}


# --- seeds and evaluation points ---------------------------------------------------------------
def case_rng(case_id: str, seed: int, stream: int) -> np.random.Generator:
    """A generator fixed by the case id, the evaluation seed and a stream number (seeds, points ...)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(case_id.encode()), int(stream)]))


def _random_direction(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def random_seed_point(truth: dict[str, np.ndarray], offset_mm: tuple[float, float], rng: np.random.Generator
                      ) -> np.ndarray:
    """The landmark centroid moved by a random direction and a distance drawn uniformly from ``offset_mm``."""
    centroid = np.mean([truth[n] for n in LANDMARK_NAMES if n in truth], axis=0)
    return centroid + float(rng.uniform(offset_mm[0], offset_mm[1])) * _random_direction(rng)


def background_points(truth: dict[str, np.ndarray], count: int, rng: np.random.Generator,
                      inside: Callable[[np.ndarray], bool] | None = None) -> np.ndarray:
    """``count`` RAS points 3-40 network voxels from every landmark; the first half within 3-12 voxels of one.

    Points are drawn around a random landmark at a random direction and distance; a point closer than
    3 voxels to any landmark, further than 40 from all, or outside the volume (``inside``) is redrawn.
    """
    landmarks = np.array([truth[n] for n in LANDMARK_NAMES if n in truth], dtype=np.float64)
    near_lo, near_hi = (v * NETWORK_VOXEL_MM for v in BACKGROUND_NEAR_VOX)
    far_lo, far_hi = (v * NETWORK_VOXEL_MM for v in BACKGROUND_FAR_VOX)
    points: list[np.ndarray] = []
    tries = 0
    while len(points) < count:
        tries += 1
        if tries > 200 * max(count, 1):
            raise InvalidInputError(
                f"Could not place {count} background points 0.9-12 mm from the landmarks inside the volume; "
                "the volume is too small around the cochlea for the patch evaluation.")
        lo, hi = (near_lo, near_hi) if len(points) < (count + 1) // 2 else (far_lo, far_hi)
        centre = landmarks[rng.integers(len(landmarks))]
        p = centre + float(rng.uniform(lo, hi)) * _random_direction(rng)
        d = np.linalg.norm(landmarks - p, axis=1)
        if d.min() < near_lo or d.min() > far_hi:
            continue
        if inside is not None and not inside(p):
            continue
        points.append(p)
    return np.array(points, dtype=np.float64).reshape(-1, 3)


def _inside(image: Image) -> Callable[[np.ndarray], bool]:
    def check(p: np.ndarray) -> bool:
        ijk = image.ras_to_continuous_index(np.asarray(p)[None])
        return bool(image.contains_index(np.rint(ijk))[0])

    return check


def read_case_kind(case: LandmarkCase) -> str:
    """The image kind (``ct``, ``cbct``, ``postop``) from the ``case.json`` beside the volume, if it describes it."""
    path = case.volume_path.parent / "case.json"
    if not path.is_file():
        return UNKNOWN_KIND
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return UNKNOWN_KIND
    if not isinstance(record, dict) or record.get("case_id", case.case_id) != case.case_id:
        return UNKNOWN_KIND
    return str(record.get("kind", UNKNOWN_KIND))


# --- the runner -------------------------------------------------------------------------------
def _patch_classifier(detector: Any) -> Callable[[Image, np.ndarray], np.ndarray] | None:
    """``f(image, points_ras) -> (N, 4)`` class probabilities for methods that classify patches, else None."""
    if getattr(detector, "method", None) != "smicnet":
        return None
    from .smicnet_detector import classify_points

    return lambda image, points: np.asarray(classify_points(detector, image, points), dtype=np.float64)


def _as_tuple(p: Any) -> tuple[float, float, float] | None:
    return None if p is None else tuple(float(v) for v in np.asarray(p, dtype=np.float64).reshape(3))


def evaluate_landmarks(
    cases: Sequence[LandmarkCase],
    runs: Sequence[RunSpec],
    *,
    device: str = "auto",
    registry: Any = None,
    roi_mm: float | None = None,
    seed_offset_mm: tuple[float, float] = DEFAULT_SEED_OFFSET_MM,
    seed: int = 0,
    background_count: int = DEFAULT_BACKGROUND_POINTS,
    failure_mm: float = DEFAULT_FAILURE_MM,
    detectors: dict[RunSpec, Any] | None = None,
    progress: Progress | ProgressCallback | None = None,
) -> EvaluationResult:
    """Run every :class:`RunSpec` on every case and collect error rows, patch predictions and timings.

    Every detector is loaded before the first case (so a wrong model name fails at once) unless
    given in ``detectors``. Cases are the outer loop, so each volume is read once for all runs.
    ``background_count=0`` skips the patch F1.
    """
    from CochleaCommonLib.image_io import read_image

    from .landmark_detection import detect_landmarks, load_detector, validate_image, validate_seed

    if not cases:
        raise InvalidInputError("There is no case to evaluate.")
    if not runs:
        raise InvalidInputError("There is no detector (method, model, mode) to evaluate.")
    lo, hi = (float(v) for v in seed_offset_mm)
    if not (0.0 <= lo <= hi and math.isfinite(hi)):
        raise InvalidInputError(f"The seed offset range must be 0 <= min <= max mm, got {lo}..{hi}.")
    if failure_mm <= 0:
        raise InvalidInputError(f"The failure threshold must be positive, got {failure_mm} mm.")
    if roi_mm is not None and not (ROI_RANGE_MM[0] <= float(roi_mm) <= ROI_RANGE_MM[1]):
        raise InvalidInputError(f"The search region size must be {ROI_RANGE_MM[0]:g} to {ROI_RANGE_MM[1]:g} mm, "
                                f"not {roi_mm} mm.")
    prog = Progress.ensure(progress)
    loaded = dict(detectors or {})
    infos: dict[RunSpec, RunInfo] = {}
    for spec in runs:
        prog.check()
        if spec not in loaded:
            loaded[spec] = load_detector(method=spec.method, model=spec.model, device=device, registry=registry)
        det = loaded[spec]
        model_id = str(getattr(det, "model_id", spec.model))
        infos[spec] = RunInfo(run_label(spec.method, model_id, spec.mode), spec.method, model_id, spec.mode,
                              str(getattr(det, "device", device)), float(getattr(det, "load_seconds", 0.0)))
    labels = [i.run for i in infos.values()]
    if len(set(labels)) != len(labels):
        raise InvalidInputError(f"The same run is listed twice: {', '.join(sorted(labels))}.")

    result = EvaluationResult(list(infos.values()), [], [], settings={
        "cases": len(cases), "roi_mm": roi_mm, "seed_offset_mm": [lo, hi], "seed": int(seed),
        "background_points": int(background_count), "failure_mm": float(failure_mm), "device": device})
    steps = len(cases) * len(runs)
    for c_index, case in enumerate(cases):
        prog.update(c_index * len(runs) / steps, f"Case {case.case_id} ({c_index + 1} of {len(cases)})")
        truth = read_ground_truth(case.landmarks_path)
        if case.seed_path is not None:
            seed_ras, seed_source = read_seed(case.seed_path), "file"
        else:
            seed_ras, seed_source = random_seed_point(truth, (lo, hi), case_rng(case.case_id, seed, 0)), "random"
        image = read_image(case.volume_path)
        try:  # a data problem stops the evaluation with the case named; a detection failure does not
            validate_image(image)
            seed_ras = validate_seed(image, seed_ras)
        except InvalidInputError as exc:
            raise InvalidInputError(f"Case {case.case_id} ({case.volume_path}): {exc}") from exc
        kind = read_case_kind(case)
        spacing = float(np.mean(image.spacing))
        centroid = np.mean([truth[n] for n in LANDMARK_NAMES], axis=0)
        points = background_points(truth, background_count, case_rng(case.case_id, seed, 1), _inside(image)) \
            if background_count > 0 else np.zeros((0, 3))
        eval_points = np.concatenate([np.array([truth[n] for n in LANDMARK_NAMES]), points])
        true_classes = [*range(len(LANDMARK_NAMES)), *([BACKGROUND] * len(points))]
        point_names = [*LANDMARK_NAMES, *(f"background-{i:02d}" for i in range(len(points)))]
        landmark_array = np.array([truth[n] for n in LANDMARK_NAMES])
        for r_index, spec in enumerate(runs):
            info, det = infos[spec], loaded[spec]
            step = c_index * len(runs) + r_index
            sub = prog.sub(step / steps, (step + 1) / steps)
            t0 = time.perf_counter()
            try:
                found = detect_landmarks(image, seed_ras, method=spec.method, detector=det, mode=spec.mode,
                                         roi_mm=roi_mm, output_maps=False, progress=sub)
            except InvalidInputError as exc:  # inputs were checked above: this is "no landmark found at all"
                found = None
                failure = str(exc)
            wall = time.perf_counter() - t0
            detect_s = float(found.timings.get("total", wall)) if found is not None else wall
            for name in LANDMARK_NAMES:
                p = found.positions_ras.get(name) if found is not None else None
                error = float(np.linalg.norm(np.asarray(p, dtype=np.float64) - truth[name])) if p is not None \
                    else float("inf")
                reason = "" if p is not None else (
                    failure if found is None else str(found.missing_reasons.get(name, "not found")))
                result.errors.append(LandmarkError(
                    info.run, info.method, info.model, info.mode, info.device, case.case_id, kind, spacing, name,
                    error, float(found.confidences.get(name, 0.0)) if found is not None else 0.0, _as_tuple(p),
                    _as_tuple(truth[name]), seed_source, float(np.linalg.norm(seed_ras - centroid)), detect_s,
                    int(found.patches) if found is not None else 0, reason))
            classify = _patch_classifier(det) if background_count > 0 else None
            if classify is not None:
                probs = classify(image, eval_points)
                for i, (name, true_class) in enumerate(zip(point_names, true_classes)):
                    distance = float(np.linalg.norm(landmark_array - eval_points[i], axis=1).min())
                    result.patches.append(PatchPrediction(
                        info.run, case.case_id, kind, name, int(true_class), int(np.argmax(probs[i])),
                        tuple(float(v) for v in probs[i]), distance))
            elif background_count > 0 and c_index == 0:
                result.warnings.append(f"{info.run}: the method has no patch classifier; no patch F1.")
    prog.update(1.0, "Evaluation done")
    return result


def select_cases(cases: Sequence[LandmarkCase], limit: int | None) -> list[LandmarkCase]:
    """The first ``limit`` cases (all when None); sorted order makes ``--limit`` reproducible."""
    if limit is not None and limit < 1:
        raise InvalidInputError(f"--limit must be at least 1, got {limit}.")
    return list(cases)[: limit] if limit is not None else list(cases)


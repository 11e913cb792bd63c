"""Write (and read back) a landmark evaluation: CSV rows, a Markdown report, a PNG plot and summary.json.

Why the rows are the source of truth: every table and figure is computed from
``landmark_errors.csv`` and ``patch_predictions.csv``, which carry the run label on every row. An
evaluation of a new method can therefore read an earlier evaluation's folder back
(:func:`load_evaluation`) and report both side by side on the same cases, without rerunning it.

Files written by :func:`write_report` into the output folder:

* ``landmark_errors.csv``: one row per run, case and landmark (error empty and ``found`` 0 when missing);
* ``patch_predictions.csv``: one row per run, case and evaluation point (true class, predicted class, softmax);
* ``patch_f1.csv``: per run and class: precision, recall, F1, support; plus weighted / macro F1 rows;
* ``summary.json``: the statistics of :func:`~.landmark_evaluation.summarize` (inf written as "inf");
* ``report.md``: the tables for people, side by side per landmark; ``landmark_errors.png``: the plot.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from CochleaCommonLib.atomic import atomic_output
from CochleaCommonLib.errors import InputFileError, MissingDependencyError

from .landmark_evaluation import (
    PATCH_CLASSES,
    EvaluationResult,
    LandmarkError,
    PatchPrediction,
    RunInfo,
    summarize,
)
from .landmark_result import LANDMARK_NAMES

ERRORS_CSV = "landmark_errors.csv"
PREDICTIONS_CSV = "patch_predictions.csv"
F1_CSV = "patch_f1.csv"
SUMMARY_JSON = "summary.json"
REPORT_MD = "report.md"
PLOT_PNG = "landmark_errors.png"

ERROR_COLUMNS = ("run", "method", "model", "mode", "device", "case_id", "kind", "spacing_mm", "landmark", "found",
                 "error_mm", "confidence", "pred_r", "pred_a", "pred_s", "true_r", "true_a", "true_s",
                 "seed_source", "seed_distance_mm", "detect_s", "patches", "reason")
PREDICTION_COLUMNS = ("run", "case_id", "kind", "point", "true_class", "predicted_class", "distance_mm",
                      *(f"p_{c.replace(' ', '_')}" for c in PATCH_CLASSES))
F1_COLUMNS = ("run", "class", "precision", "recall", "f1", "support")


# --- small formatting helpers -----------------------------------------------------------------
def _num(value: float, digits: int = 4) -> str:
    """A CSV number: empty for NaN/None, ``inf`` for infinity."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _parse_float(text: str) -> float:
    return float(text) if text.strip() else float("nan")


def _cell(value: Any, digits: int = 2) -> str:
    """A Markdown table cell: ``-`` for NaN, ``inf`` for a statistic pulled up by missing landmarks."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}f}"
    return str(value)


def json_ready(value: Any) -> Any:
    """``value`` with inf as ``"inf"`` and NaN as null, so the file is strict JSON."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return round(value, 6)
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def _write_text(path: Path, text: str) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _write_csv(path: Path, columns: Sequence[str], rows: list[list[str]]) -> Path:
    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def _read_csv(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise InputFileError(f"{path} is not a CochleaToolkit evaluation file: it lacks the column(s) "
                                     f"{', '.join(missing)}.")
            return list(reader)
    except OSError as exc:
        raise InputFileError(f"Cannot read {path}: {exc.strerror or exc}.") from exc


# --- rows to and from CSV ---------------------------------------------------------------------
def write_errors_csv(rows: Sequence[LandmarkError], path: str | os.PathLike) -> Path:
    """``landmark_errors.csv``: one row per run, case and landmark."""
    out = []
    for r in rows:
        pred = r.predicted_ras or (float("nan"),) * 3
        true = r.truth_ras or (float("nan"),) * 3
        out.append([r.run, r.method, r.model, r.mode, r.device, r.case_id, r.kind, _num(r.spacing_mm), r.landmark,
                    "1" if r.found else "0", _num(r.error_mm) if r.found else "", _num(r.confidence),
                    *(_num(v) for v in pred), *(_num(v) for v in true), r.seed_source, _num(r.seed_distance_mm),
                    _num(r.detect_s), str(r.patches), r.reason])
    return _write_csv(Path(path), ERROR_COLUMNS, out)


def read_errors_csv(path: str | os.PathLike) -> list[LandmarkError]:
    """The rows of a ``landmark_errors.csv`` (a missing landmark comes back with an infinite error)."""
    rows = []
    for d in _read_csv(Path(path), ERROR_COLUMNS):
        found = d["found"].strip() == "1"
        pred = tuple(_parse_float(d[c]) for c in ("pred_r", "pred_a", "pred_s"))
        true = tuple(_parse_float(d[c]) for c in ("true_r", "true_a", "true_s"))
        rows.append(LandmarkError(
            d["run"], d["method"], d["model"], d["mode"], d["device"], d["case_id"], d["kind"],
            _parse_float(d["spacing_mm"]), d["landmark"], float(d["error_mm"]) if found else float("inf"),
            _parse_float(d["confidence"]), pred if found else None,
            None if any(math.isnan(v) for v in true) else true, d["seed_source"], _parse_float(d["seed_distance_mm"]),
            _parse_float(d["detect_s"]), int(d["patches"] or 0), d["reason"]))
    return rows


def write_predictions_csv(rows: Sequence[PatchPrediction], path: str | os.PathLike) -> Path:
    """``patch_predictions.csv``: the class probabilities of every evaluation patch."""
    out = [[r.run, r.case_id, r.kind, r.point, str(r.true_class), str(r.predicted_class), _num(r.distance_mm),
            *(_num(float(p), 6) for p in r.probabilities)] for r in rows]
    return _write_csv(Path(path), PREDICTION_COLUMNS, out)


def read_predictions_csv(path: str | os.PathLike) -> list[PatchPrediction]:
    """The rows of a ``patch_predictions.csv``."""
    prob_columns = PREDICTION_COLUMNS[7:]
    return [PatchPrediction(d["run"], d["case_id"], d["kind"], d["point"], int(d["true_class"]),
                            int(d["predicted_class"]), tuple(_parse_float(d[c]) for c in prob_columns),
                            _parse_float(d["distance_mm"]))
            for d in _read_csv(Path(path), PREDICTION_COLUMNS)]


def write_f1_csv(summary: dict[str, Any], path: str | os.PathLike) -> Path:
    """``patch_f1.csv``: per run, one row per class, then ``weighted`` / ``macro`` / ``accuracy`` rows."""
    out = []
    for run in summary["runs"]:
        scores = run.get("patch_f1")
        if not scores:
            continue
        for name, c in scores["classes"].items():
            out.append([run["run"], name, _num(c["precision"]), _num(c["recall"]), _num(c["f1"]), str(c["support"])])
        out.append([run["run"], "weighted", "", "", _num(scores["weighted_f1"]), str(scores["samples"])])
        out.append([run["run"], "macro", "", "", _num(scores["macro_f1"]), str(scores["samples"])])
        out.append([run["run"], "median_case_weighted", "", "", _num(scores["median_case_weighted_f1"]), ""])
        out.append([run["run"], "accuracy", "", "", _num(scores["accuracy"]), str(scores["samples"])])
    return _write_csv(Path(path), F1_COLUMNS, out)


def load_evaluation(folder: str | os.PathLike) -> EvaluationResult:
    """An earlier evaluation read back from its folder (rows and run information), to report beside a new one."""
    root = Path(folder)
    errors_path = root / ERRORS_CSV
    if not errors_path.is_file():
        raise InputFileError(f"{root} holds no {ERRORS_CSV}; give the output folder of an earlier "
                             "'cochlea evaluate landmarks' run.")
    errors = read_errors_csv(errors_path)
    patches = read_predictions_csv(root / PREDICTIONS_CSV) if (root / PREDICTIONS_CSV).is_file() else []
    runs: list[RunInfo] = []
    settings: dict[str, Any] = {}
    if (root / SUMMARY_JSON).is_file():
        try:
            summary = json.loads((root / SUMMARY_JSON).read_text(encoding="utf-8"))
        except ValueError as exc:
            raise InputFileError(f"{root / SUMMARY_JSON} is not valid JSON: {exc}.") from exc
        settings = summary.get("settings", {})
        for r in summary.get("runs", []):
            load_s = r.get("load_s")
            runs.append(RunInfo(r["run"], r["method"], r["model"], r["mode"], r["device"],
                                float(load_s) if isinstance(load_s, (int, float)) else float("nan")))
    known = {r.run for r in errors}
    return EvaluationResult([r for r in runs if r.run in known], errors, patches, settings=settings)


def merge_results(results: Sequence[EvaluationResult]) -> EvaluationResult:
    """One result holding the runs of several; a run label present twice is an error (rename or drop one)."""
    merged = EvaluationResult([], [], [], settings=dict(results[0].settings) if results else {})
    seen: set[str] = set()
    for res in results:
        labels = {r.run for r in res.errors} | {r.run for r in res.runs}
        clash = labels & seen
        if clash:
            raise InputFileError(f"The run(s) {', '.join(sorted(clash))} appear in two evaluations; "
                                 "include each run only once.")
        seen |= labels
        merged.runs.extend(res.runs)
        merged.errors.extend(res.errors)
        merged.patches.extend(res.patches)
        merged.warnings.extend(res.warnings)
    case_sets = [frozenset(e.case_id for e in res.errors) for res in results if res.errors]
    if len(set(case_sets)) > 1:
        merged.warnings.append("The merged evaluations did not all use the same cases; compare their statistics "
                               "with care (see the case_id column of landmark_errors.csv).")
    return merged


# --- Markdown ---------------------------------------------------------------------------------
def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) if not isinstance(v, str) else v for v in row) + " |" for row in rows]
    return lines


def render_markdown(summary: dict[str, Any], errors: Sequence[LandmarkError] = (), *,
                    title: str = "Landmark evaluation", plot_name: str | None = PLOT_PNG,
                    max_failures: int = 60) -> str:
    """The report for people: runs, error tables (also side by side), per kind, patch F1, failures, warnings."""
    failure_mm = float(summary["failure_mm"])
    runs = summary["runs"]
    settings = summary.get("settings", {})
    lines = [f"# {title}", ""]
    case_ids = {(e.case_id, e.kind) for e in errors}
    kinds: dict[str, int] = {}
    for _, kind in case_ids:
        kinds[kind] = kinds.get(kind, 0) + 1
    seeds = {(e.case_id, e.seed_source) for e in errors}
    from_file = sum(1 for _, s in seeds if s == "file")
    offset = settings.get("seed_offset_mm", ["?", "?"])
    lines += [
        f"{len(case_ids)} case(s) ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items())) or 'none'}); "
        f"{len(runs)} run(s). Seeds: the case's seed file for {from_file} case(s), otherwise the landmark centroid "
        f"moved {offset[0]}-{offset[1]} mm in a seeded random direction. A landmark is a failure when it is not "
        f"found or more than {failure_mm:g} mm from the truth. Missing landmarks count as infinite errors in the "
        "median, p95 and max; the mean is over found landmarks only.",
        ""]

    lines += ["## Runs", ""]
    lines += _table(("run", "method", "model", "mode", "device", "model load s", "cases", "median detect s",
                     "mean detect s", "max detect s", "median patches"),
                    [(r["run"], r["method"], r["model"], r["mode"], r["device"], r.get("load_s", float("nan")),
                      r["cases"], r["timing"]["median_s"], r["timing"]["mean_s"], r["timing"]["max_s"],
                      _cell(r["timing"]["median_patches"], 0)) for r in runs])
    lines.append("")

    lines += ["## Landmark error (mm)", ""]
    rows = []
    for r in runs:
        for name in (*LANDMARK_NAMES, "all"):
            s = r["landmarks"].get(name)
            if s:
                rows.append((r["run"], name, s["n"], s["found"], s["mean_mm"], s["median_mm"], s["p95_mm"],
                             s["max_mm"], s["failures"]))
    lines += _table(("run", "landmark", "n", "found", "mean (found)", "median", "p95", "max",
                     f"failures (> {failure_mm:g} mm or missing)"), rows)
    lines.append("")

    if len(runs) > 1:
        lines += ["## Side by side: median / p95 / failures (mm)", ""]
        side = []
        for name in (*LANDMARK_NAMES, "all"):
            cells = []
            for r in runs:
                s = r["landmarks"].get(name)
                cells.append(f"{_cell(s['median_mm'])} / {_cell(s['p95_mm'])} / {s['failures']}" if s else "-")
            side.append((name, *cells))
        lines += _table(("landmark", *(r["run"] for r in runs)), side)
        lines.append("")

    if any("by_kind" in r for r in runs):
        lines += ["## By image kind (mm)", ""]
        rows = []
        for r in runs:
            for kind, table in r.get("by_kind", {}).items():
                for name in (*LANDMARK_NAMES, "all"):
                    s = table.get(name)
                    if s:
                        rows.append((r["run"], kind, name, s["n"], s["median_mm"], s["p95_mm"], s["max_mm"],
                                     s["failures"]))
        lines += _table(("run", "kind", "landmark", "n", "median", "p95", "max", "failures"), rows)
        lines.append("")

    f1_runs = [r for r in runs if r.get("patch_f1")]
    if f1_runs:
        lines += ["## Patch classification", "",
                  f"Patches at the ground-truth landmarks and at {settings.get('background_points', '?')} seeded "
                  "background points per case (0.9-12 mm from every landmark, half within 3.6 mm). F1 per class; "
                  "precision / recall in patch_f1.csv.", ""]
        rows = [(r["run"], *(r["patch_f1"]["classes"][c]["f1"] for c in PATCH_CLASSES), r["patch_f1"]["weighted_f1"],
                 r["patch_f1"]["median_case_weighted_f1"], r["patch_f1"]["accuracy"], r["patch_f1"]["samples"])
                for r in f1_runs]
        lines += _table(("run", *(f"{c} F1" for c in PATCH_CLASSES), "weighted F1", "median case weighted F1",
                         "accuracy", "patches"), rows)
        lines.append("")

    failed = [e for e in errors if e.failed(failure_mm)]
    lines += ["## Failures", ""]
    if not failed:
        lines += ["None.", ""]
    else:
        rows = [(e.run, e.case_id, e.landmark, "not found" if not e.found else _cell(e.error_mm),
                 e.reason or "-") for e in failed[:max_failures]]
        lines += _table(("run", "case", "landmark", "error mm", "reason"), rows)
        if len(failed) > max_failures:
            lines.append(f"\n... and {len(failed) - max_failures} more (see {ERRORS_CSV}).")
        lines.append("")

    warnings = summary.get("warnings", [])
    if warnings:
        lines += ["## Warnings", "", *(f"- {w}" for w in warnings), ""]
    if plot_name:
        lines += [f"![Landmark errors]({plot_name})", ""]
    return "\n".join(lines)


# --- PNG --------------------------------------------------------------------------------------
def plot_errors(errors: Sequence[LandmarkError], path: str | os.PathLike, *, failure_mm: float = 3.0) -> Path:
    """Per-landmark box + strip plot for every run (missing landmarks as red crosses on top) and cumulative curves.

    Raises :class:`MissingDependencyError` when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingDependencyError("matplotlib is needed for the plot (pip install matplotlib).") from exc
    import numpy as np

    runs = list(dict.fromkeys(e.run for e in errors))
    finite = [e.error_mm for e in errors if e.found]
    top = max([failure_mm * 1.15, *(v * 1.05 for v in finite)]) if finite else failure_mm * 1.15
    fig, (ax, cum) = plt.subplots(1, 2, figsize=(13, 5.5 + 0.3 * ((len(runs) + 1) // 2)),
                                  gridspec_kw={"width_ratios": [3, 2]})
    colours = plt.get_cmap("tab10")
    width = 0.8 / max(len(runs), 1)
    rng = np.random.default_rng(0)
    for r_index, run in enumerate(runs):
        colour = colours(r_index % 10)
        for l_index, name in enumerate(LANDMARK_NAMES):
            rows = [e for e in errors if e.run == run and e.landmark == name]
            x = l_index + (r_index - (len(runs) - 1) / 2) * width
            values = np.array([e.error_mm for e in rows if e.found])
            if values.size:
                ax.boxplot(values, positions=[x], widths=width * 0.8, showfliers=False, manage_ticks=False,
                           medianprops={"color": colour}, boxprops={"color": colour}, whiskerprops={"color": colour},
                           capprops={"color": colour})
                ax.scatter(x + rng.uniform(-width * 0.25, width * 0.25, values.size), values, s=10, color=colour,
                           alpha=0.7)
            missing = sum(1 for e in rows if not e.found)
            if missing:
                ax.scatter([x], [top * 0.97], marker="x", color="red", s=40)
                ax.annotate(f"{missing} missing", (x, top * 0.97), textcoords="offset points", xytext=(0, -12),
                            ha="center", fontsize=7, color="red")
        pooled = np.sort(np.array([e.error_mm for e in errors if e.run == run]))
        if pooled.size:
            shown = pooled[np.isfinite(pooled)]
            fraction = np.arange(1, shown.size + 1) / pooled.size
            cum.step(np.concatenate([[0.0], shown, [top]]),
                     np.concatenate([[0.0], fraction, [fraction[-1] if shown.size else 0.0]]),
                     where="post", color=colour, label=run)
    ax.axhline(failure_mm, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(LANDMARK_NAMES)), LANDMARK_NAMES)
    ax.set_ylim(0, top)
    ax.set_ylabel("error (mm)")
    ax.set_title("Error per landmark (red x: landmarks not found)")
    cum.axvline(failure_mm, color="grey", linestyle="--", linewidth=0.8)
    for target in (0.5, 1.0):
        cum.axvline(target, color="lightgrey", linestyle=":", linewidth=0.8)
    cum.set_xlim(0, top)
    cum.set_ylim(0, 1.02)
    cum.set_xlabel("error (mm)")
    cum.set_ylabel("fraction of landmarks within error (missing count as never)")
    cum.set_title("Cumulative error, all landmarks")
    handles, names = cum.get_legend_handles_labels()
    rows = (len(runs) + 1) // 2
    if handles:
        fig.legend(handles, names, loc="lower center", ncol=min(len(runs), 2), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0.0, min(0.05 * rows + 0.02, 0.4), 1.0, 1.0))
    target = Path(path)
    with atomic_output(target) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return target


# --- everything ---------------------------------------------------------------------------------
def write_report(result: EvaluationResult, out_dir: str | os.PathLike, *, title: str = "Landmark evaluation",
                 plot: bool = True) -> dict[str, Path]:
    """Write every file of the evaluation into ``out_dir``; returns name -> path of what was written.

    A missing matplotlib leaves out the PNG (with a warning in the report and summary), nothing else.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputFileError(f"The output folder {out} is a file; choose a folder.")
    failure_mm = float(result.settings.get("failure_mm", 3.0))
    written: dict[str, Path] = {}
    warnings = list(result.warnings)
    plot_name: str | None = None
    if plot and result.errors:
        try:
            written["plot"] = plot_errors(result.errors, out / PLOT_PNG, failure_mm=failure_mm)
            plot_name = PLOT_PNG
        except MissingDependencyError as exc:
            warnings.append(f"No plot: {exc}")
    summary = summarize(result.runs, result.errors, result.patches, failure_mm=failure_mm,
                        settings=result.settings, warnings=warnings)
    written["errors"] = write_errors_csv(result.errors, out / ERRORS_CSV)
    written["predictions"] = write_predictions_csv(result.patches, out / PREDICTIONS_CSV)
    written["f1"] = write_f1_csv(summary, out / F1_CSV)
    written["summary"] = _write_text(out / SUMMARY_JSON, json.dumps(json_ready(summary), indent=2) + "\n")
    written["report"] = _write_text(out / REPORT_MD, render_markdown(summary, result.errors, title=title,
                                                                       plot_name=plot_name))
    return written

"""Landmark evaluation: statistics and F1 on hand-computed examples, the runner, the report files, the CLI.

The runner is tested with a stand-in detector (monkeypatched ``detect_landmarks``) on small synthetic
volumes, so its bookkeeping (missing landmarks are failures, seeds, background points, timings) is
checked in milliseconds. One end-to-end test runs the real SMICNet detector through ``cochlea
evaluate landmarks`` on a small phantom: the bundled ``smicnet-phantom`` model when it is installed,
else the authors' 5-volume model from ``../shared/models/smicnet`` (skipped with the reason when
neither is there).
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
from CochleaCommonLib.cli import evaluate as evaluate_cmd
from CochleaCommonLib.cli.main import main
from CochleaCommonLib.errors import InputFileError, InvalidInputError
from CochleaCommonLib.image import Image
from CochleaCommonLib.image_io import write_image
from CochleaCommonLib.markups_io import write_fcsv
from CochleaCommonLib.points import PointList
from CochleaLandmarksLib import evaluation_report as report
from CochleaLandmarksLib import landmark_evaluation as ev
from CochleaLandmarksLib.landmark_dataset import find_landmark_cases
from CochleaLandmarksLib.landmark_result import LANDMARK_NAMES, LandmarkResult

REPO_ROOT = Path(__file__).resolve().parents[2]
SMICNET_DIR = REPO_ROOT.parent / "shared" / "models" / "smicnet"
PUBLISHED_5 = SMICNET_DIR / "model_epoch_100_5volumes_authorprovided.h5"
TRUTH = {"Helicotrema": np.array([1.0, 2.0, 3.0]), "Modiolus base": np.array([-1.5, 0.5, 1.0]),
         "Round Window": np.array([0.5, -3.0, -0.5])}
SEED_A = np.array([0.0, 0.0, 1.0])


# --- statistics on hand-computed examples ------------------------------------------------------
def test_percentile_linear_and_infinite():
    assert ev.percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    assert ev.percentile([1, 2, 3, 4], 95) == pytest.approx(3.85)  # 3 + (4 - 3) * 0.85
    assert ev.percentile([4, 1, 3, 2], 0) == 1.0
    assert ev.percentile([1, 2, 3, math.inf], 50) == pytest.approx(2.5)
    assert ev.percentile([1, 2, 3, math.inf], 95) == math.inf  # numpy would give nan here
    assert ev.percentile([1, math.inf], 50) == math.inf
    assert ev.percentile([math.inf, math.inf], 10) == math.inf
    assert math.isnan(ev.percentile([], 50))


def test_error_statistics_count_missing_as_failures():
    s = ev.error_statistics([0.2, 0.4, 3.5, math.inf], failure_mm=3.0)
    assert s["n"] == 4 and s["found"] == 3
    assert s["mean_mm"] == pytest.approx((0.2 + 0.4 + 3.5) / 3)  # the mean is over found landmarks only
    assert s["median_mm"] == pytest.approx(0.4 + (3.5 - 0.4) * 0.5)
    assert s["p95_mm"] == math.inf and s["max_mm"] == math.inf
    assert s["failures"] == 2  # 3.5 mm and the missing one
    exact = ev.error_statistics([1.0, 3.0], failure_mm=3.0)
    assert exact["failures"] == 0 and exact["max_mm"] == 3.0  # "more than 3 mm" fails, 3.0 does not
    with pytest.raises(InvalidInputError):
        ev.error_statistics([0.5, float("nan")])


def test_classification_scores_hand_computed():
    true = [0, 0, 1, 2, 3, 3, 3, 3]
    pred = [0, 1, 1, 3, 3, 3, 3, 0]
    s = ev.classification_scores(true, pred)
    c = s["classes"]
    assert (c["Helicotrema"]["precision"], c["Helicotrema"]["recall"], c["Helicotrema"]["f1"]) == (0.5, 0.5, 0.5)
    assert c["Modiolus base"]["precision"] == 0.5 and c["Modiolus base"]["recall"] == 1.0
    assert c["Modiolus base"]["f1"] == pytest.approx(2 / 3)
    assert c["Round Window"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}  # 0/0 -> 0
    assert c["background"]["precision"] == 0.75 and c["background"]["f1"] == pytest.approx(0.75)
    assert s["weighted_f1"] == pytest.approx((0.5 * 2 + 2 / 3 + 0.0 + 0.75 * 4) / 8)
    assert s["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0.0 + 0.75) / 4)
    assert s["accuracy"] == pytest.approx(5 / 8) and s["samples"] == 8
    assert s["confusion"][0] == [1, 1, 0, 0] and s["confusion"][3] == [1, 0, 0, 3]
    perfect = ev.classification_scores([0, 1, 2, 3, 3], [0, 1, 2, 3, 3])
    assert perfect["weighted_f1"] == 1.0 and perfect["macro_f1"] == 1.0
    with pytest.raises(InvalidInputError):
        ev.classification_scores([0, 4], [0, 0])


def _row(run, case, landmark, error, kind="ct", detect_s=1.0, patches=100):
    method, model, mode = run.split(":")
    return ev.LandmarkError(run, method, model, mode, "cpu", case, kind, 0.3, landmark, error,
                            0.9 if math.isfinite(error) else 0.0,
                            (0.0, 0.0, 0.0) if math.isfinite(error) else None, (0.0, 0.0, 0.1), "file", 2.0,
                            detect_s, patches, "" if math.isfinite(error) else "no region scored above 0.5")


RUN_A, RUN_B = "smicnet:model-a:fast", "smicnet:model-b:parity"


def _rows() -> list[ev.LandmarkError]:
    rows = []
    errors_a = {"c1": (0.2, 0.3, 0.4), "c2": (0.5, 0.6, math.inf)}
    errors_b = {"c1": (1.0, 4.0, 0.8), "c2": (0.9, 0.7, 0.6)}
    for run, table in ((RUN_A, errors_a), (RUN_B, errors_b)):
        for case, errs in table.items():
            for name, e in zip(LANDMARK_NAMES, errs):
                rows.append(_row(run, case, name, e, kind="ct" if case == "c1" else "cbct",
                                 detect_s=1.0 if case == "c1" else 3.0, patches=100 if case == "c1" else 300))
    return rows


def _predictions() -> list[ev.PatchPrediction]:
    out = []
    for case in ("c1", "c2"):
        for c, name in enumerate(LANDMARK_NAMES):
            p = np.full(4, 0.01)
            p[c if (case, c) != ("c2", 2) else 3] = 0.97  # c2's Round Window patch is called background
            out.append(ev.PatchPrediction(RUN_A, case, "ct", name, c, int(np.argmax(p)), tuple(p), 0.0))
        out.append(ev.PatchPrediction(RUN_A, case, "ct", "background-00", 3, 3, (0.0, 0.0, 0.0, 1.0), 2.0))
    return out


def test_summarize_per_run_landmark_kind_timing_and_f1():
    runs = [ev.RunInfo(RUN_A, "smicnet", "model-a", "fast", "cpu", 0.5)]
    s = ev.summarize(runs, _rows(), _predictions(), failure_mm=3.0)
    by_run = {r["run"]: r for r in s["runs"]}
    assert list(by_run) == [RUN_A, RUN_B]  # a run known only from its rows is summarised, not dropped
    a = by_run[RUN_A]
    assert a["cases"] == 2 and a["load_s"] == 0.5
    assert a["landmarks"]["Round Window"]["failures"] == 1 and a["landmarks"]["Round Window"]["found"] == 1
    assert a["landmarks"]["all"]["n"] == 6 and a["landmarks"]["all"]["failures"] == 1
    assert a["landmarks"]["Helicotrema"]["median_mm"] == pytest.approx(0.35)
    assert a["by_kind"]["cbct"]["Round Window"]["max_mm"] == math.inf
    assert a["by_kind"]["ct"]["all"]["failures"] == 0
    assert a["timing"] == {"cases": 2, "median_s": 2.0, "mean_s": 2.0, "max_s": 3.0, "median_patches": 200.0,
                           "mean_patches": 200.0}
    b = by_run[RUN_B]
    assert b["landmarks"]["Modiolus base"]["failures"] == 1 and "patch_f1" not in b
    f1 = a["patch_f1"]
    assert f1["classes"]["Round Window"]["recall"] == 0.5 and f1["classes"]["Helicotrema"]["f1"] == 1.0
    assert f1["median_case_weighted_f1"] == pytest.approx(np.median([1.0, (1 + 1 + 0 + 2 / 3 * 1) / 4]))


# --- seeds and evaluation points -----------------------------------------------------------------
def test_background_points_are_seeded_and_keep_their_distance():
    points = ev.background_points(TRUTH, 30, ev.case_rng("case-1", 0, 1))
    again = ev.background_points(TRUTH, 30, ev.case_rng("case-1", 0, 1))
    other = ev.background_points(TRUTH, 30, ev.case_rng("case-2", 0, 1))
    assert points.shape == (30, 3)
    np.testing.assert_array_equal(points, again)
    assert not np.allclose(points, other)
    landmarks = np.array(list(TRUTH.values()))
    nearest = np.linalg.norm(points[:, None, :] - landmarks[None], axis=2).min(axis=1)
    assert np.all(nearest >= 0.9 - 1e-9) and np.all(nearest <= 12.0 + 1e-9)
    assert np.all(nearest[:15] <= 3.6 + 1e-9)  # the near shell
    inside = ev.background_points(TRUTH, 10, np.random.default_rng(3), inside=lambda p: p[2] > 0)
    assert np.all(inside[:, 2] > 0)
    with pytest.raises(InvalidInputError, match="background points"):
        ev.background_points(TRUTH, 5, np.random.default_rng(0), inside=lambda p: False)


def test_random_seed_point_distance_and_reproducibility():
    centroid = np.mean(list(TRUTH.values()), axis=0)
    seeds = [ev.random_seed_point(TRUTH, (1.0, 5.0), ev.case_rng(f"c{i}", 0, 0)) for i in range(50)]
    distances = np.linalg.norm(np.array(seeds) - centroid, axis=1)
    assert np.all(distances >= 1.0) and np.all(distances <= 5.0)
    np.testing.assert_array_equal(seeds[0], ev.random_seed_point(TRUTH, (1.0, 5.0), ev.case_rng("c0", 0, 0)))


# --- the runner with a stand-in detector ---------------------------------------------------------
def _write_case(folder: Path, case_id: str, *, seed_file: bool, kind: str | None = None) -> None:
    """A 48^3 noise volume (0.5 mm) around the truth, its landmark file, optionally a seed and case.json."""
    folder.mkdir(parents=True, exist_ok=True)
    m = np.diag([0.5, 0.5, 0.5, 1.0])
    m[:3, 3] = -12.0
    rng = np.random.default_rng(zlib.crc32(case_id.encode()))
    write_image(Image(rng.integers(-500, 2000, size=(48, 48, 48)).astype(np.int16), m), folder / f"{case_id}.nrrd")
    write_fcsv(PointList(np.array([TRUTH[n] for n in LANDMARK_NAMES]), list(LANDMARK_NAMES)),
               folder / f"{case_id}_landmarks.fcsv")
    if seed_file:
        write_fcsv(PointList(SEED_A[None], ["Seed"]), folder / f"{case_id}_seed.fcsv")
    if kind:
        (folder / "case.json").write_text(json.dumps({"case_id": case_id, "kind": kind}))


@pytest.fixture
def data_dir(tmp_path) -> Path:
    _write_case(tmp_path / "data" / "a", "case_a", seed_file=True, kind="ct")
    _write_case(tmp_path / "data" / "b", "case_b", seed_file=False, kind="cbct")
    return tmp_path / "data"


class FakeDetector:
    method = "fake"
    model_id = "fake-model"
    device = "cpu"
    load_seconds = 0.25


def _fake_detect(calls: list):
    """Finds Helicotrema 0.3 mm off and Modiolus base exactly; the Round Window 3.5 mm off when the seed came
    from a seed file (case_a), else not at all; nothing in mode 'nothing'."""
    def detect(image, seed_ras, *, method, detector, mode, roi_mm, output_maps, progress):
        calls.append({"seed": np.asarray(seed_ras), "mode": mode, "roi_mm": roi_mm, "maps": output_maps})
        if mode == "nothing":
            raise InvalidInputError("No cochlea found within 3.6 mm of the seed.")
        rw = TRUTH["Round Window"] + [0.0, 3.5, 0.0] if np.allclose(seed_ras, SEED_A) else None
        positions = {"Helicotrema": TRUTH["Helicotrema"] + [0.3, 0.0, 0.0], "Modiolus base": TRUTH["Modiolus base"],
                     "Round Window": rw}
        return LandmarkResult("fake", mode, "fake-model", "cpu", np.asarray(seed_ras), positions,
                              {n: 0.8 for n in LANDMARK_NAMES}, timings={"total": 0.125}, patches=42,
                              missing_reasons={} if rw is not None else {"Round Window": "nothing above 0.5"})
    return detect


def test_runner_counts_missing_landmarks_and_uses_seeds(data_dir, monkeypatch):
    import CochleaLandmarksLib.landmark_detection as detection

    calls: list = []
    monkeypatch.setattr(detection, "detect_landmarks", _fake_detect(calls))
    cases = find_landmark_cases(data_dir)
    spec = ev.RunSpec("fake", "fake-model", "fast")
    result = ev.evaluate_landmarks(cases, [spec], detectors={spec: FakeDetector()}, roi_mm=12.0,
                                   seed_offset_mm=(2.0, 2.0), background_count=5)
    assert [c["roi_mm"] for c in calls] == [12.0, 12.0] and not any(c["maps"] for c in calls)
    np.testing.assert_allclose(calls[0]["seed"], [0.0, 0.0, 1.0])  # case_a: its seed file
    centroid = np.mean(list(TRUTH.values()), axis=0)
    assert np.linalg.norm(calls[1]["seed"] - centroid) == pytest.approx(2.0)  # case_b: centroid + 2 mm
    rows = {(r.case_id, r.landmark): r for r in result.errors}
    assert len(rows) == 6
    assert rows["case_a", "Helicotrema"].error_mm == pytest.approx(0.3)
    assert rows["case_a", "Round Window"].error_mm == pytest.approx(3.5)
    missing = rows["case_b", "Round Window"]
    assert not missing.found and missing.failed() and missing.reason == "nothing above 0.5"
    assert rows["case_a", "Helicotrema"].kind == "ct" and rows["case_b", "Helicotrema"].kind == "cbct"
    assert rows["case_b", "Helicotrema"].seed_source == "random"
    assert rows["case_a", "Helicotrema"].detect_s == 0.125 and rows["case_a", "Helicotrema"].patches == 42
    assert result.patches == [] and any("no patch F1" in w for w in result.warnings)
    stats = result.summary()["runs"][0]
    assert stats["run"] == "fake:fake-model:fast" and stats["load_s"] == 0.25
    assert stats["landmarks"]["Round Window"]["failures"] == 2  # one > 3 mm, one missing
    assert stats["landmarks"]["all"]["failures"] == 2 and stats["landmarks"]["all"]["found"] == 5


def test_runner_no_landmark_at_all_is_three_failures(data_dir, monkeypatch):
    import CochleaLandmarksLib.landmark_detection as detection

    monkeypatch.setattr(detection, "detect_landmarks", _fake_detect([]))
    spec = ev.RunSpec("fake", "fake-model", "nothing")
    result = ev.evaluate_landmarks(find_landmark_cases(data_dir)[:1], [spec], detectors={spec: FakeDetector()},
                                   background_count=0)
    assert len(result.errors) == 3 and all(not r.found for r in result.errors)
    assert all("No cochlea found" in r.reason for r in result.errors)
    assert result.summary()["runs"][0]["landmarks"]["all"]["failures"] == 3


def test_runner_patch_f1_with_a_stand_in_classifier(data_dir, monkeypatch):
    import CochleaLandmarksLib.landmark_detection as detection
    import CochleaLandmarksLib.smicnet_detector as smicnet_detector

    def classify_points(detector, image, points):
        landmarks = np.array([TRUTH[n] for n in LANDMARK_NAMES])
        d = np.linalg.norm(np.asarray(points)[:, None] - landmarks[None], axis=2)
        out = np.full((len(points), 4), 0.01)
        out[np.arange(len(points)), np.where(d.min(axis=1) < 0.1, d.argmin(axis=1), 3)] = 0.97
        return out

    monkeypatch.setattr(detection, "detect_landmarks", _fake_detect([]))
    monkeypatch.setattr(smicnet_detector, "classify_points", classify_points)
    det = FakeDetector()
    det.method = "smicnet"
    spec = ev.RunSpec("smicnet", "fake-model", "fast")
    result = ev.evaluate_landmarks(find_landmark_cases(data_dir), [spec], detectors={spec: det},
                                   background_count=6)
    assert len(result.patches) == 2 * (3 + 6)
    assert sum(p.true_class == 3 for p in result.patches) == 12
    f1 = result.summary()["runs"][0]["patch_f1"]
    assert f1["weighted_f1"] == 1.0 and f1["classes"]["background"]["support"] == 12


def test_runner_refuses_bad_settings(data_dir):
    cases = find_landmark_cases(data_dir)
    spec = ev.RunSpec("fake", "m", "fast")
    with pytest.raises(InvalidInputError, match="no case"):
        ev.evaluate_landmarks([], [spec])
    with pytest.raises(InvalidInputError, match="seed offset"):
        ev.evaluate_landmarks(cases, [spec], seed_offset_mm=(5.0, 1.0), detectors={spec: FakeDetector()})
    with pytest.raises(InvalidInputError, match="search region"):
        ev.evaluate_landmarks(cases, [spec], roi_mm=2.0, detectors={spec: FakeDetector()})
    with pytest.raises(InvalidInputError, match="twice"):
        other = ev.RunSpec("fake", "other-name", "fast")  # resolves to the same model id
        ev.evaluate_landmarks(cases, [spec, other], detectors={spec: FakeDetector(), other: FakeDetector()})


def test_seed_outside_the_volume_names_the_case(tmp_path, monkeypatch):
    import CochleaLandmarksLib.landmark_detection as detection

    _write_case(tmp_path / "d", "far", seed_file=False)
    write_fcsv(PointList(np.array([[90.0, 0.0, 0.0]]), ["Seed"]), tmp_path / "d" / "far_seed.fcsv")
    monkeypatch.setattr(detection, "detect_landmarks", _fake_detect([]))
    spec = ev.RunSpec("fake", "m", "fast")
    with pytest.raises(InvalidInputError, match="Case far .*outside the volume"):
        ev.evaluate_landmarks(find_landmark_cases(tmp_path / "d"), [spec], detectors={spec: FakeDetector()})


# --- report files ---------------------------------------------------------------------------------
def _result() -> ev.EvaluationResult:
    runs = [ev.RunInfo(RUN_A, "smicnet", "model-a", "fast", "cpu", 0.5),
            ev.RunInfo(RUN_B, "smicnet", "model-b", "parity", "cpu", 0.25)]
    return ev.EvaluationResult(runs, _rows(), _predictions(), settings={"failure_mm": 3.0, "background_points": 1,
                                                                         "seed_offset_mm": [1.0, 5.0]})


def _strict_json(path: Path):
    def refuse(token):
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_report_files_written_and_read_back(tmp_path):
    result = _result()
    written = report.write_report(result, tmp_path / "out")
    for name in (report.ERRORS_CSV, report.PREDICTIONS_CSV, report.F1_CSV, report.SUMMARY_JSON, report.REPORT_MD):
        assert (tmp_path / "out" / name).is_file(), name
    assert not list((tmp_path / "out").glob(".*tmp*"))  # atomic writes leave no temporary file
    summary = _strict_json(written["summary"])
    a = summary["runs"][0]
    assert a["landmarks"]["Round Window"]["max_mm"] == "inf" and a["landmarks"]["all"]["failures"] == 1
    back = report.read_errors_csv(written["errors"])
    assert len(back) == len(result.errors)
    for got, want in zip(back, result.errors):
        assert (got.run, got.case_id, got.landmark, got.kind, got.found) == \
               (want.run, want.case_id, want.landmark, want.kind, want.found)
        assert got.error_mm == pytest.approx(want.error_mm, abs=1e-4) or (got.error_mm == want.error_mm == math.inf)
    preds = report.read_predictions_csv(written["predictions"])
    assert [(p.true_class, p.predicted_class) for p in preds] == \
           [(p.true_class, p.predicted_class) for p in result.patches]
    f1_rows = (tmp_path / "out" / report.F1_CSV).read_text().splitlines()
    assert f1_rows[0] == "run,class,precision,recall,f1,support"
    assert any(r.startswith(f"{RUN_A},weighted,") for r in f1_rows)
    md = (tmp_path / "out" / report.REPORT_MD).read_text()
    assert "## Side by side" in md and RUN_A in md and RUN_B in md and "not found" in md
    assert "| smicnet:model-a:fast | Round Window | 2 | 1 |" in md
    assert "## By image kind" in md and "## Patch classification" in md
    if "plot" in written:
        assert written["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({report.PLOT_PNG})" in md
    else:
        assert "No plot" in md


def test_load_and_merge_earlier_evaluations(tmp_path):
    result = _result()
    report.write_report(result, tmp_path / "first", plot=False)
    loaded = report.load_evaluation(tmp_path / "first")
    assert [r.run for r in loaded.runs] == [RUN_A, RUN_B] and loaded.runs[0].load_s == 0.5
    assert len(loaded.errors) == 12 and len(loaded.patches) == len(result.patches)
    again = loaded.summary()["runs"][0]["landmarks"]
    assert again["all"]["failures"] == 1 and again["all"]["found"] == 5
    assert again["Helicotrema"]["median_mm"] == pytest.approx(0.35, abs=1e-4)
    with pytest.raises(InputFileError, match="appear in two evaluations"):
        report.merge_results([loaded, loaded])
    with pytest.raises(InputFileError, match="holds no landmark_errors.csv"):
        report.load_evaluation(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / report.ERRORS_CSV).write_text("a,b\n1,2\n")
    with pytest.raises(InputFileError, match="lacks the column"):
        report.load_evaluation(tmp_path / "bad")


# --- command line ---------------------------------------------------------------------------------
def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_choices_match_the_detection_module():
    from CochleaLandmarksLib.landmark_detection import METHODS, MODES

    assert evaluate_cmd.METHOD_CHOICES == METHODS and evaluate_cmd.MODE_CHOICES == MODES


def test_cli_no_cases_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "evaluate", "landmarks", "--data", tmp_path / "empty", "--out", tmp_path / "o")
    assert code == 2 and "cochlea: error: No annotated volume was found" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "evaluate", "landmarks", "--data", tmp_path / "nowhere", "--out", tmp_path / "o")
    assert code == 2 and "does not exist" in err
    assert not (tmp_path / "o").exists()


def test_cli_usage_errors(tmp_path, capsys, data_dir):
    code, _, err = run_cli(capsys, "evaluate", "landmarks", "--data", data_dir, "--out", tmp_path / "o",
                           "--seed-offset-mm", "5,1")
    assert code == 2 and "MIN,MAX" in err
    code, _, err = run_cli(capsys, "evaluate", "landmarks", "--data", data_dir, "--out", tmp_path / "o",
                           "--method", "nonsense")
    assert code == 2 and "invalid choice" in err
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(capsys, "evaluate", "landmarks", "--data", data_dir, "--out", tmp_path / "file")
    assert code == 2 and "is a file" in err
    code, _, err = run_cli(capsys, "evaluate", "landmarks", "--data", data_dir, "--out", tmp_path / "o",
                           "--include", tmp_path)
    assert code == 2 and "holds no landmark_errors.csv" in err
    code, _, err = run_cli(capsys, "evaluate", "landmarks", "--data", data_dir, "--out", tmp_path / "o",
                           "--limit", "0")
    assert code == 2 and "at least 1" in err
    report.write_report(_result(), tmp_path / "earlier", plot=False)
    code, _, err = run_cli(capsys, "evaluate", "landmarks", "--data", data_dir, "--out", tmp_path / "o",
                           "--include", tmp_path / "earlier", "--model", "model-a", "--mode", "fast")
    assert code == 2 and f"{RUN_A} are already in the --include folder" in err
    assert not (tmp_path / "o").exists()


def test_cli_unknown_model_fails_before_any_case(tmp_path, capsys, data_dir, monkeypatch):
    pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")
    monkeypatch.setenv("COCHLEA_TOOLKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("COCHLEA_TOOLKIT_MODEL_DIRS", raising=False)
    code, _, err = run_cli(capsys, "evaluate", "landmarks", "--data", data_dir, "--out", tmp_path / "o",
                           "--model", "no-such-model", "-q")
    assert code == 2 and "no-such-model" in err
    assert not (tmp_path / "o").exists()


# --- end to end with the real detector --------------------------------------------------------------
def _real_model(monkeypatch) -> str:
    """The bundled phantom model when installed, else the authors' 5-volume model from ../shared."""
    from CochleaCommonLib.model_registry import ModelRegistry

    registry = ModelRegistry.load()
    try:
        if "smicnet-phantom" in registry and registry.find("smicnet-phantom") is not None:
            return "smicnet-phantom"
    except Exception:  # a corrupt bundled copy is the registry tests' business; fall back to ../shared
        pass
    if PUBLISHED_5.is_file():
        monkeypatch.setenv("COCHLEA_TOOLKIT_MODEL_DIRS", str(SMICNET_DIR))
        return "smicnet-published-5"
    pytest.skip(f"no SMICNet weights: smicnet-phantom is not installed and {PUBLISHED_5} is absent (../shared)")


@pytest.mark.shared
def test_cli_end_to_end_on_a_small_phantom(tmp_path, capsys, monkeypatch):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")
    from CochleaCommonLib.phantom import generate_case

    monkeypatch.setenv("COCHLEA_TOOLKIT_CACHE", str(tmp_path / "cache"))
    model = _real_model(monkeypatch)
    generate_case("ct", 3, spacing=0.4, fov_mm=26.0).write(tmp_path / "data")
    before = torch.get_num_threads()
    try:
        code, out, err = run_cli(capsys, "evaluate", "landmarks", "--data", tmp_path / "data", "--model", model,
                                 "--mode", "fast", "--roi-mm", "5", "--background-points", "4", "--threads", "1",
                                 "--device", "cpu", "--out", tmp_path / "out", "-q")
    finally:
        torch.set_num_threads(before)
    assert code == 0, err
    rows = report.read_errors_csv(tmp_path / "out" / report.ERRORS_CSV)
    assert [r.landmark for r in rows] == list(LANDMARK_NAMES)
    assert all(r.run == f"smicnet:{model}:fast" and r.kind == "ct" and r.patches > 0 for r in rows)
    assert all(r.found or r.reason for r in rows)  # a missing landmark always says why
    preds = report.read_predictions_csv(tmp_path / "out" / report.PREDICTIONS_CSV)
    assert len(preds) == 3 + 4 and all(abs(sum(p.probabilities) - 1.0) < 1e-3 for p in preds)
    summary = _strict_json(tmp_path / "out" / report.SUMMARY_JSON)
    run = summary["runs"][0]
    assert run["cases"] == 1 and run["landmarks"]["all"]["n"] == 3 and run["timing"]["median_s"] > 0
    assert run["patch_f1"]["samples"] == 7
    assert "## Landmark error (mm)" in (tmp_path / "out" / report.REPORT_MD).read_text()

"""The 3D detector on the command line: ``cochlea landmarks --method detector`` (seeded and seed-free),
``cochlea train detector`` and ``cochlea evaluate landmarks`` comparing methods.

Why hand-built weights: a detector trained for a few steps finds nothing, or something different
after every change to training, so a test built on it would pass either way. The *oracle* model goes
through the real weight file, loader and inference, but its heads are set by hand: a constant heatmap
(every landmark present, confidence sigmoid(6)) and constant displacements that put each landmark at
a fixed offset from the centre of the cube it looks at: Modiolus base on the seed, Helicotrema 3 mm
superior, Round Window 3 mm to the patient's left. The *blind* model has a heat of sigmoid(-8)
everywhere: it never finds a cochlea. Training is still run once, through the CLI, for its outputs.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from CochleaCommonLib.cli.main import main
from CochleaCommonLib.geometry import lps_to_ras
from CochleaCommonLib.image import Image
from CochleaCommonLib.image_io import read_image, write_image
from CochleaCommonLib.markups_io import read_markups

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")

LABELS = ["Helicotrema", "Modiolus base", "Round Window"]
FILES = {"landmarks.fcsv", "landmarks.mrk.json", "report.json", "probability_Helicotrema.nrrd",
         "probability_Modiolus_base.nrrd", "probability_Round_Window.nrrd"}
#: Where the oracle puts each landmark relative to the centre of its coarse cube, in cube voxels (i, j, k);
#: the cube's axes are L, P, S (``detector_geometry.CANONICAL_AXES``) at 0.75 mm.
ORACLE_OFFSETS_VOXELS = {"Helicotrema": (0, 0, 4), "Modiolus base": (0, 0, 0), "Round Window": (4, 0, 0)}
ORACLE_OFFSETS_RAS = {"Helicotrema": (0.0, 0.0, 3.0), "Modiolus base": (0.0, 0.0, 0.0), "Round Window": (-3.0, 0, 0)}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny networks on one thread: on a busy 2-core machine OpenMP spinning makes them far slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Never read or write the developer's real model cache or user registry."""
    monkeypatch.setenv("COCHLEA_TOOLKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("COCHLEA_TOOLKIT_MODEL_DIRS", raising=False)


def _hand_set_detector(path, heat_logit: float, offsets_voxels: dict[str, tuple[int, int, int]]):
    """Detector weights whose heads are constant (see the module docstring); written by the real writer."""
    from CochleaLandmarksLib.detector_model import DISPLACEMENT_SCALE, OUTPUT_STRIDE, build_network
    from CochleaLandmarksLib.detector_readout import VOTE_RADIUS_CELLS
    from CochleaLandmarksLib.detector_stages import STAGES
    from CochleaLandmarksLib.detector_weights import save_detector_weights

    # Constant heat: the peak is cell 0, and cells 0..R (voxels 0, STRIDE, ..., R * STRIDE) vote with equal weight.
    votes_centre = VOTE_RADIUS_CELLS * OUTPUT_STRIDE / 2.0
    networks, stages = {}, {}
    for name in ("coarse", "fine"):
        stage = STAGES[name]
        net = build_network(len(stage.channels), stage.widths).eval()
        bias = np.zeros((len(stage.channels), 3))
        for ch, landmark in enumerate(stage.channels):
            extra = np.array(offsets_voxels[landmark]) if name == "coarse" else np.zeros(3)
            bias[ch] = ((stage.size - 1) / 2.0 + extra - votes_centre) / DISPLACEMENT_SCALE
        with torch.no_grad():
            net.heat.weight.zero_()
            net.heat.bias.fill_(heat_logit)
            net.disp.weight.zero_()
            net.disp.bias.copy_(torch.tensor(bias.reshape(-1), dtype=torch.float32))
        networks[name], stages[name] = net, stage
    return save_detector_weights(networks, stages, path, source={"note": "hand-set test weights"})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("detector_models")
    return {"oracle": _hand_set_detector(folder / "oracle.pt", 6.0, ORACLE_OFFSETS_VOXELS),
            "blind": _hand_set_detector(folder / "blind.pt", -8.0, ORACLE_OFFSETS_VOXELS)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small phantom case (30 mm field of view, 0.4 mm) and a soft-tissue noise volume with no cochlea."""
    from CochleaCommonLib.phantom import generate_case

    folder = tmp_path_factory.mktemp("detector_cases")
    cases = folder / "cases"
    case = generate_case("ct", 5, spacing=0.4, fov_mm=30.0)
    volume = case.write(cases) / f"{case.case_id}.nrrd"
    rng = np.random.default_rng(0)
    noise = (40.0 + 15.0 * rng.standard_normal((60, 60, 60))).astype(np.float32)
    matrix = np.diag([-0.5, -0.5, 0.5, 1.0])
    matrix[:3, 3] = (15.0, 15.0, -15.0)
    write_image(Image(noise, matrix), folder / "soft_tissue.nrrd")
    return {"cases": cases, "volume": volume, "noise": folder / "soft_tissue.nrrd"}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _fcsv_ras(path) -> dict[str, np.ndarray]:
    """Positions from the raw LPS rows of a .fcsv (checks the file, not only our reader)."""
    text = path.read_text()
    assert "# CoordinateSystem = LPS" in text
    rows = [line.split(",") for line in text.splitlines() if not line.startswith("#")]
    return {r[11]: lps_to_ras(np.array([float(v) for v in r[1:4]])) for r in rows}


# --- cochlea landmarks --method detector ---------------------------------------------------------------------
def test_seeded_detector_writes_the_smicnet_contract_in_lps(data, models, tmp_path, capsys):
    image = read_image(data["volume"])
    seed = image.center_ras() + np.array([0.3, -0.2, 0.1])
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "landmarks", data["volume"], "--method", "detector", "--weights",
                            models["oracle"], "--seed=" + ",".join(f"{v:.4f}" for v in seed), "--out", out,
                            "--device", "cpu")
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == FILES
    positions = _fcsv_ras(out / "landmarks.fcsv")
    assert list(positions) == LABELS
    for label in LABELS:
        np.testing.assert_allclose(positions[label], seed + np.array(ORACLE_OFFSETS_RAS[label]), atol=1e-3)
    np.testing.assert_allclose(read_markups(out / "landmarks.mrk.json").position("Round Window"),
                               positions["Round Window"], atol=1e-3)
    assert json.loads((out / "landmarks.mrk.json").read_text())["markups"][0]["coordinateSystem"] == "LPS"
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "detector" and report["mode"] == "fast" and report["device"] == "cpu"
    assert report["seed_free"] is False and report["side"] is None
    assert all(abs(lm["confidence"] - 1.0 / (1.0 + np.exp(-6.0))) < 1e-4 for lm in report["landmarks"])
    assert report["timings_s"]["total"] > 0 and "load_model" in report["timings_s"]
    prob = read_image(out / "probability_Modiolus_base.nrrd")
    np.testing.assert_allclose(prob.ijk_to_ras[:3, :3], image.ijk_to_ras[:3, :3], atol=1e-6)
    assert "Modiolus base" in stdout and "confidence 0.998" in stdout


def test_seed_free_writes_one_folder_per_ear_and_ears_json_last(data, models, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "landmarks", data["volume"], "--method", "detector", "--weights",
                            models["oracle"], "--out", out, "--device", "cpu", "-q")
    assert code == 0, err
    # The oracle confirms a cochlea in every tile, so the tiled search keeps two ears (at least 15 mm apart).
    assert {p.name for p in out.iterdir()} == {"right", "left", "ears.json"}
    summary = json.loads((out / "ears.json").read_text())
    assert summary["sides"] == ["right", "left"] and summary["folders"] == ["right", "left"]
    assert summary["method"] == "detector" and summary["seed_free"] is True and summary["device"] == "cpu"
    assert set(summary["timings_s"]) >= {"load_model", "seed_free_total", "write"}
    bases = {}
    for ear in summary["ears"]:
        folder = out / ear["folder"]
        assert {p.name for p in folder.iterdir()} == FILES  # no staging folder or temporary file left
        assert ear["found"] == LABELS and set(ear["confidences"]) == set(LABELS)
        assert ear["name"].endswith(f"landmarks {ear['side']}")
        assert ear["files"]["fcsv"] == f"{ear['folder']}/landmarks.fcsv"
        report = json.loads((folder / "report.json").read_text())
        assert report["seed_free"] is True and report["side"] == ear["side"]
        positions = _fcsv_ras(folder / "landmarks.fcsv")
        np.testing.assert_allclose(positions["Modiolus base"], report["seed_ras"], atol=1e-3)  # the oracle's answer
        bases[ear["side"]] = positions["Modiolus base"]
    assert np.linalg.norm(bases["right"] - bases["left"]) >= 15.0
    assert bases["right"][0] >= bases["left"][0]  # the right ear is the one further to the patient's right
    assert stdout == ""  # -q


def test_no_cochlea_found_is_a_clean_error_and_writes_nothing(data, models, tmp_path, capsys):
    out = tmp_path / "never"
    code, stdout, err = run(capsys, "landmarks", data["noise"], "--method", "detector", "--weights", models["blind"],
                            "--out", out, "--device", "cpu")
    assert code == 2 and "cochlea: error: No cochlea found in the volume" in err and "Traceback" not in err
    assert stdout == "" and not out.exists()
    code, _, err = run(capsys, "landmarks", data["noise"], "--method", "detector", "--weights", models["blind"],
                       "--seed", "0,0,0", "--out", out, "--device", "cpu")
    assert code == 2 and "No cochlea found within" in err and not out.exists()


def test_bad_method_mode_and_seed_combinations(data, models, tmp_path, capsys):
    out = tmp_path / "never"
    code, _, err = run(capsys, "landmarks", data["volume"], "--out", out)  # smicnet is the default method
    assert code == 2 and "needs a seed point" in err and "--method detector" in err
    code, _, err = run(capsys, "landmarks", data["volume"], "--method", "detector", "--mode", "parity",
                       "--seed", "0,0,0", "--out", out)
    assert code == 2 and "no parity mode" in err
    code, _, err = run(capsys, "landmarks", data["volume"], "--method", "sift", "--seed", "0,0,0", "--out", out)
    assert code == 2 and "invalid choice: 'sift'" in err and "'detector'" in err
    code, _, err = run(capsys, "landmarks", data["volume"], "--method", "detector", "--model", "smicnet-phantom",
                       "--out", out, "--device", "cpu")
    assert code == 2 and "not a 3D detector" in err
    assert not out.exists()


# --- cochlea train detector -------------------------------------------------------------------------------------
def test_train_detector_writes_model_entry_history_and_registers(data, tmp_path, capsys):
    from CochleaCommonLib.model_registry import ModelRegistry
    from CochleaLandmarksLib.landmark_detection import load_detector
    from CochleaLandmarksLib.smicnet_training import user_registry_path

    out = tmp_path / "model"
    code, stdout, err = run(capsys, "train", "detector", "--data", data["cases"], "--out", out, "--model-id",
                            "cli-detector", "--steps-coarse", 2, "--steps-fine", 2, "--batch-size", 2,
                            "--val-cubes", 2, "--eval-every", 1, "--val-fraction", 0, "--device", "cpu",
                            "--threads", 1, "--register", "-q")
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == {"cli-detector.pt", "cli-detector.json", "history.csv"}
    entry = json.loads((out / "cli-detector.json").read_text())
    assert entry["id"] == "cli-detector" and entry["format"] == "cochlea-detector-pt"
    with open(out / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["stage"], r["step"]) for r in rows] == [("coarse", "1"), ("coarse", "2"), ("fine", "1"), ("fine", "2")]
    for fragment in ("model:", "entry:", "history:", "cases:      1 training, 0 validation", "validation: coarse",
                     "validation: fine", "registered: 'cli-detector'"):
        assert fragment in stdout
    registry = ModelRegistry.load(user_registry_path())
    assert registry.locate("cli-detector").sha256 == entry["sha256"]
    detector = load_detector("detector", "cli-detector", device="cpu")  # found by id alone, as --model does
    assert detector.model_id == "cli-detector" and not detector.seed_free


def test_train_detector_base_keeps_the_passes_not_trained(data, models, tmp_path, capsys):
    from CochleaLandmarksLib.detector_weights import load_detector_weights

    out = tmp_path / "model"
    code, stdout, err = run(capsys, "train", "detector", "--data", data["cases"], "--base", models["oracle"],
                            "--stages", "fine", "--steps-fine", 1, "--batch-size", 1, "--val-cubes", 1,
                            "--model-id", "refined", "--out", out, "--device", "cpu", "--threads", 1, "-q")
    assert code == 0, err
    assert "fine trained, coarse kept from" in stdout and "coarse no figures recorded (kept from" in stdout
    networks, _, source = load_detector_weights(out / "refined.pt")
    assert set(networks) == {"coarse", "fine"} and source["base"]["passes_kept"] == ["coarse"]
    assert float(networks["coarse"].heat.bias.detach()[0]) == 6.0  # the oracle's coarse pass, untouched
    assert float(networks["fine"].heat.bias.detach()[0]) != 6.0  # a freshly trained fine pass


def test_train_detector_input_errors_come_before_any_work(data, tmp_path, capsys):
    out = tmp_path / "never"
    common = ("--out", out, "--device", "cpu")
    code, _, err = run(capsys, "train", "detector", "--data", data["cases"], "--stages", "coarse,fine,global", *common)
    assert code == 2 and "needs head volumes" in err and "--heads" in err
    code, _, err = run(capsys, "train", "detector", "--data", data["cases"], "--heads", data["cases"], "--stages",
                       "coarse,fine", *common)
    assert code == 2 and "global pass only" in err
    code, _, err = run(capsys, "train", "detector", "--data", data["cases"], "--stages", "coarse", *common)
    assert code == 2 and "coarse and the fine pass" in err
    code, _, err = run(capsys, "train", "detector", "--data", data["cases"], "--stages", "coarse,fine,medium", *common)
    assert code == 2 and "Unknown detector pass(es) medium" in err
    code, _, err = run(capsys, "train", "detector", *common)
    assert code == 2 and "give --data DIR" in err
    code, _, err = run(capsys, "train", "detector", "--data", tmp_path / "nowhere", *common)
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "train", "detector", "--data", data["cases"], "--model-id", "Bad Id", *common)
    assert code == 2 and "model id" in err
    code, _, err = run(capsys, "train", "detector", "--data", data["cases"], "--val-fraction", "1", *common)
    assert code == 2 and "--val-fraction" in err
    code, _, err = run(capsys, "train", "detector", "--data", data["cases"], "--steps-fine", "0", *common)
    assert code == 2 and "at least 1" in err
    assert not out.exists()
    code, stdout, _ = run(capsys, "train", "--help")
    assert code == 0 and "detector" in stdout and "smicnet" in stdout


# --- cochlea evaluate landmarks with several methods --------------------------------------------------------------
def test_evaluate_compares_smicnet_and_detector_side_by_side(data, models, tmp_path, capsys):
    from CochleaLandmarksLib import evaluation_report as report

    out = tmp_path / "eval"
    code, stdout, err = run(capsys, "evaluate", "landmarks", "--data", data["cases"], "--method",
                            "smicnet", "--method", "detector", "--model", f"detector={models['oracle']}",
                            "--roi-mm", 5, "--background-points", 0, "--device", "cpu", "--threads", 1,
                            "--no-plot", "--out", out, "-q")
    assert code == 0, err
    rows = report.read_errors_csv(out / report.ERRORS_CSV)
    runs = list(dict.fromkeys(r.run for r in rows))
    assert len(runs) == 2 and runs[0] == "smicnet:smicnet-phantom:fast"
    assert runs[1].startswith("detector:") and runs[1].endswith(":fast")
    detector_rows = [r for r in rows if r.method == "detector"]
    assert [r.landmark for r in detector_rows] == LABELS and all(r.found for r in detector_rows)
    # The oracle answers seed + fixed offsets, and the simulated click is 1..5 mm from the landmark centroid.
    base = next(r for r in detector_rows if r.landmark == "Modiolus base")
    assert 0.0 < base.error_mm < 5.0 + 4.0
    summary = json.loads((out / report.SUMMARY_JSON).read_text())
    assert [r["run"] for r in summary["runs"]] == runs
    assert stdout == ""  # -q


def test_evaluate_method_model_and_mode_arguments(data, tmp_path, capsys):
    from CochleaCommonLib.cli import evaluate as evaluate_cmd
    from CochleaLandmarksLib.landmark_detection import METHODS, MODES

    assert evaluate_cmd.METHOD_CHOICES == METHODS and evaluate_cmd.MODE_CHOICES == MODES
    runs, notes = evaluate_cmd.runs_from_arguments(["smicnet", "detector"], None, ["fast", "parity"])
    assert [(r.method, r.model, r.mode) for r in runs] == [
        ("smicnet", "smicnet-phantom", "fast"), ("smicnet", "smicnet-phantom", "parity"),
        ("detector", "detector-phantom", "fast")]
    assert len(notes) == 1 and "no parity mode" in notes[0]
    runs, _ = evaluate_cmd.runs_from_arguments(["detector"], ["a.pt", "detector=b"], None)
    assert [(r.method, r.model) for r in runs] == [("detector", "a.pt"), ("detector", "b")]
    runs, _ = evaluate_cmd.runs_from_arguments(None, ["x=y.pt"], None)  # not a method prefix: part of the name
    assert [(r.method, r.model) for r in runs] == [("smicnet", "x=y.pt")]

    out = tmp_path / "never"
    base = ("evaluate", "landmarks", "--data", data["cases"], "--out", out)
    code, _, err = run(capsys, *base, "--method", "smicnet", "--method", "detector", "--model", "m1")
    assert code == 2 and "ambiguous" in err and "METHOD=ID" in err
    code, _, err = run(capsys, *base, "--method", "detector", "--mode", "parity")
    assert code == 2 and "no parity mode" in err
    code, _, err = run(capsys, *base, "--model", "detector=x.pt")
    assert code == 2 and "add --method detector" in err
    code, _, err = run(capsys, *base, "--method", "nonsense")
    assert code == 2 and "invalid choice" in err
    assert not out.exists()

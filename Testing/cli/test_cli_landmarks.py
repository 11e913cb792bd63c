"""``cochlea landmarks`` end to end with the bundled weights: the file contract, accuracy on a phantom,
and the exit status and message of every kind of bad input.

The phantom is small (30 mm field of view) and the search cube 13 mm so the CPU run stays short;
the full 21 mm default is measured by ``benchmarks/bench_landmarks.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from CochleaCommonLib.cli.main import main
from CochleaCommonLib.geometry import lps_to_ras
from CochleaCommonLib.image_io import read_image
from CochleaCommonLib.markups_io import read_markups, write_markups
from CochleaCommonLib.points import PointList

torch = pytest.importorskip("torch")

LABELS = ["Helicotrema", "Modiolus base", "Round Window"]
MAPS = ["probability_Helicotrema.nrrd", "probability_Modiolus_base.nrrd", "probability_Round_Window.nrrd"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from CochleaCommonLib.phantom import generate_case

    torch.set_num_threads(1)
    case = generate_case("ct", seed=3, fov_mm=30.0)
    folder = case.write(tmp_path_factory.mktemp("phantom"))
    seed = case.landmarks.positions_ras.mean(axis=0) + np.array([0.5, -0.6, 0.4])
    seed_file = folder / "seed.mrk.json"
    write_markups(PointList(seed[None], ["Seed"]), seed_file)
    return {"volume": folder / f"{case.case_id}.nrrd", "label": folder / f"{case.case_id}-label.nrrd",
            "seed": seed, "seed_file": seed_file,
            "truth": dict(zip(case.landmarks.labels, case.landmarks.positions_ras))}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_landmarks_writes_the_contract_and_finds_the_phantom_landmarks(phantom, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "landmarks", phantom["volume"], "--seed", phantom["seed_file"], "--out", out,
                            "--device", "cpu", "--roi-mm", "13", "-q")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(["landmarks.fcsv", "landmarks.mrk.json", "report.json",
                                                             *MAPS])
    text = (out / "landmarks.fcsv").read_text()
    assert "# CoordinateSystem = LPS" in text
    rows = [line.split(",") for line in text.splitlines() if not line.startswith("#")]
    assert [r[11] for r in rows] == LABELS  # the three labels, in order
    points = read_markups(out / "landmarks.fcsv")
    for label, position_lps in zip(LABELS, rows):
        ras = lps_to_ras(np.array([float(v) for v in position_lps[1:4]]))
        np.testing.assert_allclose(points.position(label), ras, atol=1e-3)
        assert np.linalg.norm(ras - phantom["truth"][label]) < 1.5, label
    assert json.loads((out / "landmarks.mrk.json").read_text())["markups"][0]["coordinateSystem"] == "LPS"
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "smicnet-phantom" and report["device"] == "cpu" and report["mode"] == "fast"
    assert [lm["label"] for lm in report["landmarks"]] == LABELS
    assert all(0.0 < lm["confidence"] <= 1.0 for lm in report["landmarks"])
    assert report["timings_s"]["total"] > 0 and report["patches_scored"] > 0
    volume = read_image(phantom["volume"])
    for name in MAPS:  # on the input's lattice: same axes and spacing, voxel centres on input voxel centres
        prob = read_image(out / name)
        np.testing.assert_allclose(prob.ijk_to_ras[:3, :3], volume.ijk_to_ras[:3, :3], atol=1e-6)
        index = volume.ras_to_continuous_index(prob.index_to_ras([0, 0, 0]))
        np.testing.assert_allclose(index, np.round(index), atol=1e-4)
        assert 0.0 <= prob.array.min() and prob.array.max() <= 1.0


def test_seed_as_numbers_outside_the_volume_and_other_bad_input(phantom, tmp_path, capsys):
    out = tmp_path / "never"
    r, a, s = phantom["seed"] + 200.0
    code, _, err = run(capsys, "landmarks", phantom["volume"], "--seed", f"{r},{a},{s}", "--out", out)
    assert code == 2 and "lies outside the volume" in err and "Traceback" not in err
    code, _, err = run(capsys, "landmarks", phantom["volume"], "--seed", "1,2", "--out", out)
    assert code == 2 and "three numbers R,A,S" in err
    code, _, err = run(capsys, "landmarks", phantom["label"], "--seed", phantom["seed_file"], "--out", out)
    assert code == 2 and "label map" in err
    code, _, err = run(capsys, "landmarks", phantom["volume"], "--seed", phantom["seed_file"], "--out", out,
                       "--weights", tmp_path / "missing.pt")
    assert code == 2 and "missing.pt" in err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a weight file" * 10)
    code, _, err = run(capsys, "landmarks", phantom["volume"], "--seed", phantom["seed_file"], "--out", out,
                       "--weights", corrupt)
    assert code == 2 and "corrupt.pt" in err
    code, _, err = run(capsys, "landmarks", phantom["volume"], "--seed", phantom["seed_file"], "--out", out,
                       "--model", "no-such-model")
    assert code == 2 and "no-such-model" in err
    code, _, err = run(capsys, "landmarks", phantom["volume"], "--seed", "1,2,3", "--out", out, "--model", "x",
                       "--weights", "y.pt")
    assert code == 2 and "not allowed with argument" in err
    assert not out.exists()  # no failed run created the output folder


def test_the_command_loads_its_detector_for_one_run(phantom, tmp_path, capsys, monkeypatch):
    """``cochlea landmarks`` detects once and exits: it asks for a one-shot detector (no CUDA autotuning or graphs)."""
    from CochleaLandmarksLib import landmark_detection

    asked = []
    real = landmark_detection.load_detector
    monkeypatch.setattr(landmark_detection, "load_detector", lambda *a, **k: asked.append(k) or real(*a, **k))
    code, _, err = run(capsys, "landmarks", phantom["volume"], "--seed", phantom["seed_file"], "--out",
                       tmp_path / "out", "--device", "cpu", "--roi-mm", "10", "-q")
    assert code == 0, err
    assert [k.get("one_shot") for k in asked] == [True]


def test_a_run_on_nrrd_files_never_imports_simpleitk(phantom, tmp_path):
    """Importing SimpleITK costs 0.2-0.3 s, a tenth of the command's 3 s budget: NRRD in and out (nrrd_io), the
    resampling to 0.3 mm (separable_resample) and the island labelling (connected_components) avoid it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    argv = ["landmarks", str(phantom["volume"]), "--seed", str(phantom["seed_file"]), "--out", str(tmp_path / "out"),
            "--device", "cpu", "--roi-mm", "13", "-q"]
    code = ("import sys\n"
            "from CochleaCommonLib.cli.main import main\n"
            f"status = main({argv!r})\n"
            "print(status, 'SimpleITK' in sys.modules)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(root / d) for d in ("CochleaCommon", "CochleaLandmarks"))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "False"], done.stdout + done.stderr
    assert read_image(phantom["volume"]).spacing != pytest.approx(0.3)  # the run resampled its volume

"""The ``cochlea`` command line, in-process through ``main([...])`` and once through the installed script.

Checks what a user sees: exit statuses (0 ok, 2 user error, 1 bug), ``cochlea: error: ...`` messages
without tracebacks, and that conversions keep geometry and coordinate systems.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from CochleaCommonLib import __version__
from CochleaCommonLib.cli import convert as convert_cmd
from CochleaCommonLib.cli.main import build_parser, main
from CochleaCommonLib.image_io import read_image, write_image
from CochleaCommonLib.model_registry import ModelEntry, register_user_model
from geometry_cases import oblique_image

REPO_ROOT = Path(__file__).resolve().parents[2]
SMICNET_DIR = REPO_ROOT.parent / "shared" / "models" / "smicnet"

FCSV_LPS = """# Markups fiducial file version = 5.2
# CoordinateSystem = LPS
# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID
1,-1.5,2.25,3,0,0,0,1,1,1,0,Helicotrema,apex,,2,0
2,10,-20.5,-30.125,0,0,0,1,1,1,0,Modiolus base,,,2,0
3,0.5,0.25,7,0,0,0,1,1,1,0,Round Window,,,2,0
"""
LPS = np.array([[-1.5, 2.25, 3.0], [10.0, -20.5, -30.125], [0.5, 0.25, 7.0]])
RAS = LPS * [-1, -1, 1]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Never read or write the developer's real model cache."""
    monkeypatch.setenv("COCHLEA_TOOLKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("COCHLEA_TOOLKIT_MODEL_DIRS", raising=False)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def control_points(path: Path):
    markup = json.loads(path.read_text())["markups"][0]
    return markup["coordinateSystem"], [cp["label"] for cp in markup["controlPoints"]], \
        np.array([cp["position"] for cp in markup["controlPoints"]])


# --- parser -------------------------------------------------------------------------------
def test_subcommands_are_discovered():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"info", "convert", "models"} <= set(sub.choices)


def test_help_and_version_exit_zero(capsys):
    assert main(["--help"]) == 0
    assert "convert" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"cochlea {__version__}"


def test_usage_errors_exit_two(capsys):
    assert main([]) == 2
    assert "required" in capsys.readouterr().err
    assert main(["convert", "only-one-argument"]) == 2
    assert main(["convert", "a.nrrd", "b.nii", "--coordinate-system", "XYZ"]) == 2


# --- info ---------------------------------------------------------------------------------
def test_info_text(capsys):
    code, out, err = run(capsys, "info")
    assert code == 0, err
    assert out.startswith(f"CochleaToolkit {__version__}")
    for word in ("numpy", "SimpleITK", "vtk", "torch", "Devices", "cpu", "default:", "Models", "smicnet-published-1"):
        assert word in out
    assert "cochlea models download smicnet-published-1" in out  # nothing in the isolated cache


def test_info_json(capsys):
    from importlib import metadata

    code, out, _ = run(capsys, "info", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["cochlea_toolkit"] == __version__ and info["python"] == sys.version.split()[0]
    assert info["packages"]["numpy"] == metadata.version("numpy")
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    assert info["packages"]["torch"] == torch_version
    assert info["devices"][0]["name"] == "cpu"
    published = [m for m in info["models"] if m["id"].startswith("smicnet-published-")]
    assert [m["id"] for m in published] == [f"smicnet-published-{n}" for n in (1, 3, 5, 7, 9, 11)]
    assert {m["state"] for m in published} == {"missing"}  # downloaded on demand, never committed
    bundled = {m["id"]: m for m in info["models"] if m not in published}
    assert bundled["smicnet-phantom"]["state"] == "ok" and bundled["smicnet-phantom"]["origin"] == "bundled"


@pytest.mark.skipif(not SMICNET_DIR.is_dir(), reason=f"../shared is absent ({SMICNET_DIR})")
@pytest.mark.shared
def test_info_reports_checksums_of_found_models(capsys, monkeypatch):
    monkeypatch.setenv("COCHLEA_TOOLKIT_MODEL_DIRS", str(SMICNET_DIR))
    code, out, _ = run(capsys, "info", "--json")
    models = json.loads(out)["models"]
    origins = {m["id"]: m["origin"] for m in models}
    assert code == 0 and {m["state"] for m in models} == {"ok"}
    assert {origins[f"smicnet-published-{n}"] for n in (1, 3, 5, 7, 9, 11)} == {"search dir"}
    assert origins["smicnet-phantom"] == "bundled"


def test_info_survives_a_broken_registry(capsys, tmp_path):
    broken = tmp_path / "models.json"
    broken.write_text("{")
    code, out, _ = run(capsys, "info", "--registry", broken)
    assert code == 0 and "the registry cannot be used" in out and "not valid JSON" in out


# --- convert: volumes ---------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", ".nrrd"])
def test_convert_volume_keeps_oblique_geometry(capsys, tmp_path, suffix):
    image = oblique_image()
    src = write_image(image, tmp_path / "in.nrrd")
    dst = tmp_path / f"out{suffix}"
    code, out, err = run(capsys, "convert", src, dst)
    assert code == 0, err
    assert f"Wrote {dst}" in out and "13 x 11 x 9 voxels" in out
    back = read_image(dst)
    assert np.array_equal(back.array, image.array)
    assert np.allclose(back.ijk_to_ras, image.ijk_to_ras, atol=1e-6)


def test_convert_dicom_options_only_for_dicom(capsys, tmp_path):
    src = write_image(oblique_image(), tmp_path / "in.nrrd")
    code, _, err = run(capsys, "convert", src, tmp_path / "o.nii", "--series-uid", "1.2.3")
    assert code == 2 and "--series-uid applies to DICOM input only" in err
    code, _, err = run(capsys, "convert", src, tmp_path / "o.nii", "--coordinate-system", "RAS")
    assert code == 2 and "markups and meshes only" in err
    assert not (tmp_path / "o.nii").exists()


# --- convert: markups ---------------------------------------------------------------------
def test_convert_fcsv_to_mrk_json_default_lps(capsys, tmp_path):
    src = tmp_path / "points.fcsv"
    src.write_text(FCSV_LPS)
    code, out, err = run(capsys, "convert", src, tmp_path / "points.mrk.json")
    assert code == 0, err
    assert "3 point(s), LPS" in out
    system, labels, positions = control_points(tmp_path / "points.mrk.json")
    assert system == "LPS" and labels == ["Helicotrema", "Modiolus base", "Round Window"]
    assert np.allclose(positions, LPS)


def test_convert_fcsv_to_mrk_json_in_ras(capsys, tmp_path):
    src = tmp_path / "points.fcsv"
    src.write_text(FCSV_LPS)
    code, _, err = run(capsys, "convert", src, tmp_path / "ras.mrk.json", "--coordinate-system", "ras")
    assert code == 0, err
    system, _, positions = control_points(tmp_path / "ras.mrk.json")
    assert system == "RAS" and np.allclose(positions, RAS)


def test_convert_markups_round_trip_back_to_fcsv(capsys, tmp_path):
    src = tmp_path / "points.fcsv"
    src.write_text(FCSV_LPS)
    assert run(capsys, "convert", src, tmp_path / "a.mrk.json", "--coordinate-system", "RAS")[0] == 0
    assert run(capsys, "convert", tmp_path / "a.mrk.json", tmp_path / "b.fcsv")[0] == 0
    from CochleaCommonLib.markups_io import read_markups

    back = read_markups(tmp_path / "b.fcsv")
    assert "# CoordinateSystem = LPS" in (tmp_path / "b.fcsv").read_text()
    assert back.labels == ["Helicotrema", "Modiolus base", "Round Window"]
    assert np.allclose(back.positions_ras, RAS)


# --- convert: meshes ----------------------------------------------------------------------
def test_convert_mesh_between_formats(capsys, tmp_path):
    from CochleaCommonLib.mesh_io import Mesh, read_mesh, write_mesh

    vertices = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 2.5]]) + [-3.0, 7.0, 11.0]
    mesh = Mesh(vertices, np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]]))
    src = write_mesh(mesh, tmp_path / "m.vtk")
    code, out, err = run(capsys, "convert", src, tmp_path / "m.obj")
    assert code == 0, err
    assert "4 vertices, 4 triangles" in out
    back = read_mesh(tmp_path / "m.obj")
    assert np.allclose(back.vertices_ras, vertices) and back.triangles.shape == (4, 3)


def test_convert_extension_tables_match_the_io_modules():
    from CochleaCommonLib import markups_io, mesh_io

    assert set(convert_cmd.MESH) == set(mesh_io.MESH_SUFFIXES)
    assert set(convert_cmd.MARKUPS) <= set(markups_io.MARKUPS_SUFFIXES)


# --- convert: errors ----------------------------------------------------------------------
def test_missing_input_is_a_clean_error(capsys, tmp_path):
    code, out, err = run(capsys, "convert", tmp_path / "absent.nrrd", tmp_path / "out.nii")
    assert code == 2 and out == ""
    assert err == f"cochlea: error: The file {tmp_path / 'absent.nrrd'} does not exist. Check the path.\n"
    assert not (tmp_path / "out.nii").exists()


@pytest.mark.parametrize("output, fragment", [
    ("out.xyz", "cannot write '.xyz'"),
    ("out", "cannot write 'files without an extension'"),
    ("out.dcm", "cannot write '.dcm'"),
])
def test_unsupported_output_extension(capsys, tmp_path, output, fragment):
    src = write_image(oblique_image(), tmp_path / "in.nrrd")
    code, _, err = run(capsys, "convert", src, tmp_path / output)
    assert code == 2 and err.startswith("cochlea: error: ") and fragment in err and "Supported:" in err
    assert "Traceback" not in err


def test_unsupported_input_extension(capsys, tmp_path):
    src = tmp_path / "notes.txt"
    src.write_text("hello")
    code, _, err = run(capsys, "convert", src, tmp_path / "out.nrrd")
    assert code == 2 and "cannot read '.txt'" in err


@pytest.mark.parametrize("source, output, fragment", [
    ("in.nrrd", "out.fcsv", "Cannot convert a volume (in.nrrd) into a markups point list (out.fcsv)"),
    ("points.fcsv", "out.nrrd", "Cannot convert a markups point list (points.fcsv) into a volume (out.nrrd)"),
    ("points.fcsv", "out.stl", "into a surface mesh"),
])
def test_mismatched_kinds(capsys, tmp_path, source, output, fragment):
    write_image(oblique_image(), tmp_path / "in.nrrd")
    (tmp_path / "points.fcsv").write_text(FCSV_LPS)
    code, _, err = run(capsys, "convert", tmp_path / source, tmp_path / output)
    assert code == 2 and fragment in err
    assert not (tmp_path / output).exists()


def test_corrupt_input_is_a_clean_error(capsys, tmp_path):
    src = tmp_path / "broken.fcsv"
    src.write_text("1,2,3\n")
    code, _, err = run(capsys, "convert", src, tmp_path / "out.mrk.json")
    assert code == 2 and err.startswith("cochlea: error: broken.fcsv") and "Traceback" not in err


def test_verbose_shows_the_traceback(capsys, tmp_path):
    code, _, err = run(capsys, "convert", "-v", tmp_path / "absent.nrrd", tmp_path / "o.nii")
    assert code == 2 and "Traceback" in err and "InputFileError" in err
    assert err.rstrip().endswith("Check the path.")


def test_unexpected_exception_is_reported_as_a_bug(capsys, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(convert_cmd, "convert", boom)
    code, _, err = run(capsys, "convert", tmp_path / "a.nrrd", tmp_path / "b.nrrd")
    assert code == 1 and "internal error: ZeroDivisionError" in err and "--verbose" in err
    assert "Traceback" not in err


# --- models -------------------------------------------------------------------------------
GOOD = b"toy weights\n" * 50


@pytest.fixture
def toy_registry(tmp_path):
    """A registry whose one model downloads from a file:// URL (exercises the real default fetcher)."""
    served = tmp_path / "served" / "toy.pt"
    served.parent.mkdir()
    served.write_bytes(GOOD)
    entry = ModelEntry(id="toy", version="1.0", task="test", input={}, file="toy.pt",
                       sha256=hashlib.sha256(GOOD).hexdigest(), source="test", license="Apache-2.0",
                       url=served.as_uri(), format="pytorch", description="toy")
    return register_user_model(entry, tmp_path / "models.json")


def test_models_list_download_verify(capsys, tmp_path, toy_registry):
    code, out, _ = run(capsys, "models", "list", "--registry", toy_registry)
    assert code == 0 and "toy" in out and "not installed" in out
    code, _, err = run(capsys, "models", "verify", "toy", "--registry", toy_registry)
    assert code == 2 and "were not found" in err and "cochlea models download toy" in err
    code, out, err = run(capsys, "models", "download", "toy", "--registry", toy_registry)
    assert code == 0, err
    cached = tmp_path / "cache" / "models" / "toy-v1.0" / "toy.pt"
    assert f"toy: downloaded, SHA256 verified: {cached}" in out and cached.read_bytes() == GOOD
    assert "100%" in err  # the progress bar went to stderr
    code, out, _ = run(capsys, "models", "list", "--json", "--registry", toy_registry)
    assert json.loads(out)[0]["state"] == "ok"
    assert run(capsys, "models", "verify", "--registry", toy_registry)[0] == 0
    cached.write_bytes(b"x" * len(GOOD))
    code, out, err = run(capsys, "models", "verify", "--registry", toy_registry)
    assert code == 2 and "CORRUPT" in out and "1 model file(s) are corrupt" in err
    code, out, _ = run(capsys, "-q", "models", "download", "toy", "--registry", toy_registry)
    assert code == 0 and "downloaded" in out and cached.read_bytes() == GOOD


def test_models_download_needs_ids_and_rejects_unknown_ones(capsys, toy_registry):
    code, _, err = run(capsys, "models", "download", "--registry", toy_registry)
    assert code == 2 and "Name the model id(s)" in err
    code, _, err = run(capsys, "models", "download", "toy", "nope", "--registry", toy_registry)
    assert code == 2 and "Unknown model 'nope'. Known models: toy." in err
    assert not (Path(os.environ["COCHLEA_TOOLKIT_CACHE"]) / "models").exists()  # nothing fetched first


def test_models_import(capsys, tmp_path, toy_registry):
    wrong = tmp_path / "wrong.pt"
    wrong.write_bytes(b"other")
    code, _, err = run(capsys, "models", "import", "toy", wrong, "--registry", toy_registry)
    assert code == 2 and "is not the weights file of model 'toy'" in err
    right = tmp_path / "from-browser.pt"
    right.write_bytes(GOOD)
    code, out, _ = run(capsys, "models", "import", "toy", right, "--registry", toy_registry)
    assert code == 0 and "imported" in out
    assert run(capsys, "models", "verify", "toy", "--registry", toy_registry)[0] == 0


# --- the installed console script ---------------------------------------------------------
def cochlea_script() -> str:
    candidate = Path(sys.executable).parent / ("cochlea.exe" if os.name == "nt" else "cochlea")
    found = str(candidate) if candidate.exists() else shutil.which("cochlea")
    if not found:
        pytest.skip("the `cochlea` console script is not installed (pip install -e .)")
    return found


def test_installed_console_script(tmp_path, toy_registry):
    script = cochlea_script()
    env = {**os.environ, "COCHLEA_TOOLKIT_CACHE": str(tmp_path / "cache")}
    info = subprocess.run([script, "info", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["cochlea_toolkit"] == __version__
    bad = subprocess.run([script, "convert", str(tmp_path / "absent.nrrd"), str(tmp_path / "o.nii")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("cochlea: error: The file") and "Traceback" not in bad.stderr
    download = subprocess.run([script, "models", "download", "toy", "--registry", str(toy_registry)],
                              capture_output=True, text=True, env=env, timeout=120)
    assert download.returncode == 0, download.stderr
    assert (tmp_path / "cache" / "models" / "toy-v1.0" / "toy.pt").read_bytes() == GOOD

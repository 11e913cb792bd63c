"""SMICNet training: patch geometry in world space, class balance, the training run, its outputs and the CLI.

Geometry is checked against a volume filled with a linear function of the RAS position: linear
interpolation (ITK's resampling and torch's trilinear sampling) reproduces it exactly, so every
sampled pixel can be compared with the world point it should come from, on oblique and mirrored grids.
Training runs are tiny (a few steps on 3 small phantoms, one CPU thread); they check the plumbing,
not the accuracy.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from CochleaCommonLib.cli.main import main
from CochleaCommonLib.errors import InvalidInputError, MissingDependencyError
from CochleaCommonLib.geometry import rotation_matrix
from CochleaCommonLib.image import Image
from CochleaCommonLib.model_registry import ModelEntry, ModelRegistry
from CochleaLandmarksLib.landmark_dataset import find_landmark_cases
from CochleaLandmarksLib.smicnet_model import BACKGROUND_CLASS, CLASS_NAMES
from CochleaLandmarksLib.smicnet_training_data import TrainingVolume, prepare_volume

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")

from CochleaLandmarksLib import smicnet_training as st  # noqa: E402
from CochleaLandmarksLib.smicnet_augment import AugmentConfig, PatchSampler, rotation_matrices  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NAMES = CLASS_NAMES[:3]
TINY = dict(epochs=2, steps_per_epoch=2, batch_size=8, val_samples=16, patience=5, device="cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Never read or write the developer's real model cache."""
    monkeypatch.setenv("COCHLEA_TOOLKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("COCHLEA_TOOLKIT_MODEL_DIRS", raising=False)


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """Three small phantom cases (CT left, CBCT right, CT right; 26 mm field of view) written once."""
    from CochleaCommonLib.phantom import generate_case

    out = tmp_path_factory.mktemp("smicnet_phantoms")
    for kind, seed, side in (("ct", 1, "left"), ("cbct", 2, "right"), ("ct", 3, "right")):
        generate_case(kind, seed, spacing=0.4, fov_mm=26.0, side=side).write(out)
    return out


# --- geometry on synthetic volumes -------------------------------------------------------------------------
def _grid_volume(shape_kji=(100, 96, 92), seed=0) -> TrainingVolume:
    """Random voxels on an identity grid; landmarks at integer voxels so whole 81x81 patches fit inside."""
    rng = np.random.default_rng(seed)
    array = rng.random(shape_kji, dtype=np.float32)
    lm = np.array([[45.0, 48.0, 50.0], [47.0, 44.0, 52.0], [43.0, 50.0, 46.0]])
    return TrainingVolume("grid", array, np.eye(4), lm, np.array([5.0, 5.0, 5.0]), np.array([85.0, 90.0, 94.0]),
                          (0.3, 0.3, 0.3), False)


def test_unrotated_patches_are_the_voxels_with_the_landmark_at_pixel_40():
    vol = _grid_volume()
    sampler = PatchSampler([vol])
    v = vol.array.T  # SMICNet's vol[i, j, k]
    i, j, k = vol.landmarks_ijk[0].astype(int)
    centres = torch.tensor(np.array([vol.landmarks_ijk[0]] * 2), dtype=torch.float32)
    patches = sampler.extract(torch.zeros(2, dtype=torch.int64), centres, torch.tensor([False, True])).numpy()
    # grid_sample maps indices to [-1, 1] and back in float32: equal up to ~1e-5 voxel of interpolation
    np.testing.assert_allclose(patches[0], v[i, j - 40:j + 41, k - 40:k + 41], atol=2e-5)  # rows j, columns k
    np.testing.assert_allclose(patches[1], v[i - 40:i + 41, j, k - 40:k + 41], atol=2e-5)  # coronal: rows i
    assert patches[0][40, 40] == pytest.approx(v[i, j, k], abs=2e-5)


def test_the_authors_convention_puts_the_landmark_at_pixel_41():
    """Fine-tuning the published weights samples their unrotated crop (landmark at pixel 41), not ours."""
    vol = _grid_volume()
    sampler = PatchSampler([vol], landmark_pixel=41)
    v = vol.array.T
    i, j, k = vol.landmarks_ijk[0].astype(int)
    centres = torch.tensor(np.array([vol.landmarks_ijk[0]] * 2), dtype=torch.float32)
    patches = sampler.extract(torch.zeros(2, dtype=torch.int64), centres, torch.tensor([False, True])).numpy()
    np.testing.assert_allclose(patches[0], v[i, j - 41:j + 40, k - 41:k + 40], atol=2e-5)
    np.testing.assert_allclose(patches[1], v[i - 41:i + 40, j, k - 41:k + 40], atol=2e-5)
    assert patches[0][41, 41] == pytest.approx(v[i, j, k], abs=2e-5)
    with pytest.raises(InvalidInputError, match="pixel 40 .* or 41"):
        PatchSampler([vol], landmark_pixel=39)


def test_rotation_and_scale_keep_the_centre_value():
    vol = _grid_volume()
    sampler = PatchSampler([vol])
    n = 8
    centre = torch.tensor(vol.landmarks_ijk[1] + [0.31, -0.27, 0.44], dtype=torch.float32).expand(n, 3)
    coronal = torch.arange(n) % 2 == 1
    angles = torch.linspace(0.3, 5.5, n)
    rotation = rotation_matrices(coronal, angles, angles / 30, -angles / 40)
    assert torch.allclose(rotation @ rotation.transpose(1, 2), torch.eye(3).expand(n, 3, 3), atol=1e-5)
    case = torch.zeros(n, dtype=torch.int64)
    plain = sampler.extract(case, centre, coronal)
    turned = sampler.extract(case, centre, coronal, rotation, torch.full((n,), 1.05))
    np.testing.assert_allclose(turned[:, 40, 40].numpy(), plain[:, 40, 40].numpy(), atol=1e-5)
    assert not torch.allclose(turned, plain)


def _linear_image(direction: np.ndarray, spacing, size: int = 44) -> tuple[Image, dict[str, np.ndarray]]:
    """Voxel value = f(RAS) = 1000 + 2 R - 3 A + 5 S on a grid centred near the origin."""
    m = np.eye(4)
    m[:3, :3] = direction * np.asarray(spacing)[None, :]
    m[:3, 3] = -m[:3, :3] @ np.full(3, (size - 1) / 2.0) + [0.13, -0.21, 0.07]
    k, j, i = np.indices((size, size, size))
    img = Image(np.zeros((size, size, size), dtype=np.float32), m)
    ras = img.index_to_ras(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1))
    img = img.with_array((1000.0 + ras @ [2.0, -3.0, 5.0]).reshape(size, size, size).astype(np.float32))
    landmarks = {"Helicotrema": np.array([0.4, 1.1, -0.3]), "Modiolus base": np.array([-0.6, -0.2, 0.5]),
                 "Round Window": np.array([0.9, -1.3, -0.8])}
    return img, landmarks


GEOMETRIES = {
    "oblique": (rotation_matrix([1.0, 2.0, 3.0], 27.0), (0.35, 0.45, 0.5)),
    "flipped": (np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]), (0.25, 0.3, 0.4)),
    "lps_03": (np.diag([-1.0, -1.0, 1.0]), (0.3, 0.3, 0.3)),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_patches_sample_the_right_world_points(name):
    direction, spacing = GEOMETRIES[name]
    image, landmarks = _linear_image(direction, spacing)
    vol = prepare_volume(image, landmarks, name)
    assert vol.array.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vol.ijk_to_ras[:3, :3], axis=0), 0.3, atol=1e-9)
    # the crop's axes point (nearly) towards L, P, S
    axes_lps = vol.ijk_to_ras[:3, :3] / 0.3 * np.array([[-1.0], [-1.0], [1.0]])
    assert np.all(np.diag(axes_lps) > 0.8)
    for c, lm_name in enumerate(NAMES):
        back = vol.ijk_to_ras @ np.append(vol.landmarks_ijk[c], 1.0)
        np.testing.assert_allclose(back[:3], landmarks[lm_name], atol=1e-9)
    lo, hi = float(image.array.min()), float(image.array.max())
    sampler = PatchSampler([vol])
    centres = torch.tensor(vol.landmarks_ijk, dtype=torch.float32).repeat(2, 1)
    coronal = torch.tensor([False] * 3 + [True] * 3)
    patches = sampler.extract(torch.zeros(6, dtype=torch.int64), centres, coronal).numpy().astype(np.float64)
    values = lo + patches * (hi - lo)
    f = lambda p: 1000.0 + p @ [2.0, -3.0, 5.0]  # noqa: E731
    for s in range(6):
        lm = landmarks[NAMES[s % 3]]
        assert values[s, 40, 40] == pytest.approx(f(lm), abs=0.05)
        # one pixel down = one 0.3 mm voxel along the crop's row axis (j: posterior; coronal i: left)
        row_axis = vol.ijk_to_ras[:3, 0 if coronal[s] else 1]
        col_axis = vol.ijk_to_ras[:3, 2]
        assert values[s, 41, 40] - values[s, 40, 40] == pytest.approx(row_axis @ [2.0, -3.0, 5.0], abs=0.05)
        assert values[s, 40, 41] - values[s, 40, 40] == pytest.approx(col_axis @ [2.0, -3.0, 5.0], abs=0.05)
    if name == "lps_03":  # exactly LPS: rows posterior (f rises by 0.9), columns superior (+1.5), coronal rows left
        assert values[0, 41, 40] - values[0, 40, 40] == pytest.approx(0.9, abs=0.01)
        assert values[0, 40, 41] - values[0, 40, 40] == pytest.approx(1.5, abs=0.01)
        assert values[3, 41, 40] - values[3, 40, 40] == pytest.approx(-0.6, abs=0.01)


def test_landmarks_outside_the_volume_or_missing_are_clear_errors():
    image, landmarks = _linear_image(np.eye(3), (0.5, 0.5, 0.5), size=20)
    with pytest.raises(InvalidInputError, match="Round Window"):
        prepare_volume(image, {k: v for k, v in landmarks.items() if k != "Round Window"}, "c1")
    with pytest.raises(InvalidInputError, match="outside the volume"):
        prepare_volume(image, {**landmarks, "Helicotrema": np.array([50.0, 0.0, 0.0])}, "c2")


def test_structure_points_lie_on_edges_inside_the_background_box():
    from CochleaLandmarksLib.smicnet_training_data import structure_points

    a = np.zeros((40, 40, 40), dtype=np.float32)
    a[15:25, 15:25, 15:25] = 1.0  # a bright cube: its faces are the only edges
    pts = structure_points(a, np.array([2.0, 2.0, 2.0]), np.array([37.0, 37.0, 37.0]))
    assert len(pts) > 0 and pts.dtype == np.float32
    assert np.all(pts >= 2) and np.all(pts <= 37)
    inside_face = np.abs(pts - 19.5).max(axis=1)
    assert np.all((inside_face >= 3.5) & (inside_face <= 5.5))  # within a voxel of the cube's faces
    assert len(structure_points(np.ones((20, 20, 20), np.float32), np.zeros(3), np.full(3, 19.0))) == 0


# --- sampling: balance, background distance, augmentation -------------------------------------------------
def test_balanced_classes_and_background_far_from_every_landmark():
    vol = _grid_volume()
    sampler = PatchSampler([vol, _grid_volume(seed=1)])
    g = torch.Generator().manual_seed(3)
    batch = sampler.sample(300, g)
    counts = torch.bincount(batch.labels, minlength=4).tolist()
    assert counts[BACKGROUND_CLASS] == 150 and sorted(counts[:3]) == [50, 50, 50]
    assert batch.patches.shape == (300, 1, 81, 81) and batch.patches.dtype == torch.float32
    levels = batch.patches * 255
    assert torch.equal(levels, levels.round()) and float(batch.patches.min()) == 0.0
    lms = sampler.landmarks[batch.case_index]
    dist = (batch.centres[:, None, :] - lms).norm(dim=-1)
    bg = batch.labels == BACKGROUND_CLASS
    assert float(dist[bg].min()) > 3.0
    near = dist[bg].min(dim=1).values <= 12.0
    assert 0.35 <= float(near.float().mean()) <= 0.9  # 40 % hard (shell 3..12), the rest structure or uniform
    own = dist[~bg].gather(1, batch.labels[~bg, None])[:, 0]
    assert float(own.max()) <= 0.5 + 1e-5
    inside = (batch.centres[bg] >= 0).all(dim=1) & (batch.centres[bg] <= sampler.limits[batch.case_index[bg]]).all(1)
    assert bool(inside.all())
    assert 0 < int(batch.coronal.sum()) < 300


def test_background_fraction_is_configurable_and_checked():
    sampler = PatchSampler([_grid_volume()], AugmentConfig(background_fraction=0.25))
    labels = sampler.plan_labels(100, torch.Generator().manual_seed(0))
    assert torch.bincount(labels, minlength=4).tolist()[3] == 25
    with pytest.raises(InvalidInputError):
        AugmentConfig(background_fraction=1.0).validate()
    with pytest.raises(InvalidInputError):
        AugmentConfig(jitter_vox=3.0).validate()


def test_sampling_is_reproducible_with_a_seed():
    sampler = PatchSampler([_grid_volume()])
    a = sampler.sample(16, torch.Generator().manual_seed(7))
    b = sampler.sample(16, torch.Generator().manual_seed(7))
    assert torch.equal(a.patches, b.patches) and torch.equal(a.labels, b.labels)


def _with_mined(vol: TrainingVolume, points) -> TrainingVolume:
    return dataclasses.replace(vol, mined_ijk=np.asarray(points, dtype=np.float32))


def test_mined_background_is_drawn_at_the_models_mistakes():
    """With mining, that share of the background lies at the mined points (+- half a voxel); a case without any
    mistakes falls back to the shell around its landmarks; every point still keeps away from the landmarks."""
    mistakes = np.array([[60.0, 48.0, 50.0], [45.0, 30.0, 52.0]])  # > 3 voxels from every landmark
    cfg = AugmentConfig(hard_negative_fraction=0.0, structure_fraction=0.0, mined_fraction=1.0)
    sampler = PatchSampler([_with_mined(_grid_volume(), mistakes), _grid_volume(seed=1)], cfg)
    g = torch.Generator().manual_seed(5)
    case = torch.tensor([0] * 40 + [1] * 40)
    centres = sampler.background_centres(case, g)
    own = centres[:40, None, :] - torch.tensor(mistakes, dtype=torch.float32)
    assert float(own.abs().max(dim=-1).values.min(dim=1).values.max()) <= 0.5 + 1e-6
    both = {tuple(np.round(c)) for c in centres[:40].numpy()}
    assert {(60.0, 48.0, 50.0), (45.0, 30.0, 52.0)} <= both
    shell = (centres[40:, None, :] - sampler.landmarks[1]).norm(dim=-1).min(dim=1).values
    assert float(shell.min()) > 3.0 and float(shell.max()) <= 12.0 + 1e-5  # no mistakes: hard shell instead


def test_without_a_mined_share_the_sampling_is_unchanged():
    """Mined points alone change nothing (the bundled models' runs stay reproducible)."""
    plain = PatchSampler([_grid_volume()])
    mined = PatchSampler([_with_mined(_grid_volume(), [[60.0, 48.0, 50.0]])])
    a = plain.sample(32, torch.Generator().manual_seed(9))
    b = mined.sample(32, torch.Generator().manual_seed(9))
    assert torch.equal(a.centres, b.centres) and torch.equal(a.patches, b.patches)


def test_mining_needs_a_model_and_a_share():
    with pytest.raises(InvalidInputError, match="mining needs both"):
        st.SmicnetTrainingConfig(mine_from="smicnet-phantom").validate()
    with pytest.raises(InvalidInputError, match="mining needs both"):
        st.SmicnetTrainingConfig(augment=AugmentConfig(mined_fraction=0.2)).validate()
    with pytest.raises(InvalidInputError, match="must not exceed 1"):
        AugmentConfig(mined_fraction=0.4).validate()  # 0.4 hard + 0.3 structure + 0.4 mined
    st.SmicnetTrainingConfig(mine_from="smicnet-phantom", augment=AugmentConfig(mined_fraction=0.2)).validate()


def test_mining_keeps_only_the_wrong_detections(monkeypatch, tmp_path):
    """The sweep's voxels above threshold that lie farther than 0.9 mm from their own landmark, in RAS, on an
    oblique map grid; a detection on the landmark itself is not a mistake."""
    from CochleaCommonLib.markups_io import write_markups
    from CochleaCommonLib.points import PointList
    from CochleaLandmarksLib import smicnet_detector, smicnet_mining
    from CochleaLandmarksLib.landmark_dataset import LandmarkCase

    truth = {"Helicotrema": np.array([3.0, 2.0, 1.0]), "Modiolus base": np.array([0.0, 0.0, 0.0]),
             "Round Window": np.array([-2.0, 3.0, -1.0])}
    landmarks = tmp_path / "c_landmarks.fcsv"
    write_markups(PointList(np.array(list(truth.values())), list(truth)), landmarks, coordinate_system="LPS")
    axes = rotation_matrix([1.0, -2.0, 0.5], 33.0)
    origin = np.array([0.5, 1.0, -0.5]) - axes @ np.full(3, 0.3 * 24.5)  # a 15 mm cube holding every point
    grid = Image.from_geometry(np.zeros((50, 50, 50), np.float32), (0.3, 0.3, 0.3), origin, axes)
    wrong_apex = truth["Helicotrema"] + np.array([0.0, 0.0, -2.5])  # the next turn down

    def fake_maps(image, seed, detector, **kwargs):
        maps = {}
        for name, point in truth.items():
            array = np.zeros(grid.array.shape, np.float32)
            for centre, value in [(point, 0.99)] + ([(wrong_apex, 0.8)] if name == "Helicotrema" else []):
                i, j, k = np.round(grid.ras_to_continuous_index(centre)).astype(int)
                array[k - 1:k + 2, j - 1:j + 2, i - 1:i + 2] = value  # 27 voxels, within 0.52 mm of the centre
            maps[name] = grid.with_array(array)
        return {"maps": maps}

    monkeypatch.setattr(smicnet_detector, "smicnet_maps", fake_maps)
    monkeypatch.setattr(smicnet_mining, "read_volume", lambda path: grid)
    mined = smicnet_mining.mine_false_positives(None, [LandmarkCase("c", tmp_path / "c.nrrd", landmarks)])
    points = mined["c"]["points_ras"]
    assert mined["c"]["per_landmark"] == {"Helicotrema": 27, "Modiolus base": 0, "Round Window": 0}
    assert points.shape == (27, 3) and np.linalg.norm(points - wrong_apex, axis=1).max() < 0.8


# --- pieces of the training loop ------------------------------------------------------------------------
def test_metrics_and_case_split():
    m = st.classification_metrics(np.array([0, 0, 1, 2, 3, 3]), np.array([0, 1, 1, 2, 3, 0]))
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class_accuracy"] == pytest.approx([0.5, 1.0, 1.0, 0.5])
    assert m["f1"][2] == 1.0 and m["f1"][1] == pytest.approx(2 / 3)
    cases = [type("C", (), {"case_id": f"c{i}"})() for i in range(10)]
    train, val = st.split_cases(cases, 0.2, seed=1)
    assert len(val) == 2 and not {c.case_id for c in train} & {c.case_id for c in val}
    assert st.split_cases(cases, 0.2, seed=1)[1] == val
    assert st.split_cases(cases[:1], 0.5, 0) == (cases[:1], [])


def test_config_errors_before_any_work(tmp_path):
    with pytest.raises(InvalidInputError, match="model id"):
        st.train_smicnet(tmp_path, tmp_path / "out", st.SmicnetTrainingConfig(model_id="Bad Name"))
    with pytest.raises(InvalidInputError, match="val_fraction"):
        st.SmicnetTrainingConfig(val_fraction=1.0).validate()


# --- training runs --------------------------------------------------------------------------------------
def test_tiny_training_writes_loadable_outputs_and_registers(phantom_dir, tmp_path):
    from CochleaLandmarksLib.keras_import import load_smicnet_weights, read_smicnet_pt

    cfg = st.SmicnetTrainingConfig(model_id="smicnet-test", val_fraction=0.34, **TINY)
    messages = []
    result = st.train_smicnet(phantom_dir, tmp_path / "out", cfg, progress=lambda f, m: messages.append((f, m)),
                              register=True)
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"smicnet-test.pt", "smicnet-test.json", "history.csv",
                                               "training_curves.png"}
    assert len(result.val_cases) == 1 and len(result.train_cases) == 2
    assert "held-out" in result.validation and result.epochs_run == 2 and 1 <= result.best_epoch <= 2
    assert messages[-1][0] == 1.0
    entry = ModelEntry.from_dict(json.loads((out / "smicnet-test.json").read_text()))
    assert entry.task == "landmarks-smicnet" and entry.format == "smicnet-pt" and entry.license == "Apache-2.0"
    assert entry.input["landmark_pixel"] == [40, 40] and entry.input["patch"] == [81, 81]
    from CochleaCommonLib.downloads import sha256_file

    assert entry.sha256 == sha256_file(out / "smicnet-test.pt")
    doc = read_smicnet_pt(out / "smicnet-test.pt")
    assert doc["source"]["landmark_pixel"] == [40, 40] and doc["source"]["best_epoch"] == result.best_epoch
    assert [c["case_id"] for c in doc["source"]["cases"]["validation"]] == result.val_cases
    with open(out / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and float(rows[0]["val_loss"]) > 0
    model = load_smicnet_weights(out / "smicnet-test.pt")
    x = torch.rand(2, 1, 81, 81)
    p = model.predict_proba(x)
    assert p.shape == (2, 4) and torch.allclose(p.sum(1), torch.ones(2))
    # registered: the user registry finds the weights in the per-user cache
    registry = ModelRegistry.load(st.user_registry_path())
    assert registry.locate("smicnet-test").sha256 == entry.sha256
    assert result.registry_path == st.user_registry_path()
    # ... and detection finds a model trained here by its id alone (cochlea landmarks --model smicnet-test)
    from CochleaLandmarksLib.landmark_detection import load_detector

    detector = load_detector(model="smicnet-test", device="cpu")
    assert detector.model_id == "smicnet-test" and detector.landmark_pixel == 40


SMICNET_DIR = REPO.parent / "shared" / "models" / "smicnet"
PUBLISHED_5 = SMICNET_DIR / "model_epoch_100_5volumes_authorprovided.h5"


@pytest.mark.skipif(not PUBLISHED_5.is_file(), reason=f"{PUBLISHED_5} is absent (../shared not beside the repository)")
@pytest.mark.parametrize("how", ["registry id", "h5 file"])
def test_fine_tuning_starts_from_the_published_weights_and_keeps_their_landmark_pixel(phantom_dir, tmp_path,
                                                                                    monkeypatch, how):
    """The few-shot route of the authors: start from their 5-volume model, train on your own cases.

    With a vanishing learning rate the trainable weights must come out as the published ones (the run really
    starts from them); the new model keeps their convention (landmark at pixel 41), records where it came
    from, and detection centres its windows accordingly.
    """
    from CochleaLandmarksLib.keras_import import load_smicnet_weights, read_smicnet_pt
    from CochleaLandmarksLib.landmark_detection import load_detector

    monkeypatch.setenv("COCHLEA_TOOLKIT_MODEL_DIRS", str(SMICNET_DIR))
    init = "smicnet-published-5" if how == "registry id" else str(PUBLISHED_5)
    published = load_smicnet_weights(init)
    cfg = st.SmicnetTrainingConfig(model_id="smicnet-tuned", init=init, lr=1e-12, val_fraction=0.34, **TINY)
    st.train_smicnet(phantom_dir, tmp_path / "out", cfg)
    tuned = load_smicnet_weights(tmp_path / "out" / "smicnet-tuned.pt")
    before = {n: p.detach() for n, p in published.named_parameters()}
    after = dict(tuned.named_parameters())
    assert before.keys() == after.keys()
    for name, value in before.items():
        torch.testing.assert_close(after[name].detach(), value, atol=1e-6, rtol=0, msg=name)
    doc = read_smicnet_pt(tmp_path / "out" / "smicnet-tuned.pt")
    assert doc["source"]["landmark_pixel"] == [41, 41]
    assert doc["source"]["init"]["sha256"] == published.metadata["sha256"]
    entry = ModelEntry.from_dict(json.loads((tmp_path / "out" / "smicnet-tuned.json").read_text()))
    assert entry.input["landmark_pixel"] == [41, 41] and "pixel (41, 41)" in entry.description
    assert load_detector(model=str(tmp_path / "out" / "smicnet-tuned.pt"), device="cpu").landmark_pixel == 41


def test_training_with_mining_uses_and_records_the_mistakes(phantom_dir, tmp_path, monkeypatch):
    """--mine-from: the training cases (never the validation case) are mined, their points reach the sampler in
    crop indices, and the weight file records the mining."""
    from CochleaLandmarksLib import smicnet_detector, smicnet_mining
    from CochleaLandmarksLib.keras_import import read_smicnet_pt

    seen: dict = {}

    from CochleaLandmarksLib.landmark_dataset import read_ground_truth

    def fake_mine(detector, cases, **kwargs):
        seen["cases"] = [c.case_id for c in cases]
        seen["min_distance_mm"] = kwargs["min_distance_mm"]
        out = {}
        for c in cases:
            centre = np.mean(list(read_ground_truth(c.landmarks_path).values()), axis=0)
            # one mistake 4 mm above the landmarks, one far outside the volume (dropped)
            seen[c.case_id] = centre + [0.0, 0.0, 4.0]
            out[c.case_id] = {"points_ras": np.array([centre + [0.0, 0.0, 4.0], centre + 500.0]),
                              "per_landmark": {"Helicotrema": 2}}
        return out

    original = st.PatchSampler

    def spy(volumes, *args, **kwargs):
        seen.setdefault("samplers", []).append([v.mined_ijk.copy() for v in volumes])
        seen.setdefault("volumes", []).append(volumes)
        return original(volumes, *args, **kwargs)

    monkeypatch.setattr(smicnet_detector, "load_smicnet_detector", lambda model, device: type(
        "D", (), {"model_id": model})())
    monkeypatch.setattr(smicnet_mining, "mine_false_positives", fake_mine)
    monkeypatch.setattr(st, "PatchSampler", spy)
    cfg = st.SmicnetTrainingConfig(model_id="smicnet-mined", mine_from="smicnet-old", val_fraction=0.34,
                                   mine_min_distance_mm=1.5,
                                   augment=AugmentConfig(mined_fraction=0.2), **TINY)
    result = st.train_smicnet(phantom_dir, tmp_path / "out", cfg)
    assert sorted(seen["cases"]) == sorted(result.train_cases) and result.val_cases[0] not in seen["cases"]
    train_volumes = seen["volumes"][0]
    for volume, mined in zip(train_volumes, seen["samplers"][0]):
        assert mined.shape == (1, 3)
        np.testing.assert_allclose(volume.ijk_to_ras[:3, :3] @ mined[0] + volume.ijk_to_ras[:3, 3],
                                   seen[volume.case_id], atol=1e-4)
    assert all(len(m) == 0 for m in seen["samplers"][1])  # the validation sampler has no mined points
    record = read_smicnet_pt(tmp_path / "out" / "smicnet-mined.pt")["source"]["mining"]
    assert seen["min_distance_mm"] == 1.5 and record["min_distance_mm"] == 1.5
    assert record["from"] == "smicnet-old" and record["points"] == 2 and record["wrong_voxels_per_landmark"] == {
        "Helicotrema": 4}


def test_early_stopping_restores_the_best_weights(phantom_dir, tmp_path, monkeypatch):
    seen = []
    real = st._evaluate

    def worse_every_epoch(model, x, y, chunk):
        loss, metrics = real(model, x, y, chunk)
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return float(len(seen)), metrics  # 1, 2, 3, ...: epoch 1 stays best

    monkeypatch.setattr(st, "_evaluate", worse_every_epoch)
    cases = find_landmark_cases(phantom_dir)[:1]
    cfg = st.SmicnetTrainingConfig(model_id="early", **{**TINY, "epochs": 6, "patience": 2})
    result = st.train_smicnet(cases, tmp_path / "o", cfg)
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1
    assert "augmented patches of the training case" in result.validation and result.val_cases == []
    from CochleaLandmarksLib.keras_import import read_smicnet_pt

    saved = read_smicnet_pt(tmp_path / "o" / "early.pt")["state_dict"]
    assert all(torch.equal(saved[k], seen[0][k]) for k in seen[0])
    assert not all(torch.equal(saved[k], seen[-1][k]) for k in seen[-1])


def test_cancel_writes_nothing(phantom_dir, tmp_path):
    from CochleaCommonLib.errors import OperationCancelled

    def cancel_in_training(fraction, message):
        return message.startswith("Epoch")

    cfg = st.SmicnetTrainingConfig(model_id="cancelled", **TINY)
    with pytest.raises(OperationCancelled):
        st.train_smicnet(find_landmark_cases(phantom_dir)[:2], tmp_path / "o", cfg, progress=cancel_in_training)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# --- the command line ------------------------------------------------------------------------------------
def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_trains_and_prints_a_summary(phantom_dir, tmp_path, capsys):
    code, out, err = _cli(capsys, "train", "smicnet", "--data", phantom_dir, "--out", tmp_path / "m", "--model-id",
                          "cli-model", "--epochs", 1, "--steps-per-epoch", 1, "--batch-size", 8, "--val-samples", 8,
                          "--device", "cpu", "--threads", 1, "-q")
    assert code == 0, err
    assert (tmp_path / "m" / "cli-model.pt").is_file() and "validation: loss" in out and "F1:" in out


def test_cli_errors_are_clear(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _cli(capsys, "train", "smicnet", "--data", empty, "--out", tmp_path / "o", "--device", "cpu")
    assert code == 2 and "No annotated volume" in err and "Traceback" not in err

    bad = tmp_path / "bad"
    bad.mkdir()
    image, _ = _linear_image(np.eye(3), (0.5, 0.5, 0.5), size=12)
    from CochleaCommonLib.image_io import write_image

    write_image(image, bad / "case1.nrrd")
    (bad / "case1_landmarks.fcsv").write_text(
        "# Markups fiducial file version = 4.11\n# CoordinateSystem = LPS\n"
        "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
        "1,0,0,0,0,0,0,1,1,1,0,Helicotrema,,\n2,0,0,1,0,0,0,1,1,1,0,apex,,\n")
    code, _, err = _cli(capsys, "train", "smicnet", "--data", bad, "--out", tmp_path / "o", "--device", "cpu")
    assert code == 2 and "Modiolus base" in err and "case1" in err

    code, _, err = _cli(capsys, "train", "smicnet", "--data", bad, "--out", tmp_path / "o", "--model-id", "Bad Id")
    assert code == 2 and "model id" in err

    def no_torch():
        raise MissingDependencyError("PyTorch is not installed, and it is needed to run the neural networks.")

    monkeypatch.setattr("CochleaCommonLib.devices.require_torch", no_torch)
    code, _, err = _cli(capsys, "train", "smicnet", "--data", bad, "--out", tmp_path / "o")
    assert code == 2 and "PyTorch is not installed" in err
    code, out, _ = _cli(capsys, "train", "--help")
    assert code == 0 and "smicnet" in out


def test_training_imports_neither_vtk_nor_h5py_nor_pynrrd(phantom_dir):
    """The GPU training machine has none of them: the import path and NRRD reading must not need them."""
    volume = next(phantom_dir.rglob("phantom_ct_00001.nrrd"))
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("vtk", "vtkmodules", "h5py", "nrrd"):
                    raise ModuleNotFoundError("No module named " + repr(name), name=name)
        sys.meta_path.insert(0, Block())
        from CochleaCommonLib.cli.main import build_parser
        build_parser()
        import CochleaLandmarksLib.smicnet_training, CochleaCommonLib.cli.train
        from CochleaLandmarksLib.smicnet_training_data import read_volume
        img = read_volume({str(volume)!r})
        assert img.array.ndim == 3
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "CochleaCommon"), str(REPO / "CochleaLandmarks")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_reproducing_script_is_valid_bash_and_uses_training_seeds():
    script = REPO / "scripts" / "train_smicnet_phantom.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "100000 + i" in text and "CochleaCommonLib.cli.main train smicnet" in text
    assert "--model-id smicnet-phantom" in text

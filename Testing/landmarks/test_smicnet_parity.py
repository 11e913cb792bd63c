"""Parity of our SMICNet port with the authors' Keras model, and loading/refusing weight files.

The ``shared`` tests use the six published ``.h5`` files and ``keras_reference.npz`` (Keras 3 outputs
of the authors' network on 64 patches) in ``../shared/models/smicnet`` beside the repository, and are
skipped with the reason where that folder is absent. Parity means: our preprocessing reproduces Keras'
network input bit for bit, and our softmax is within 1e-5 of Keras' with the same argmax everywhere.
The tests that refuse damaged or foreign files build their files themselves where they can.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from CochleaCommonLib.errors import ModelWeightsError
from CochleaCommonLib.model_registry import ModelRegistry
from CochleaLandmarksLib import keras_import as ki
from CochleaLandmarksLib.smicnet_preprocess import quantize_patches, quantize_patches_torch

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")
h5py = pytest.importorskip("h5py")

REPO_ROOT = Path(__file__).resolve().parents[2]
SMICNET_DIR = REPO_ROOT.parent / "shared" / "models" / "smicnet"
REFERENCE = SMICNET_DIR / "keras_reference.npz"
needs_shared = pytest.mark.skipif(
    not REFERENCE.is_file(),
    reason=f"the published SMICNet weights and keras_reference.npz are not at {SMICNET_DIR} (../shared absent)")

#: file tag -> (registry id, SHA256 from ../shared/models/smicnet/README.md)
PUBLISHED = {
    "1volume": ("smicnet-published-1", "b35842583b08f418975737d1472fb54aad80c0240bd0033b8869ccf597a9c8f3"),
    "3volumes": ("smicnet-published-3", "748f595e6dda6e6f6ed60618f0cee9f2cda145500b66c8e589ca52a2ba469925"),
    "5volumes": ("smicnet-published-5", "414fe7a18478def3cb137787c2921337535fceb6d22c71da452d45024818daad"),
    "7volumes": ("smicnet-published-7", "e0f04a75d3aa9a587b723817f7ccecf941e319d092d7d104920013fb14daf166"),
    "9volumes": ("smicnet-published-9", "7de6b0e8fb452d812330b75221568f149e7d2dd63a1f9c6249e564c1902b1ed0"),
    "11volumes": ("smicnet-published-11", "fe460add521761fea43568f4ae690f7025fd565912bf1cca2233f39a6656b053"),
}
TOLERANCE = 1e-5


def h5_path(tag: str) -> Path:
    return SMICNET_DIR / f"model_epoch_100_{tag}_authorprovided.h5"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    if not REFERENCE.is_file():
        pytest.skip(f"{REFERENCE} is absent (../shared not beside the repository)")
    with np.load(REFERENCE) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def network_input(reference):
    """Keras' NHWC network input as the NCHW tensor our model takes (H = rows, W = columns, not swapped)."""
    return torch.from_numpy(np.ascontiguousarray(reference["keras_input_nhwc"].transpose(0, 3, 1, 2)))


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A private model cache and no extra model folders: nothing of the developer's setup leaks in."""
    monkeypatch.setenv("COCHLEA_TOOLKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("COCHLEA_TOOLKIT_MODEL_DIRS", raising=False)
    return tmp_path


def no_download(url, dest, progress):
    raise AssertionError(f"the test must run offline, but a download of {url} was attempted")


def max_softmax_error(model, network_input, expected: np.ndarray) -> tuple[float, bool]:
    ours = model.predict_proba(network_input).numpy()
    return float(np.abs(ours - expected).max()), bool((ours.argmax(1) == expected.argmax(1)).all())


# --- parity -------------------------------------------------------------------------------------------
@needs_shared
@pytest.mark.shared
def test_preprocessing_reproduces_the_keras_input_bit_exactly(reference):
    expected = reference["keras_input_nhwc"][..., 0]
    ours = quantize_patches(reference["raw_patches"])
    assert np.array_equal(ours.view(np.uint32), expected.view(np.uint32))
    on_torch = quantize_patches_torch(torch.from_numpy(reference["raw_patches"])).numpy()
    assert np.array_equal(on_torch.view(np.uint32), expected.view(np.uint32))
    # the comparison can fail: rounding to the nearest level instead of truncating does not reproduce Keras
    x = reference["raw_patches"] - reference["raw_patches"].min(axis=(1, 2), keepdims=True)
    peak = x.max(axis=(1, 2), keepdims=True)
    rounded = np.round(x / np.where(peak == 0, 1, peak) * np.float32(255)).astype(np.float32) / np.float32(255)
    assert not np.array_equal(rounded, expected)


@needs_shared
@pytest.mark.shared
@pytest.mark.parametrize("tag", list(PUBLISHED))
def test_softmax_matches_keras(tag, reference, network_input):
    model = ki.load_keras_h5(h5_path(tag))
    error, same_argmax = max_softmax_error(model, network_input, reference[f"softmax_{tag}"])
    assert error <= TOLERANCE, f"{tag}: max |softmax - keras| = {error:.3g}"
    assert same_argmax


@needs_shared
@pytest.mark.shared
def test_swapping_rows_and_columns_breaks_parity(reference, network_input):
    """The tolerance is tight enough to catch the classic port mistake (NHWC -> NCWH)."""
    model = ki.load_keras_h5(h5_path("5volumes"))
    error, _ = max_softmax_error(model, network_input.transpose(2, 3).contiguous(), reference["softmax_5volumes"])
    assert error > 100 * TOLERANCE


@needs_shared
@pytest.mark.shared
def test_layers_are_mapped_by_order_not_name():
    names5 = [layer.name for layer in ki.read_keras_layers(h5_path("5volumes"))[0]]
    names7 = [layer.name for layer in ki.read_keras_layers(h5_path("7volumes"))[0]]
    assert len(names5) == len(names7) == len(ki.LAYER_PLAN) == 21
    assert names5[0] == "depthwise_conv2d" and names7[0] == "depthwise_conv2d_5"
    assert names7[-1] == "dense_3"


@needs_shared
@pytest.mark.shared
@pytest.mark.parametrize(("tag", "mean", "var"), [("1volume", 0.6605, 0.0488), ("5volumes", 0.6944, 0.0594),
                                                   ("11volumes", 0.7584, 0.0808)])
def test_first_batchnorm_statistics_are_the_documented_ones(tag, mean, var):
    bn = ki.load_keras_h5(h5_path(tag)).stem.bn
    assert bn.running_mean.item() == pytest.approx(mean, abs=1e-4)
    assert bn.running_var.item() == pytest.approx(var, abs=1e-4)
    assert bn.eps == 1e-3


# --- registry and our own format ------------------------------------------------------------------------
@needs_shared
@pytest.mark.shared
def test_registry_id_loads_offline_with_sha256_check_and_caches_the_conversion(isolated, monkeypatch, reference,
                                                                              network_input):
    monkeypatch.setenv("COCHLEA_TOOLKIT_MODEL_DIRS", str(SMICNET_DIR))
    registry = ModelRegistry.load()
    model = ki.load_smicnet_weights("smicnet-published-5", registry, allow_download=True, fetcher=no_download)
    assert model.metadata["model_id"] == "smicnet-published-5"
    assert model.metadata["sha256"] == PUBLISHED["5volumes"][1]
    assert model.metadata["origin"] == "search dir"
    assert model.metadata["path"] == str(h5_path("5volumes"))
    assert not model.training
    error, same = max_softmax_error(model, network_input, reference["softmax_5volumes"])
    assert error <= TOLERANCE and same

    cached = isolated / "cache" / "models" / "smicnet-published-5-v1.0" / \
        "model_epoch_100_5volumes_authorprovided.smicnet-v1.pt"
    assert cached.is_file()
    assert ki.read_smicnet_pt(cached)["source"]["sha256"] == PUBLISHED["5volumes"][1]
    again = ki.load_smicnet_weights("smicnet-published-5", registry)  # now read from the cached conversion
    assert torch.equal(again.predict_proba(network_input), model.predict_proba(network_input))

    cached.write_bytes(b"damaged")  # a damaged cache is converted again, not fatal
    third = ki.load_smicnet_weights("smicnet-published-5", registry)
    assert torch.equal(third.predict_proba(network_input), model.predict_proba(network_input))
    assert ki.read_smicnet_pt(cached)["format"] == ki.WEIGHTS_FORMAT


@needs_shared
@pytest.mark.shared
def test_all_registry_ids_resolve_to_the_published_files(isolated, monkeypatch):
    monkeypatch.setenv("COCHLEA_TOOLKIT_MODEL_DIRS", str(SMICNET_DIR))
    registry = ModelRegistry.load()
    for tag, (model_id, sha) in PUBLISHED.items():
        model = ki.load_smicnet_weights(model_id, registry, cache=False)
        assert (model.metadata["sha256"], model.metadata["format"]) == (sha, ki.KERAS_FORMAT)
        assert Path(model.metadata["path"]).name == h5_path(tag).name


@needs_shared
@pytest.mark.shared
def test_converted_pt_gives_identical_outputs(isolated, network_input):
    out = ki.convert_keras_h5(h5_path("7volumes"), isolated / "smicnet7.pt")
    doc = ki.read_smicnet_pt(out)
    assert doc["architecture"] == "smicnet" and doc["architecture_version"] == 1
    assert doc["classes"] == ["Helicotrema", "Modiolus base", "Round Window", "background"]
    assert doc["source"]["sha256"] == PUBLISHED["7volumes"][1]
    from_h5 = ki.load_keras_h5(h5_path("7volumes"))
    from_pt = ki.load_smicnet_weights(out, ModelRegistry.load())
    assert from_pt.metadata["format"] == ki.TORCH_FORMAT and from_pt.metadata["model_id"] is None
    assert torch.equal(from_pt.predict_proba(network_input), from_h5.predict_proba(network_input))


@needs_shared
@pytest.mark.shared
def test_a_users_copy_of_a_published_file_is_recognised(isolated):
    copy = isolated / "my weights.h5"
    shutil.copyfile(h5_path("3volumes"), copy)
    model = ki.load_smicnet_weights(copy, ModelRegistry.load())
    assert model.metadata["model_id"] == "smicnet-published-3" and model.metadata["origin"] == "your file"


# --- damaged and foreign files --------------------------------------------------------------------------
def flip_bytes(src: Path, dest: Path, offset: int, count: int = 64) -> Path:
    data = bytearray(src.read_bytes())
    for i in range(offset, offset + count):
        data[i] ^= 0xFF
    dest.write_bytes(bytes(data))
    return dest


@needs_shared
@pytest.mark.shared
def test_corrupted_copy_in_a_model_folder_fails_the_sha256_check(isolated, monkeypatch):
    folder = isolated / "models"
    folder.mkdir()
    name = h5_path("5volumes").name
    flip_bytes(h5_path("5volumes"), folder / name, offset=800_000)
    monkeypatch.setenv("COCHLEA_TOOLKIT_MODEL_DIRS", str(folder))
    with pytest.raises(ModelWeightsError, match="corrupt or a different version.*SHA256"):
        ki.load_smicnet_weights("smicnet-published-5", ModelRegistry.load())


@needs_shared
@pytest.mark.shared
def test_corrupted_copy_chosen_by_path_is_refused(isolated):
    registry = ModelRegistry.load()
    same_name = isolated / h5_path("5volumes").name
    flip_bytes(h5_path("5volumes"), same_name, offset=800_000)  # data region: still valid HDF5
    with pytest.raises(ModelWeightsError, match="name of the weights of model 'smicnet-published-5'"):
        ki.load_smicnet_weights(same_name, registry)
    header = flip_bytes(h5_path("5volumes"), isolated / "header.h5", offset=0, count=16)
    with pytest.raises(ModelWeightsError, match="not an HDF5 file"):
        ki.load_smicnet_weights(header, registry)
    truncated = isolated / "truncated.h5"
    truncated.write_bytes(h5_path("5volumes").read_bytes()[:300_000])
    with pytest.raises(ModelWeightsError, match="damaged Keras weights file"):
        ki.load_smicnet_weights(truncated, registry)


def copy_and_edit(tmp: Path, edit) -> Path:
    dest = tmp / "edited.h5"
    shutil.copyfile(h5_path("5volumes"), dest)
    with h5py.File(dest, "r+") as f:
        edit(f)
    return dest


@needs_shared
@pytest.mark.shared
def test_wrong_layer_shapes_and_counts_are_named(isolated):
    def ten_classes(f):
        group = f["model_weights/dense_1/dense_1"]
        del group["kernel:0"]
        group["kernel:0"] = np.zeros((384, 10), np.float32)

    with pytest.raises(ModelWeightsError, match=r"layer 21 of 21 \(dense 384->4 \(softmax\)\), weight 'kernel' "
                                                r"should have shape \(384, 4\).*'dense_1'.*kernel \(384, 10\)"):
        ki.load_keras_h5(copy_and_edit(isolated, ten_classes))

    def drop_last(f):
        f["model_weights"].attrs["layer_names"] = f["model_weights"].attrs["layer_names"][:-1]

    with pytest.raises(ModelWeightsError, match="has 20 layers with weights, SMICNet has 21"):
        ki.load_keras_h5(copy_and_edit(isolated, drop_last))

    def nan_weight(f):
        f["model_weights/conv2d_4/conv2d_4/bias:0"][3] = np.nan

    with pytest.raises(ModelWeightsError, match=r"corrupt: weighted layer 11 of 21 \(stage 2 strided 1x1 shortcut\)"):
        ki.load_keras_h5(copy_and_edit(isolated, nan_weight))

    def other_slope(f):
        config = json.loads(f.attrs["model_config"])
        config["config"]["layers"][3]["config"]["alpha"] = 0.2
        f.attrs["model_config"] = json.dumps(config)

    with pytest.raises(ModelWeightsError, match="not SMICNet: 'leaky_re_lu' has LeakyReLU slope 0.2"):
        ki.load_keras_h5(copy_and_edit(isolated, other_slope))


def write_toy_keras(path: Path, layers: list[tuple[str, str, dict[str, np.ndarray]]]) -> Path:
    """A minimal Keras-2-style model file: model_weights/<layer>/<layer>/<weight>:0 plus a model_config."""
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights")
        root.attrs["layer_names"] = [name.encode() for name, _, _ in layers]
        for name, _, weights in layers:
            group = root.create_group(name)
            group.attrs["weight_names"] = [f"{name}/{role}:0".encode() for role in weights]
            for role, value in weights.items():
                group[f"{name}/{role}:0"] = value
        config = {"class_name": "Functional", "config": {"layers": [
            {"class_name": cls, "name": name, "config": {"name": name}} for name, cls, _ in layers]}}
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = "2.10.0"
    return path


def test_a_different_keras_network_is_refused_naming_the_layer(isolated):
    toy = write_toy_keras(isolated / "other.h5", [
        ("dense", "Dense", {"kernel": np.zeros((10, 2), np.float32), "bias": np.zeros(2, np.float32)})])
    with pytest.raises(ModelWeightsError, match=r"layer 1 of 21 \(stem depthwise 3x3\) should be a DepthwiseConv2D, "
                                                r"but the file has 'dense' \(Dense: kernel \(10, 2\), bias \(2,\)\)"):
        ki.load_keras_h5(toy)
    short = write_toy_keras(isolated / "short.h5", [
        ("dw", "DepthwiseConv2D", {"depthwise_kernel": np.zeros((3, 3, 1, 1), np.float32),
                                   "bias": np.zeros(1, np.float32)})])
    with pytest.raises(ModelWeightsError, match="has 1 layers with weights, SMICNet has 21"):
        ki.load_keras_h5(short)


def test_files_that_are_not_keras_weights_are_refused(isolated):
    registry = ModelRegistry.load()
    plain = isolated / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["data"] = np.arange(3)
    with pytest.raises(ModelWeightsError, match="not a Keras model or weights file"):
        ki.load_smicnet_weights(plain, registry)
    page = isolated / "page.h5"
    page.write_text("<!DOCTYPE html><html><body>GitHub</body></html>")
    with pytest.raises(ModelWeightsError, match="web page"):
        ki.load_smicnet_weights(page, registry)
    empty = isolated / "empty.h5"
    empty.write_bytes(b"")
    with pytest.raises(ModelWeightsError, match="empty"):
        ki.load_smicnet_weights(empty, registry)


def test_foreign_or_mismatched_pt_files_are_refused(isolated):
    registry = ModelRegistry.load()
    foreign = isolated / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ModelWeightsError, match="not a CochleaToolkit SMICNet weights file"):
        ki.load_smicnet_weights(foreign, registry)

    from CochleaLandmarksLib.smicnet_model import build_smicnet

    ours = ki.save_smicnet_weights(build_smicnet(), isolated / "ours.pt", source={"file": "trained here"})
    assert ki.load_smicnet_weights(ours, registry).metadata["format"] == ki.TORCH_FORMAT
    doc = torch.load(ours, weights_only=True)
    doc["architecture_version"] = 99
    torch.save(doc, isolated / "future.pt")
    with pytest.raises(ModelWeightsError, match="version 99"):
        ki.load_smicnet_weights(isolated / "future.pt", registry)
    doc["architecture_version"] = 1
    doc["state_dict"]["dense.weight"] = torch.zeros(384, 128)
    torch.save(doc, isolated / "shapes.pt")
    with pytest.raises(ModelWeightsError, match=r"'dense.weight' has shape \(384, 128\), expected \(384, 256\)"):
        ki.load_smicnet_weights(isolated / "shapes.pt", registry)
    flip_bytes(ours, isolated / "broken.pt", offset=100, count=200)
    with pytest.raises(ModelWeightsError, match="cannot be read as SMICNet weights"):
        ki.load_smicnet_weights(isolated / "broken.pt", registry)

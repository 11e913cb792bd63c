"""Model registry: schema validation, search order, SHA256 checks, downloads, imports, user registries.

Most tests use tiny fake weight files in a temporary folder. The ``shared`` tests use the published
SMICNet weights in ``../shared/models/smicnet`` beside the repository and are skipped without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from CochleaCommonLib import downloads
from CochleaCommonLib.errors import InputFileError, InvalidInputError, ModelWeightsError, OperationCancelled
from CochleaCommonLib.model_registry import (
    DEFAULT_REGISTRY_PATH,
    ModelEntry,
    ModelRegistry,
    parse_registry,
    register_user_model,
    registry_document,
)
from CochleaCommonLib.progress import CancelToken, Progress

REPO_ROOT = Path(__file__).resolve().parents[2]
SMICNET_DIR = REPO_ROOT.parent / "shared" / "models" / "smicnet"
needs_shared = pytest.mark.skipif(not SMICNET_DIR.is_dir(),
                                  reason=f"the published SMICNet weights are not at {SMICNET_DIR} (../shared absent)")

GOOD = b"fake weights, version 1\n" * 100
BAD = b"fake weights, version 2\n" * 100  # same size, other content


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_entry(model_id="toy", *, url="https://example.org/toy.pt", data=GOOD, file="toy.pt") -> ModelEntry:
    return ModelEntry(id=model_id, version="2.1", task="landmarks-test", input={"patch": [8, 8], "spacing_mm": 0.5},
                      file=file, sha256=sha(data), source="unit test", license="Apache-2.0", url=url,
                      format="pytorch", citation="", description="a toy model")


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """An isolated cache and no extra model folders (so the developer's real cache never leaks in)."""
    monkeypatch.setenv("COCHLEA_TOOLKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("COCHLEA_TOOLKIT_MODEL_DIRS", raising=False)
    for name in ("bundled", "extra1", "extra2"):
        (tmp_path / name).mkdir()
    return tmp_path


def toy_registry(dirs: Path, *entries: ModelEntry) -> ModelRegistry:
    path = dirs / "models.json"
    path.write_text(json.dumps(registry_document(list(entries) or [make_entry()])))
    return ModelRegistry.load(path, bundled_dir=dirs / "bundled")


def cached(dirs: Path, entry: ModelEntry) -> Path:
    return dirs / "cache" / "models" / f"{entry.id}-v{entry.version}" / entry.file


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# --- the bundled registry -----------------------------------------------------------------
def _published(registry: ModelRegistry) -> list:
    """The six published SMICNet entries (the registry also holds the project's own bundled models)."""
    return [e for e in registry.entries if e.id.startswith("smicnet-published-")]


def test_bundled_registry_has_the_six_published_smicnet_models():
    registry = ModelRegistry.load()
    assert registry.path == DEFAULT_REGISTRY_PATH and DEFAULT_REGISTRY_PATH.name == "models.json"
    assert [e.id for e in _published(registry)] == [f"smicnet-published-{n}" for n in (1, 3, 5, 7, 9, 11)]
    for n, entry in zip((1, 3, 5, 7, 9, 11), _published(registry)):
        assert entry.version == "1.0" and entry.task == "landmarks-smicnet" and entry.format == "keras-h5"
        assert entry.input == {"patch": [81, 81], "spacing_mm": 0.3,
                               "classes": ["Helicotrema", "Modiolus base", "Round Window", "background"]}
        assert entry.file == f"model_epoch_100_{n}volume{'s' if n > 1 else ''}_authorprovided.h5"
        assert entry.url == ("https://github.com/HearSys/comm4child_landmarks/raw/"
                             f"ef852f88d720f5cbef89df67e79d614a09e07823/TrainedNetworkWeights/{entry.file}")
        assert entry.source == "HearSys/comm4child_landmarks@ef852f8" and entry.license == "Apache-2.0"
        assert "10.1145/3632047.3632048" in entry.citation
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
    assert registry.bundled_dir == DEFAULT_REGISTRY_PATH.parent / "Models"


def test_bundled_smicnet_phantom_is_committed_verified_and_loads():
    """The project's own default weights ship in Models/, match their registry SHA256 and say where the
    landmark sits in the patch (pixel 40, not the authors' 41)."""
    from CochleaLandmarksLib.keras_import import load_smicnet_weights

    registry = ModelRegistry.load()
    entry = registry.get("smicnet-phantom")
    assert entry.format == "smicnet-pt" and entry.url is None and entry.license == "Apache-2.0"
    assert entry.input["landmark_pixel"] == [40, 40] and entry.input["spacing_mm"] == 0.3
    path = registry.bundled_dir / entry.file
    assert path.is_file() and sha(path.read_bytes()) == entry.sha256
    assert (registry.bundled_dir / "smicnet-phantom.md").is_file()  # the reproducing command
    assert registry.locate("smicnet-phantom").origin == "bundled"
    pytest.importorskip("torch")
    model = load_smicnet_weights("smicnet-phantom", registry)
    assert model.metadata["landmark_pixel"] == [40, 40] and model.metadata["model_id"] == "smicnet-phantom"


@needs_shared
@pytest.mark.shared
def test_bundled_hashes_match_the_shared_readme_and_files():
    table = dict(re.findall(r"^\| (\S+\.h5) \| ([0-9a-f]{64}) \|$", (SMICNET_DIR / "README.md").read_text(), re.M))
    registry = ModelRegistry.load()
    assert {e.file: e.sha256 for e in _published(registry)} == table
    for entry in _published(registry):
        assert sha((SMICNET_DIR / entry.file).read_bytes()) == entry.sha256


# --- schema validation --------------------------------------------------------------------
def doc_with(**changes):
    entry = make_entry().to_dict()
    entry.update(changes)
    return {"schema_version": 1, "models": [{k: v for k, v in entry.items() if v is not ...}]}


@pytest.mark.parametrize("document, fragment", [
    ([], "JSON object"),
    ({"models": []}, "schema_version"),
    ({"schema_version": 99, "models": []}, "Update CochleaToolkit"),
    ({"schema_version": 1}, "'models' list"),
    (doc_with(sha256="abc"), "64 hexadecimal digits"),
    (doc_with(sha256=...), "lacks the field(s) sha256"),
    (doc_with(file="../evil.pt"), "bare file name"),
    (doc_with(id="Has Space"), "may only use"),
    (doc_with(url="ftp://x/y"), "'url' must be null"),
    (doc_with(shaa256="typo"), "unknown field(s) shaa256"),
    (doc_with(input=[81, 81]), "'input' must be a JSON object"),
    (doc_with(input={"patch": [81, 0]}), "positive integers"),
    (doc_with(license=""), "'license' must be a non-empty string"),
])
def test_schema_errors_are_explicit(document, fragment):
    with pytest.raises(InputFileError, match=re.escape(fragment)):
        parse_registry(document, "test.json")


def test_duplicate_ids_are_rejected():
    document = doc_with()
    document["models"].append(dict(document["models"][0]))
    with pytest.raises(InputFileError, match="twice"):
        parse_registry(document)


def test_unreadable_registry_file(tmp_path):
    bad = tmp_path / "models.json"
    bad.write_text("{ not json")
    with pytest.raises(InputFileError, match="not valid JSON"):
        ModelRegistry.load(bad)
    with pytest.raises(InputFileError, match="does not exist"):
        ModelRegistry.load(tmp_path / "absent.json")


def test_round_trip_and_upper_case_hash_is_normalised():
    entry = make_entry()
    data = entry.to_dict()
    data["sha256"] = data["sha256"].upper()
    assert ModelEntry.from_dict(data) == entry
    assert entry.key == "toy-v2.1"


def test_unknown_id_lists_the_known_ones(dirs):
    registry = toy_registry(dirs)
    with pytest.raises(InvalidInputError, match=r"Unknown model 'nope'\. Known models: toy\."):
        registry.resolve("nope")


# --- search order and verification --------------------------------------------------------
def test_search_order_bundled_cache_then_extra_dirs(dirs, monkeypatch):
    entry = make_entry()
    registry = toy_registry(dirs, entry)
    monkeypatch.setenv("COCHLEA_TOOLKIT_MODEL_DIRS", os.pathsep.join([str(dirs / "extra1"), str(dirs / "extra2")]))
    (dirs / "extra2" / entry.key).mkdir()
    (dirs / "extra2" / entry.key / entry.file).write_bytes(GOOD)  # versioned sub-folder in a search dir
    found = registry.locate("toy")
    assert (found.origin, found.path) == ("search dir", dirs / "extra2" / entry.key / entry.file)
    (dirs / "extra1" / entry.file).write_bytes(GOOD)
    assert registry.resolve("toy") == dirs / "extra1" / entry.file
    cached(dirs, entry).parent.mkdir(parents=True)
    cached(dirs, entry).write_bytes(GOOD)
    assert registry.locate("toy").origin == "cache"
    (dirs / "bundled" / entry.file).write_bytes(GOOD)
    found = registry.locate("toy")
    assert (found.origin, found.path, found.sha256, found.entry) == ("bundled", dirs / "bundled" / entry.file,
                                                                   entry.sha256, entry)


def test_corrupt_file_is_an_error_not_skipped(dirs, monkeypatch):
    entry = make_entry()
    registry = toy_registry(dirs, entry)
    monkeypatch.setenv("COCHLEA_TOOLKIT_MODEL_DIRS", str(dirs / "extra1"))
    (dirs / "extra1" / entry.file).write_bytes(GOOD)  # a good copy later in the order must not hide it
    (dirs / "bundled" / entry.file).write_bytes(BAD)
    with pytest.raises(ModelWeightsError) as info:
        registry.resolve("toy")
    message = str(info.value)
    assert "is corrupt or a different version" in message and str(dirs / "bundled" / entry.file) in message
    assert sha(BAD) in message and entry.sha256 in message
    assert "cochlea models download toy" in message


def test_a_file_changed_after_verification_is_hashed_again(dirs, monkeypatch):
    entry = make_entry()
    registry = toy_registry(dirs, entry)
    weights = dirs / "bundled" / entry.file
    weights.write_bytes(GOOD)
    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(downloads.hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    registry.resolve("toy")
    registry.resolve("toy")
    registry.status()
    assert len(calls) == 1  # remembered per (path, mtime, size)
    stat = weights.stat()
    weights.write_bytes(BAD)  # same size; make sure the mtime differs even on coarse file systems
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    with pytest.raises(ModelWeightsError, match="corrupt"):
        registry.resolve("toy")
    assert len(calls) == 2


def test_missing_weights_say_where_and_how(dirs):
    entry = make_entry()
    registry = toy_registry(dirs, entry)
    with pytest.raises(ModelWeightsError) as info:
        registry.resolve("toy")
    message = str(info.value)
    assert "were not found" in message and "cochlea models download toy" in message
    assert str(cached(dirs, entry).parent) in message and entry.url in message
    assert "cochlea models import toy FILE" in message


def test_missing_weights_without_url(dirs):
    registry = toy_registry(dirs, make_entry(url=None))
    with pytest.raises(ModelWeightsError, match="no download address") as info:
        registry.resolve("toy", allow_download=True)
    assert str(dirs / "bundled") in str(info.value)


# --- user files ---------------------------------------------------------------------------
def test_user_file_is_accepted_and_its_hash_reported(dirs):
    registry = toy_registry(dirs)
    mine = dirs / "my_retrained.pt"
    mine.write_bytes(BAD)
    found = registry.locate(mine)
    assert (found.path, found.origin, found.sha256, found.entry) == (mine, "your file", sha(BAD), None)
    assert registry.resolve(str(mine)) == mine
    mine.write_bytes(GOOD)
    assert registry.locate(str(mine)).entry == make_entry()  # recognised as the registered model


def test_user_path_errors(dirs):
    registry = toy_registry(dirs)
    with pytest.raises(InputFileError, match="does not exist"):
        registry.resolve(dirs / "absent.pt")
    with pytest.raises(InputFileError, match="does not exist"):
        registry.resolve("weights/absent")
    with pytest.raises(InputFileError, match="is a folder"):
        registry.resolve(str(dirs / "bundled"))


# --- downloads ----------------------------------------------------------------------------
class CopyFetcher:
    """Serves bytes (or files) instead of the network and counts calls."""

    def __init__(self, data: bytes | None = None, source_dir: Path | None = None):
        self.data, self.source_dir, self.urls = data, source_dir, []

    def __call__(self, url, dest, progress):
        self.urls.append(url)
        if self.source_dir is not None:
            shutil.copyfile(self.source_dir / url.rsplit("/", 1)[-1], dest)
        else:
            dest.write_bytes(self.data)
        progress.update(1.0, "copied")


def test_download_on_demand_into_the_versioned_cache(dirs):
    entry = make_entry()
    registry = toy_registry(dirs, entry)
    fetcher = CopyFetcher(GOOD)
    with pytest.raises(ModelWeightsError, match="not found"):
        registry.resolve("toy", fetcher=fetcher)  # download not allowed
    assert fetcher.urls == []
    seen = []
    found = registry.locate("toy", allow_download=True, fetcher=fetcher, progress=Progress(lambda f, m: seen.append(f)))
    assert found.origin == "downloaded" and found.path == cached(dirs, entry)
    assert found.path.read_bytes() == GOOD and fetcher.urls == [entry.url]
    assert seen[-1] == 1.0 and seen == sorted(seen)
    assert leftovers(dirs / "cache") == [entry.file]
    assert registry.locate("toy", allow_download=True, fetcher=fetcher).origin == "cache"
    assert len(fetcher.urls) == 1


def test_download_with_wrong_checksum_is_deleted(dirs):
    entry = make_entry()
    registry = toy_registry(dirs, entry)
    with pytest.raises(ModelWeightsError) as info:
        registry.resolve("toy", allow_download=True, fetcher=CopyFetcher(BAD))
    message = str(info.value)
    assert f"expected SHA256 {entry.sha256}, got {sha(BAD)}" in message and "it was deleted" in message
    assert "cochlea models import toy FILE" in message  # the offline alternative
    assert leftovers(dirs / "cache") == []


def test_cancelled_download_leaves_nothing(dirs):
    registry = toy_registry(dirs)
    token = CancelToken()

    def slow_fetcher(url, dest, progress):
        dest.write_bytes(GOOD[:10])
        token.cancel()
        progress.update(0.1, "downloading")

    with pytest.raises(OperationCancelled):
        registry.download("toy", fetcher=slow_fetcher, progress=Progress(cancel=token))
    assert leftovers(dirs / "cache") == []


def test_network_failure_becomes_a_model_error(dirs):
    registry = toy_registry(dirs)

    def offline(url, dest, progress):
        raise OSError("Network is unreachable")

    with pytest.raises(ModelWeightsError, match="Network is unreachable") as info:
        registry.download("toy", fetcher=offline)
    assert "web browser" in str(info.value)
    assert leftovers(dirs / "cache") == []


def test_default_fetcher_reads_file_urls(dirs):
    source = dirs / "served.pt"
    source.write_bytes(GOOD)
    entry = make_entry(url=source.as_uri())
    registry = toy_registry(dirs, entry)
    found = registry.download("toy")
    assert found.origin == "downloaded" and found.path.read_bytes() == GOOD
    missing = make_entry("gone", url=(dirs / "nothing.pt").as_uri())
    with pytest.raises(ModelWeightsError, match="download from file:"):
        toy_registry(dirs, missing).download("gone")


def test_download_keeps_a_valid_copy_and_replaces_a_corrupt_one(dirs):
    entry = make_entry()
    registry = toy_registry(dirs, entry)
    cached(dirs, entry).parent.mkdir(parents=True)
    cached(dirs, entry).write_bytes(GOOD)
    fetcher = CopyFetcher(GOOD)
    assert registry.download("toy", fetcher=fetcher).origin == "cache" and fetcher.urls == []
    assert registry.download("toy", fetcher=fetcher, force=True).origin == "downloaded" and len(fetcher.urls) == 1
    cached(dirs, entry).write_bytes(b"truncated")
    assert registry.download("toy", fetcher=fetcher).origin == "downloaded"
    assert cached(dirs, entry).read_bytes() == GOOD


def test_import_checks_the_file_then_copies_it(dirs):
    entry = make_entry()
    registry = toy_registry(dirs, entry)
    wrong = dirs / "wrong.pt"
    wrong.write_bytes(BAD)
    with pytest.raises(ModelWeightsError, match="is not the weights file of model 'toy'"):
        registry.import_file("toy", wrong)
    assert leftovers(dirs / "cache") == []
    right = dirs / "downloaded-with-browser.pt"
    right.write_bytes(GOOD)
    assert registry.import_file("toy", right) == cached(dirs, entry)
    assert registry.locate("toy").origin == "cache"


def test_status_reports_each_state(dirs):
    ok, bad, missing = make_entry("ok", file="ok.pt"), make_entry("bad", file="bad.pt"), make_entry("gone", file="g.pt")
    registry = toy_registry(dirs, ok, bad, missing)
    (dirs / "bundled" / "ok.pt").write_bytes(GOOD)
    (dirs / "bundled" / "bad.pt").write_bytes(BAD)
    states = {s.entry.id: s for s in registry.status()}
    assert states["ok"].state == "ok" and states["ok"].origin == "bundled"
    assert states["bad"].state == "mismatch" and states["bad"].actual_sha256 == sha(BAD)
    assert states["gone"].state == "missing" and states["gone"].path is None
    assert states["gone"].to_dict()["downloadable"] is True
    assert dirs / "bundled" / "g.pt" in states["gone"].looked_in


# --- user registries ----------------------------------------------------------------------
def test_register_user_model(tmp_path):
    path = tmp_path / "sub" / "models.json"
    first, second = make_entry("first"), make_entry("second", url=None)
    assert register_user_model(first, path) == path
    register_user_model(second, path)
    assert ModelRegistry.load(path).entries == (first, second)
    with pytest.raises(InvalidInputError, match="already has a model 'first'"):
        register_user_model(make_entry("first", data=BAD), path)
    register_user_model(make_entry("first", data=BAD), path, replace=True)
    reloaded = ModelRegistry.load(path)
    assert reloaded.ids == ["second", "first"] and reloaded.get("first").sha256 == sha(BAD)
    before = path.read_bytes()
    broken = ModelEntry(**{**make_entry("third").to_dict(), "sha256": "123"})
    with pytest.raises(InputFileError, match="64 hexadecimal"):
        register_user_model(broken, path)
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == ["models.json"]


# --- the published weights in ../shared ---------------------------------------------------
@needs_shared
@pytest.mark.shared
def test_published_weights_found_in_a_model_dir(dirs, monkeypatch):
    monkeypatch.setenv("COCHLEA_TOOLKIT_MODEL_DIRS", str(SMICNET_DIR))
    registry = ModelRegistry.load()
    assert [s.state for s in registry.status()] == ["ok"] * len(registry.entries)
    assert registry.resolve("smicnet-published-7") == SMICNET_DIR / "model_epoch_100_7volumes_authorprovided.h5"


@needs_shared
@pytest.mark.shared
def test_published_weights_download_offline_with_injected_fetcher(dirs):
    registry = ModelRegistry.load()
    fetcher = CopyFetcher(source_dir=SMICNET_DIR)
    for entry in _published(registry):
        found = registry.locate(entry.id, allow_download=True, fetcher=fetcher)
        assert found.origin == "downloaded"
        assert found.path == dirs / "cache" / "models" / f"{entry.id}-v1.0" / entry.file
    assert fetcher.urls == [e.url for e in _published(registry)]
    origins = {s.entry.id: s.origin for s in registry.status()}
    assert [origins[e.id] for e in _published(registry)] == ["cache"] * 6 and origins["smicnet-phantom"] == "bundled"

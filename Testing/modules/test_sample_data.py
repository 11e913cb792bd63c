"""The phantoms registered in Sample Data generate once, are cached, and load into the scene."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core wheel not installed")

pytestmark = pytest.mark.mrml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def common_module(harness):
    sys.path.insert(0, str(ROOT / "CochleaCommon"))
    try:
        import CochleaCommon

        yield CochleaCommon
    finally:
        sys.path.remove(str(ROOT / "CochleaCommon"))


def test_registered_sources_load_generated_phantoms(common_module, tmp_path, monkeypatch):
    monkeypatch.setenv("COCHLEA_TOOLKIT_CACHE", str(tmp_path))
    slicer.modules.sampleDataSources = {}
    common_module.registerSampleData()
    sources = {s.sampleName: s for s in slicer.modules.sampleDataSources["Cochlea"]}
    assert set(sources) == {"CochleaPhantomCT", "CochleaPhantomCBCT", "CochleaPhantomPostop"}
    assert all(os.path.exists(s.thumbnailFileName) for s in sources.values())
    nodes = sources["CochleaPhantomCT"].customDownloader(sources["CochleaPhantomCT"])
    assert nodes["volume"].GetName() == "CochleaPhantomCT"
    cached = list((tmp_path / "phantoms").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("CochleaPhantomCT-g")
    before = {p: p.stat().st_mtime_ns for p in cached[0].iterdir()}
    # a second click reuses the cache (no regeneration) and loads the same voxels
    nodes2 = sources["CochleaPhantomCT"].customDownloader(sources["CochleaPhantomCT"])
    assert {p: p.stat().st_mtime_ns for p in cached[0].iterdir()} == before
    assert np.array_equal(slicer.util.arrayFromVolume(nodes["volume"]), slicer.util.arrayFromVolume(nodes2["volume"]))

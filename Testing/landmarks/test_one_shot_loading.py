"""Loading a detector for one run (the ``cochlea landmarks`` command): no CUDA set-up that only repeated runs win
back. The CUDA branches are reached on the CPU by standing in for the device choice and the weight loaders."""

from __future__ import annotations

import pytest


def test_a_one_shot_detector_builds_its_cuda_fast_classifier_without_graphs(monkeypatch):
    """One-shot (the CLI): the fast classifier on CUDA keeps float16 but replays no CUDA graphs; on the CPU the
    flag changes nothing."""
    pytest.importorskip("torch")
    from CochleaLandmarksLib import smicnet_detector as sd
    from CochleaLandmarksLib.landmark_detection import load_detector

    built = []
    monkeypatch.setattr(sd, "smicnet_classifier", lambda network, **k: built.append(k) or object())
    for graphs in (True, False):
        assert sd.LoadedDetector("smicnet", "m", "cuda:0", object(), 0.0, cuda_graphs=graphs).fast_classifier
    assert built == [{"half": True, "graphs": True}, {"half": True, "graphs": False}]
    monkeypatch.undo()
    detector = load_detector("smicnet", "smicnet-phantom", device="cpu", one_shot=True)
    assert detector.cuda_graphs is False and detector.fast_classifier is detector.classifier
    assert load_detector("smicnet", "smicnet-phantom", device="cpu").cuda_graphs is True


@pytest.mark.parametrize("one_shot", [False, True])
def test_only_a_detector_loaded_for_repeated_runs_turns_cudnn_autotuning_on(one_shot, monkeypatch):
    """The CUDA branch of loading, reached on the CPU by standing in for the device choice and the weight loader."""
    torch = pytest.importorskip("torch")
    from types import SimpleNamespace

    from CochleaLandmarksLib import detector_inference, keras_import
    from CochleaLandmarksLib import smicnet_detector as sd
    from CochleaLandmarksLib.smicnet_model import build_smicnet

    cuda = SimpleNamespace(name="cuda:0", message=None)
    monkeypatch.setattr(sd, "resolve_device", lambda device: cuda)
    monkeypatch.setattr(keras_import, "load_smicnet_weights", lambda *a, **k: build_smicnet())
    monkeypatch.setattr(detector_inference, "resolve_device", lambda device: cuda)
    monkeypatch.setattr(detector_inference, "load_detector_weights", lambda path, device: ({}, {}, {}))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    detector = sd.load_smicnet_detector("smicnet-phantom", device="cuda", one_shot=one_shot)
    assert detector.cuda_graphs is (not one_shot)
    assert torch.backends.cudnn.benchmark is (not one_shot)
    torch.backends.cudnn.benchmark = False
    detector_inference.load_3d_detector("detector-phantom", device="cuda", one_shot=one_shot)
    assert torch.backends.cudnn.benchmark is (not one_shot)

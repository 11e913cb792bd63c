"""CUDA-graph replay of SMICNet's inference: same values as the eager forward, new graphs for new weights.

The graph tests need a CUDA device and skip without one (CI has none; they run on the project's GPU machine).
"""

from __future__ import annotations

import numpy as np
import pytest
from CochleaLandmarksLib.cuda_graph_forward import GraphedForward, module_state

torch = pytest.importorskip("torch")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def test_tensors_off_cuda_run_the_forward_itself():
    calls = []

    def forward(x):
        calls.append(x.shape)
        return x * 2

    graphed = GraphedForward(forward, lambda: [])
    out = graphed(torch.ones(3, 2))
    assert torch.equal(out, torch.full((3, 2), 2.0)) and calls == [(3, 2)] and graphed.captures == 0


@needs_cuda
def test_graphed_smicnet_equals_the_eager_forward_and_follows_new_weights():
    from CochleaLandmarksLib.smicnet_model import build_smicnet
    from CochleaLandmarksLib.smicnet_sweep import smicnet_classifier

    torch.manual_seed(0)
    model = build_smicnet("cuda").eval()
    eager = smicnet_classifier(model, half=True)
    graphed = smicnet_classifier(model, half=True, graphs=True)
    x = torch.rand(512, 1, 81, 81, device="cuda")
    for batch in (x, x.flip(0), x[:256]):
        np.testing.assert_allclose(graphed.on_device(batch).cpu().numpy(), eager.on_device(batch).cpu().numpy(),
                                   atol=1e-6)
    assert graphed.network.captures == 2  # one graph per shape, replayed for the second batch of 512
    before = graphed.on_device(x).cpu().numpy()
    with torch.no_grad():  # in place, as an optimiser step: same addresses, new version counters
        for bn in (model.stem.bn, *(stage.block.bn for stage in model.stages)):
            bn.running_var.mul_(3.0)
    after = graphed.on_device(x).cpu().numpy()
    np.testing.assert_allclose(after, eager.on_device(x).cpu().numpy(), atol=1e-6)
    assert np.abs(after - before).max() > 1e-3  # the new statistics did change the answer
    assert graphed.network.captures == 3


@needs_cuda
def test_the_graphed_output_is_not_overwritten_by_the_next_replay():
    graphed = GraphedForward(lambda x: x + 1.0, module_state(torch.nn.Linear(1, 1)))
    first = graphed(torch.zeros(4, device="cuda"))
    graphed(torch.ones(4, device="cuda"))
    assert torch.equal(first, torch.ones(4, device="cuda"))

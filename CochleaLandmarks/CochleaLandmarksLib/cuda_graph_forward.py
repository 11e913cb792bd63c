"""Replay a network's inference from CUDA graphs, one graph per input shape.

Why: the fast sweep calls SMICNet some twenty times per click, mostly on a few hundred patches (the growth
rounds and the view average). On an H100 such a call is bound by launching about a hundred kernels from
Python (2.5-3.5 ms), not by the GPU's work (a few tenths of a ms). A CUDA graph records those launches once
and replays them as one, so a small call costs about what the GPU does.

What a graph fixes at capture: the input shape (the sweep pads every batch to a multiple of 512, so a click
sees a handful of shapes), and the addresses of every tensor the forward reads. Parameters updated in place
(an optimiser step, ``load_state_dict``) keep their addresses, but anything derived from them and cached (the
folded BatchNorm kernels) does not; so the graphs are keyed on the address and version counter of every
parameter and buffer, and captured again when any changes (a device or dtype move changes addresses). If
capturing fails (an operation a graph cannot hold, an old driver), the forward runs eagerly from then on, with
the same results.

Memory: the graphs of one model share one memory pool, which stays allocated while the model is in use (after
fast sweeps on an H100: 8 graphs, 2.2 GB peak allocated, 3.3 GB reserved by torch's allocator).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

LOG = logging.getLogger(__name__)
#: Eager runs of a new shape before it is captured: cuDNN's autotuner (benchmark mode) times its kernels on the
#: first run of a shape, and those timing runs must not be recorded.
WARMUP_RUNS = 2


class GraphedForward:
    """``forward(x)`` on CUDA, replayed from a graph per input shape and dtype; eager for anything else.

    ``state`` returns the tensors whose address and version decide whether the captured graphs are still
    valid (normally ``module.parameters()`` and ``module.buffers()``). The result is a fresh tensor, never
    the graph's own output buffer (the next replay overwrites that).
    """

    def __init__(self, forward: Callable[[Any], Any], state: Callable[[], Any]) -> None:
        self.forward = forward
        self.state = state
        self.disabled = False
        self.captures = 0
        self._key: Any = None
        self._graphs: dict[tuple, tuple[Any, Any, Any]] = {}
        self._pool: Any = None

    def __call__(self, x: Any) -> Any:
        if self.disabled or not getattr(x, "is_cuda", False):
            return self.forward(x)
        key = tuple((t.data_ptr(), t._version) for t in self.state())
        if key != self._key:  # new weights: the old graphs read stale derived tensors
            self._graphs.clear()
            self._pool = None
            self._key = key
        shape = (tuple(x.shape), x.dtype, x.device)
        entry = self._graphs.get(shape)
        if entry is None:
            entry = self._capture(x)
            if entry is None:
                return self.forward(x)
            self._graphs[shape] = entry
        static_in, graph, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def _capture(self, x: Any) -> tuple[Any, Any, Any] | None:
        import torch

        try:
            static_in = x.detach().clone()
            side = torch.cuda.Stream(device=x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    self.forward(static_in)
            torch.cuda.current_stream(x.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                static_out = self.forward(static_in)
            self._pool = graph.pool()
            self.captures += 1
            return static_in, graph, static_out
        except RuntimeError as error:  # an operation a graph cannot hold: run eagerly from now on
            LOG.warning("CUDA graph capture failed (%s); running the network without graphs.", error)
            self.disabled = True
            self._graphs.clear()
            self._pool = None
            torch.cuda.synchronize(x.device)
            return None


def module_state(module: Any) -> Callable[[], list[Any]]:
    """The ``state`` of :class:`GraphedForward` for a torch module: all its parameters and buffers, read afresh
    from each submodule on every call (a device move replaces buffer tensors), without ``module.parameters()``:
    its recursive walk cost about 0.5 ms per call, a third of a small batch's replay."""
    submodules = list(module.modules())

    def state() -> list[Any]:
        return [t for m in submodules for group in (m._parameters, m._buffers) for t in group.values()
                if t is not None]

    return state


__all__ = ["GraphedForward", "WARMUP_RUNS", "module_state"]

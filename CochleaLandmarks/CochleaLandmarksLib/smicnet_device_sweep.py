"""The growth rounds and view averaging of the fast sweep, kept on the classifier's device.

Why: on a GPU the fast sweep's growth rounds are a dozen small steps, each a few hundred patches that the
network scores in a fraction of a millisecond. Done on the host (``smicnet_sweep._grow_on_host``), every round
copied its probabilities back, waited for them, and searched the unscored neighbours with numpy: the GPU sat
idle most of each round. Here the probability and scored volumes live on the device, the neighbours of the hot
voxels are one 3x3x3 max-pool of a mask, and a round waits for the GPU once, for the number of voxels the next
round scores. The voxels, their order and hence the probabilities are those of the host loop (tested on the CPU
with a device-style classifier), so the maps and points do not depend on where the sweep ran.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .smicnet_model import CLASS_NAMES
from .smicnet_sweep import (
    LANDMARK_NAMES,
    Classifier,
    PatchSource,
    average_views_staged,
    classify_groups_on_device,
    level_span,
)
from .smicnet_views import SAGITTAL, View


def grow_on_device(source: PatchSource, classifier: Classifier, lattice_ijk: np.ndarray, keep_threshold: float,
                   views: Sequence[View], views_threshold: float, *, batch_size: int | None = None,
                   progress: Callable[[float], Any] | None = None,
                   views_progress: Callable[[float], Any] | None = None,
                   island_threshold: float | None = None) -> tuple[np.ndarray, int]:
    """The lattice, growth rounds and view averaging of ``sweep_coarse_to_fine`` for a classifier that
    ``runs_on_device``: the probabilities ``(n, n, n, 4)`` on the host (0 where never scored) and the number of
    patches scored (all views)."""
    import torch

    device = classifier.torch_device
    n = source.n
    probs = torch.zeros((n, n, n, len(CLASS_NAMES)), dtype=torch.float32, device=device)
    scored = torch.zeros((n, n, n), dtype=torch.bool, device=device)
    candidates = torch.as_tensor(np.asarray(lattice_ijk, dtype=np.int64).reshape(-1, 3), device=device)
    total, level = 0, 0
    while len(candidates):  # the length is known on the host: nonzero() below synchronised once
        lo, hi = level_span(level)
        sub = None if progress is None else (lambda f, lo=lo, hi=hi: progress(lo + (hi - lo) * f))
        p = classify_groups_on_device(source, classifier, [(candidates, SAGITTAL)], batch_size=batch_size,
                                      progress=sub)
        index = candidates.unbind(1)
        probs.index_put_(index, p)
        scored.index_put_(index, torch.ones((), dtype=torch.bool, device=device))
        hot = torch.zeros((n, n, n), dtype=torch.float32, device=device)
        hot.index_put_(index, (p[:, :len(LANDMARK_NAMES)].amax(dim=1) >= keep_threshold).float())
        total += len(candidates)
        # The 26-neighbours of the hot voxels inside the box, in flat-index order as the host loop's np.unique.
        near = torch.nn.functional.max_pool3d(hot[None, None], 3, stride=1, padding=1)[0, 0] > 0
        candidates = (near & ~scored).nonzero()
        level += 1
    if progress is not None:
        progress(1.0)
    if len(views) > 1:
        total += _average_views_on_device(source, classifier, probs, scored, views, views_threshold, batch_size,
                                          views_progress, island_threshold)
    # Back to the host as the scored voxels and their values: a tenth of the bytes of the whole volume.
    where = scored.nonzero()
    values = probs[where.unbind(1)]
    host = np.zeros((n, n, n, len(CLASS_NAMES)), dtype=np.float32)
    host[tuple(where.cpu().numpy().T)] = values.cpu().numpy()
    return host, total


def _average_views_on_device(source: PatchSource, classifier: Classifier, probs: Any, scored: Any,
                             views: Sequence[View], threshold: float, batch_size: int | None,
                             progress: Callable[[float], Any] | None, island_threshold: float | None) -> int:
    """``smicnet_sweep._average_views`` on the device: the scored voxels where a landmark reached ``threshold``
    hold the mean over ``views`` (the same stages, through the same ``average_views_staged``); returns the
    patches scored."""
    import torch

    promising = (scored & (probs[..., :len(LANDMARK_NAMES)].amax(dim=-1) >= threshold)).nonzero()
    if not len(promising):
        return 0

    def score_sum(rows: Any, stage: tuple[View, ...], sub: Callable[[float], Any] | None) -> Any:
        voxels = promising[rows]
        answers = classify_groups_on_device(source, classifier, [(voxels, v) for v in stage],
                                            batch_size=batch_size, progress=sub)
        return answers.reshape(len(stage), len(voxels), -1).sum(dim=0, dtype=torch.float64)

    index = promising.unbind(1)
    summed = probs[index].double()
    patches = average_views_staged(summed, torch.arange(len(promising), device=promising.device), score_sum, views,
                                   island_threshold, progress)
    probs.index_put_(index, summed.float())
    return patches

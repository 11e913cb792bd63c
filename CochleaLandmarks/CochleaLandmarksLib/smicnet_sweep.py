"""SMICNet sliding-window inference around a seed: per-class probability volumes and landmark points.

Why: SMICNet classifies one 81x81 sagittal patch at a time (seed-methods.md 1.3). Locating a landmark
means classifying the patch of every voxel in a box around a seed, in the network's own array
convention (axes increasing towards L, P, S at 0.3 mm), then turning the probability maps back into
world (RAS) points. This module does that geometry once, exactly, for any volume orientation and
spacing; the classifier is a plain callable so the geometry can be tested with an oracle.

Conventions:
* SMICNet's ``vol[i, j, k]`` is our :class:`Image` reoriented to LPS, with the KJI array transposed.
* The patch of centre ``c`` is ``vol[c_i, c_j-40 : c_j+41, c_k-40 : c_k+41]``: rows j, columns k,
  centre pixel (40, 40); never transposed.
* ``centre_offset_vox`` (i, j, k): the probability stored at box voxel ``v`` is the classifier's
  answer for the patch centred at ``v - centre_offset_vox``. ``(0, 0, 0)`` replicates the published
  inference exactly, including its one-voxel bias (the network was trained with the landmark at
  pixel (41, 41)). The default ``(0, 1, 1)`` corrects it: voxel ``v`` then sits at pixel (41, 41)
  of its patch, as in training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from CochleaCommonLib.errors import InvalidInputError
from CochleaCommonLib.image import Image
from CochleaCommonLib.image_ops import crop_around, crop_box, reorient, resample_to_spacing
from numpy.lib.stride_tricks import sliding_window_view

from .smicnet_model import CLASS_NAMES, PATCH_SIZE, SPACING_MM
from .smicnet_preprocess import quantize_patches
from .smicnet_views import SAGITTAL, View, check_view, cut_view, cut_view_torch, margin_needed

HALF = PATCH_SIZE // 2  # 40
LANDMARK_NAMES = tuple(CLASS_NAMES[:3])
SPACING_TOLERANCE = 0.01  # relative; within it the volume is used as is (no interpolation)
#: Patches per classifier call on a GPU with at least ``LARGE_GPU_GB`` of memory (about 2.5 GB at peak), and on
#: a smaller one (about 0.7 GB). Larger batches mean fewer kernel launches, which bound the sweep on a fast GPU.
GPU_BATCH = 4096
SMALL_GPU_BATCH = 1024
LARGE_GPU_GB = 12.0
#: On a device, batches are padded to a few stable sizes: cuDNN's autotuner (benchmark mode) times its kernels
#: again for every new input shape, a CUDA graph is captured per shape, and each click's levels end in a batch of
#: a different size. Up to DEVICE_SHAPE_MULTIPLE the next power of two from DEVICE_MIN_SHAPE (the growth rounds'
#: small batches: on an H100 a 128-patch call takes a third of a 512-patch one), above it the next multiple.
DEVICE_SHAPE_MULTIPLE = 512
DEVICE_MIN_SHAPE = 128
#: Patches per call on the CPU: every activation stays below glibc's 32 MiB mmap threshold and in cache.
CPU_BATCH = 64
#: Batch for classifiers that state no preference (test oracles, user callables).
DEFAULT_BATCH = 256

Classifier = Callable[[np.ndarray], Any]


def _network_grid(image: Image, seed_ras: np.ndarray, extent_mm: np.ndarray) -> Image:
    """The volume reoriented to LPS and, where needed, resampled to 0.3 mm (only near the seed)."""
    lps = reorient(image, "LPS")
    spacing = lps.spacing
    if np.all(np.abs(spacing - SPACING_MM) <= SPACING_TOLERANCE * SPACING_MM):
        return lps
    # Resample only a region a few voxels larger than needed; trimmed at the volume's border.
    local = crop_around(lps, seed_ras, extent_mm + 4.0 * spacing, pad_value=None)
    local = local.with_array(local.array.astype(np.float32, copy=False))
    return resample_to_spacing(local, SPACING_MM)


def gpu_batch(device: Any) -> int:
    """Patches per call on ``device``: ``GPU_BATCH`` with ``LARGE_GPU_GB`` or more memory, else the small batch."""
    import torch

    try:
        total_gb = torch.cuda.get_device_properties(device).total_memory / 2 ** 30
    except (RuntimeError, AssertionError, ValueError, AttributeError):  # not a CUDA device (e.g. mps)
        return SMALL_GPU_BATCH
    return GPU_BATCH if total_gb >= LARGE_GPU_GB else SMALL_GPU_BATCH


def smicnet_classifier(model: Any, *, half: bool = False, graphs: bool = False) -> Classifier:
    """Adapt a SMICNet model (``build_smicnet``) to the classifier the sweep calls.

    It takes a float32 batch ``(N, 1, 81, 81)`` as a numpy array or a torch tensor and returns float32
    numpy probabilities. On the CPU the model runs channels-last in batches of ``CPU_BATCH``: small enough
    that the activations stay in cache and are reused by the allocator; batches of 256 or more page-faulted
    every activation in afresh and ran at well under half the speed on 2 cores. On a GPU the classifier
    carries ``torch_device`` and ``on_device`` (tensor in, tensor out, no copy to the host): the sweep then
    cuts and quantises the patches on the GPU itself (:meth:`PatchSource.patches_torch`) and copies the
    probabilities back once.

    ``half`` (CUDA only; fast mode): the network runs under float16 autocast, the softmax in float32. On an
    H100 this cuts the network's time by a third; probabilities move by < 0.005 and the classes and
    landmark points did not change in our checks (see the README). Parity mode never uses it.

    ``graphs`` (CUDA only; fast mode): each batch shape is captured once as a CUDA graph and replayed
    (:mod:`cuda_graph_forward`): the sweep's many small calls then cost what the GPU does, not what launching
    a hundred kernels from Python does. Same values as without (the same kernels run).
    """
    import torch

    device = next(model.parameters()).device
    on_cpu = device.type == "cpu"
    if on_cpu:
        model = model.to(memory_format=torch.channels_last)

    autocast = half and device.type == "cuda"

    def network(x: Any) -> Any:
        if autocast:  # no cast cache: a graph must recast the weights it reads on every replay
            with torch.autocast("cuda", dtype=torch.float16, cache_enabled=False):
                return model.predict_proba(x).float()
        return model.predict_proba(x)

    if graphs and device.type == "cuda":
        from .cuda_graph_forward import GraphedForward, module_state

        network = GraphedForward(network, module_state(model))

    def on_device(x: Any) -> Any:
        x = x.to(device=device, dtype=torch.float32)
        if on_cpu:
            x = x.contiguous(memory_format=torch.channels_last)
        return network(x)

    def classify(batch: Any) -> np.ndarray:
        if not isinstance(batch, torch.Tensor):
            batch = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        return on_device(batch).detach().cpu().numpy().astype(np.float32)

    classify.torch_device = None if on_cpu else device
    classify.on_device = on_device
    classify.network = network
    classify.preferred_batch = CPU_BATCH if on_cpu else gpu_batch(device)
    return classify


class PatchSource:
    """The region around a seed on SMICNet's grid, ready to hand out the patch of any box voxel.

    The box is ``n`` voxels per side on the LPS 0.3 mm grid, centred on the voxel nearest the seed. Box
    voxel ``v`` (i, j, k) is classified from the patch centred at ``v - centre_offset`` (see the module
    docstring). ``preprocess`` (e.g. metal zeroing) is applied to the raw region before any patch is cut.
    """

    def __init__(self, image: Image, seed_ras, n: int, *, centre_offset_vox=(0, 1, 1),
                 preprocess: Callable[[np.ndarray], np.ndarray] | None = None, all_views: bool = False) -> None:
        seed = np.asarray(seed_ras, dtype=np.float64).reshape(3)
        if not np.all(np.isfinite(seed)):
            raise InvalidInputError("The seed point must be a finite RAS position.")
        self.n = int(n)
        self.offset = np.asarray(centre_offset_vox, dtype=np.int64).reshape(3)
        self.margin = np.abs(self.offset) + np.array([0, HALF, HALF])  # per axis i, j, k
        self.landmark_pixel: int | None = None
        if all_views:
            # Coronal patches need context along i too (see smicnet_views); only for an offset that moves the
            # voxel along the patch diagonal, which is what "the landmark at pixel (p, p)" means.
            if self.offset[0] != 0 or self.offset[1] != self.offset[2]:
                raise InvalidInputError(f"Views other than the sagittal need a centre offset (0, s, s), got "
                                        f"{tuple(int(x) for x in self.offset)}.")
            self.landmark_pixel = HALF + int(self.offset[1])
            self.margin = np.full(3, margin_needed(self.landmark_pixel), dtype=np.int64)
        roi_size = self.n + 2 * self.margin
        vol_img = _network_grid(image, seed, roi_size * SPACING_MM)
        trimmed = crop_box(vol_img, seed, roi_size, pad_value=None)
        raw = trimmed.array if preprocess is None else preprocess(trimmed.array)
        pad = float(np.min(raw))
        roi = crop_box(vol_img, seed, roi_size, pad_value=pad)
        if preprocess is not None:
            roi = roi.with_array(preprocess(roi.array))
        self.roi = roi
        self.vol = roi.array.transpose(2, 1, 0)  # SMICNet's vol[i, j, k]
        # windows[i, a, b] = vol[i, a:a+81, b:b+81] (centre a+40, b+40); a view, nothing copied.
        windows = sliding_window_view(self.vol, (PATCH_SIZE, PATCH_SIZE), axis=(1, 2))
        # Box voxel v has ROI index v + margin and patch centre v + margin - offset.
        first = self.margin - self.offset - np.array([0, HALF, HALF])
        self.windows = windows[first[0]:first[0] + n, first[1]:first[1] + n, first[2]:first[2] + n]
        self.box_geometry = roi.ijk_to_ras.copy()
        self.box_geometry[:3, 3] = roi.index_to_ras(self.margin.astype(np.float64))
        self._volume_tensor: Any = None
        self._centre_shift: Any = None
        self._steps: Any = None
        self._margin_tensor: Any = None

    def patches(self, ijk: np.ndarray, view: View = SAGITTAL) -> np.ndarray:
        """Quantised float32 patches ``(M, 1, 81, 81)`` for box voxels ``ijk`` ``(M, 3)`` in ``view`` (a view
        other than the sagittal needs a source built with ``all_views=True``; see smicnet_views)."""
        ijk = np.asarray(ijk, dtype=np.int64).reshape(-1, 3)
        if tuple(view) != SAGITTAL:
            return quantize_patches(cut_view(self.vol, ijk + self.margin, view, self._views_pixel()))[:, None]
        ii, jj, kk = ijk.T
        return quantize_patches(self.windows[ii, jj, kk])[:, None, :, :]

    def _views_pixel(self) -> int:
        if self.landmark_pixel is None:
            raise InvalidInputError("This patch source was built for sagittal patches only (all_views=False).")
        return self.landmark_pixel

    def patches_torch(self, ijk: Any, device: Any, view: View = SAGITTAL) -> Any:
        """The same patches as :meth:`patches`, cut and quantised by torch on ``device`` (bit-identical).

        ``ijk`` is a numpy array or an int64 tensor already on ``device`` (the sweep uploads a whole level's
        voxels once: a pageable upload per batch would wait for the GPU to finish the previous batch). The
        region is copied to the device once; each call then gathers ``(M, 81, 81)`` voxels there.
        """
        import torch

        from .smicnet_preprocess import quantize_patches_torch

        self._upload(device)
        if not isinstance(ijk, torch.Tensor):
            ijk = torch.as_tensor(np.asarray(ijk, dtype=np.int64), device=device)
        if tuple(view) != SAGITTAL:
            centres = ijk + self._margin_tensor  # the voxel's own ROI index
            return quantize_patches_torch(cut_view_torch(self._volume_tensor, centres, view,
                                                         self._views_pixel()))[:, None, :, :]
        centre = ijk + self._centre_shift
        steps = self._steps
        rows = centre[:, 1, None] + steps
        cols = centre[:, 2, None] + steps
        patches = self._volume_tensor[centre[:, 0, None, None], rows[:, :, None], cols[:, None, :]]
        return quantize_patches_torch(patches)[:, None, :, :]

    def _upload(self, device: Any) -> None:
        """Copy the region (and the index constants) to ``device`` once."""
        import torch

        if self._volume_tensor is None or self._volume_tensor.device != torch.device(device):
            # The region's own KJI array is contiguous; its [i, j, k] view is made on the device (transposing the
            # 3.5 M voxels on the host first took longer than the lattice's network pass on an H100).
            kji = torch.from_numpy(np.ascontiguousarray(self.roi.array, dtype=np.float32)).to(device)
            self._volume_tensor = kji.permute(2, 1, 0).contiguous()
            # Uploaded once with the region: an upload per batch would stall on the batch before it.
            self._centre_shift = torch.as_tensor(self.margin - self.offset, dtype=torch.int64).to(device)
            self._steps = torch.arange(-HALF, HALF + 1, device=device)
            self._margin_tensor = torch.as_tensor(self.margin, dtype=torch.int64).to(device)

    def box_image(self, array_ijk: np.ndarray) -> Image:
        """An :class:`Image` on the box grid from an array indexed ``[i, j, k]``."""
        return Image(np.ascontiguousarray(array_ijk.transpose(2, 1, 0)), self.box_geometry.copy())


def classify_voxels(source: PatchSource, classifier: Classifier, ijk: np.ndarray, *, batch_size: int | None = None,
                    progress: Callable[[float], Any] | None = None, view: View = SAGITTAL) -> np.ndarray:
    """Class probabilities ``(M, 4)`` for the box voxels ``ijk`` ``(M, 3)`` seen in ``view``, in batches.

    ``batch_size`` defaults to the classifier's ``preferred_batch`` (or ``DEFAULT_BATCH``). A classifier with
    ``torch_device`` and ``on_device`` gets patches cut on its device and keeps every output there until one
    copy to the host at the end: no synchronisation per batch.
    """
    return classify_views(source, classifier, ijk, (view,), batch_size=batch_size, progress=progress)[0]


def classify_views(source: PatchSource, classifier: Classifier, ijk: np.ndarray, views: Sequence[View], *,
                   batch_size: int | None = None, progress: Callable[[float], Any] | None = None) -> np.ndarray:
    """Class probabilities ``(V, M, 4)`` of the voxels ``ijk`` ``(M, 3)`` in each of ``views``.

    Why one call for all views: the patches of every view share the batches, so a few hundred voxels in seven
    views are one or two classifier calls, not seven. On a GPU each call has a fixed cost of a few ms (kernel
    launches, a synchronisation) that a small batch does not amortise.
    """
    ijk = np.asarray(ijk, dtype=np.int64).reshape(-1, 3)
    views = tuple(check_view(v) for v in views)
    probs = classify_groups(source, classifier, [(ijk, v) for v in views], batch_size=batch_size, progress=progress)
    return probs.reshape(len(views), len(ijk), len(CLASS_NAMES))


def classify_groups(source: PatchSource, classifier: Classifier, groups: Sequence[tuple[np.ndarray, View]], *,
                    batch_size: int | None = None, progress: Callable[[float], Any] | None = None) -> np.ndarray:
    """Class probabilities ``(sum of M_g, 4)`` of the groups ``(ijk (M_g, 3), view)``, one after the other, in
    shared batches (a batch may hold the end of one group and the start of the next)."""
    batch_size = _batch_size(classifier, batch_size)
    groups = [(np.asarray(ijk, dtype=np.int64).reshape(-1, 3), check_view(view)) for ijk, view in groups]
    bounds = _group_bounds(groups)
    total = int(bounds[-1])
    if runs_on_device(classifier) and total:
        import torch

        # One upload for the whole call: a pageable upload per batch would wait for the batch before it.
        ijk_on_device = torch.as_tensor(np.concatenate([ijk for ijk, _ in groups]), device=classifier.torch_device)
        on_device = [(ijk_on_device[bounds[g]:bounds[g + 1]], view) for g, (_, view) in enumerate(groups)]
        probs = classify_groups_on_device(source, classifier, on_device, batch_size=batch_size,
                                          progress=progress).cpu().numpy()
        _check_shape(probs.shape, total)
        return probs
    probs = np.zeros((total, len(CLASS_NAMES)), dtype=np.float32)
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        parts = [source.patches(groups[g][0][lo:hi], groups[g][1])
                 for g, lo, hi in _group_segments(start, stop, bounds)]
        patches = parts[0] if len(parts) == 1 else np.concatenate(parts)  # one group: no copy
        out = classifier(np.ascontiguousarray(patches, dtype=np.float32))
        if hasattr(out, "detach"):
            out = out.detach().cpu().numpy()
        out = np.asarray(out, dtype=np.float32)
        _check_shape(out.shape, stop - start)
        probs[start:stop] = out
        if progress is not None:
            progress(float(stop) / max(total, 1))
    return probs


def runs_on_device(classifier: Classifier) -> bool:
    """Whether ``classifier`` takes patch tensors on its torch device (``torch_device`` and ``on_device``, as the
    GPU classifiers of :func:`smicnet_classifier` do) rather than numpy batches."""
    return getattr(classifier, "torch_device", None) is not None and getattr(classifier, "on_device", None) is not None


def classify_groups_on_device(source: PatchSource, classifier: Classifier, groups: Sequence[tuple[Any, View]], *,
                              batch_size: int | None = None, progress: Callable[[float], Any] | None = None) -> Any:
    """:func:`classify_groups` for a classifier that :func:`runs_on_device`, with the voxels of each group an int64
    tensor ``(M_g, 3)`` on its device, returning the probabilities as a tensor there: the patches are cut on the
    device and nothing waits for the GPU (no copy to the host, no synchronisation)."""
    import torch

    batch_size = _batch_size(classifier, batch_size)
    device = classifier.torch_device
    bounds = _group_bounds(groups)
    total = int(bounds[-1])
    outs = []
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        parts = [source.patches_torch(groups[g][0][lo:hi], device, groups[g][1])
                 for g, lo, hi in _group_segments(start, stop, bounds)]
        patches = parts[0] if len(parts) == 1 else torch.cat(parts)
        pad = device_batch_shape(len(patches)) - len(patches)
        if pad:  # repeat the last patch; its extra answers are dropped below
            patches = torch.cat([patches, patches[-1:].expand(pad, *patches.shape[1:])])
        outs.append(classifier.on_device(patches)[: stop - start])
        if progress is not None:
            progress(float(stop) / total)
    if not outs:
        return torch.zeros((0, len(CLASS_NAMES)), dtype=torch.float32, device=device)
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def device_batch_shape(n: int) -> int:
    """The batch size ``n`` patches are padded to on a device (see ``DEVICE_SHAPE_MULTIPLE``)."""
    if n > DEVICE_SHAPE_MULTIPLE:
        return -(-n // DEVICE_SHAPE_MULTIPLE) * DEVICE_SHAPE_MULTIPLE
    return max(DEVICE_MIN_SHAPE, 1 << max(0, n - 1).bit_length())


def _batch_size(classifier: Classifier, batch_size: int | None) -> int:
    """``batch_size``, or the classifier's ``preferred_batch`` (``DEFAULT_BATCH`` if it states none); at least 1."""
    size = int(getattr(classifier, "preferred_batch", DEFAULT_BATCH)) if batch_size is None else int(batch_size)
    if size < 1:
        raise InvalidInputError(f"batch_size must be at least 1, got {size}.")
    return size


def _group_bounds(groups: Sequence[tuple[Any, View]]) -> np.ndarray:
    """Where each group starts in the groups laid end to end, and the total: ``[0, M_0, M_0 + M_1, ...]``."""
    return np.cumsum([0] + [len(ijk) for ijk, _ in groups])


def _group_segments(start: int, stop: int, bounds: np.ndarray) -> list[tuple[int, int, int]]:
    """Rows ``start:stop`` of the groups laid end to end (group ``g`` holds rows ``bounds[g]:bounds[g + 1]``) as
    ``(group, first row, end row)`` runs, rows counted within the group; empty groups are skipped."""
    runs = []
    for g in range(len(bounds) - 1):
        lo, hi = max(start, int(bounds[g])), min(stop, int(bounds[g + 1]))
        if lo < hi:
            runs.append((g, lo - int(bounds[g]), hi - int(bounds[g])))
    return runs


def _check_shape(shape: tuple[int, ...], expected_rows: int) -> None:
    if tuple(shape) != (expected_rows, len(CLASS_NAMES)):
        raise InvalidInputError(f"The classifier returned shape {tuple(shape)}; expected ({expected_rows}, "
                                f"{len(CLASS_NAMES)}).")


def _box_size(box_mm: float) -> int:
    if not np.isfinite(box_mm) or box_mm <= 0:
        raise InvalidInputError(f"The search box must be positive, got {box_mm} mm.")
    return max(1, int(round(box_mm / SPACING_MM)))


def sweep_probabilities(
    image: Image,
    seed_ras,
    classifier: Classifier,
    *,
    box_mm: float = 10.0,
    batch_size: int | None = None,
    progress: Callable[[float], Any] | None = None,
    centre_offset_vox=(0, 1, 1),
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, Image]:
    """Classify the sagittal patch of every voxel of a cube of ``box_mm`` around ``seed_ras``.

    This is the batched-naive sweep (every voxel its own patch); :func:`sweep_coarse_to_fine` is the fast one.

    Args:
        image: the CT / CBCT volume, any orientation and spacing.
        seed_ras: approximate landmark position (RAS mm); must lie inside the volume.
        classifier: ``f(batch) -> (N, 4)`` class probabilities (``CLASS_NAMES`` order) for a float32
            batch shaped ``(N, 1, 81, 81)`` (NCHW, H = j, W = k), already quantised as Keras does.
            For SMICNet pass ``smicnet_classifier(model)``. It may return a numpy array or a torch tensor.
        box_mm: edge of the searched cube, in mm (rounded to whole 0.3 mm voxels).
        batch_size: patches per classifier call (default: the classifier's preference, see classify_voxels).
        progress: called with the fraction done (0..1) after each batch; it may raise
            ``OperationCancelled`` to stop.
        centre_offset_vox: see the module docstring; ``(0, 0, 0)`` for exact parity with the paper.
        preprocess: applied to the raw region before patches are cut (metal zeroing).

    Returns:
        One float32 probability :class:`Image` per landmark (``CLASS_NAMES[:3]``), all on the same
        box grid (LPS-ordered axes, 0.3 mm) with correct IJK-to-RAS.
    """
    n = _box_size(box_mm)
    source = PatchSource(image, seed_ras, n, centre_offset_vox=centre_offset_vox, preprocess=preprocess)
    ijk = np.stack(np.unravel_index(np.arange(n ** 3), (n, n, n)), axis=1)
    probs = classify_voxels(source, classifier, ijk, batch_size=batch_size, progress=progress)
    probs_ijk = probs.reshape(n, n, n, len(CLASS_NAMES))
    return {name: source.box_image(probs_ijk[..., c]) for c, name in enumerate(LANDMARK_NAMES)}


def _lattice(n: int, stride: int) -> np.ndarray:
    """Every ``stride``-th index of ``0..n-1``, centred so the margins at both ends are equal (+-1)."""
    start = ((n - 1) % stride) // 2
    return np.arange(start, n, stride)


#: Lattice kinds of the coarse pass: ``cubic``, every ``stride``-th voxel on each axis; ``bcc``, the same plus the
#: cube centres (body-centred cubic; offset ``stride // 2`` on every axis, exact for an even stride).
LATTICE_KINDS = ("cubic", "bcc")


def _ball_lattice(n: int, stride: int, kind: str = "cubic") -> np.ndarray:
    """The voxels ``(M, 3)`` of the centred ``stride`` lattice of ``kind`` (``LATTICE_KINDS``) of an ``n``-voxel box
    that lie within ``n / 2`` voxels of the box's centre (the inscribed ball).

    Why a body-centred lattice: it is the thinnest covering of space, the most distance from any voxel to its nearest
    lattice voxel for the fewest lattice voxels. On the voxel grid, side 4 leaves every voxel within 2.24 voxels of
    the lattice with 84 % of the voxels of the cubic stride 3 (1.73 voxels); side 5, 2.45 voxels with 43 % (too far
    for SMICNet's narrow responses: see ``smicnet_detector.FAST_LATTICE``); the cubic stride 4 leaves 3.46."""
    if kind not in LATTICE_KINDS:
        raise InvalidInputError(f"lattice must be one of {', '.join(LATTICE_KINDS)}; got {kind!r}.")
    axis = _lattice(n, stride)
    axes = [axis]
    if kind == "bcc":
        axes.append(np.arange((int(axis[0]) + stride // 2) % stride, n, stride))
    lattice = np.concatenate([np.stack(np.meshgrid(a, a, a, indexing="ij"), axis=-1).reshape(-1, 3) for a in axes])
    radius = np.linalg.norm(lattice - (n - 1) / 2.0, axis=1)
    return lattice[radius <= n / 2.0]


#: The 26 neighbours of a voxel (offsets in i, j, k).
_NEIGHBOURS = np.array([d for d in np.ndindex(3, 3, 3) if d != (1, 1, 1)], dtype=np.int64) - 1


def _unscored_neighbours(voxels: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """The distinct 26-neighbours of ``voxels`` ``(M, 3)`` inside the box that are not yet ``scored``."""
    near = (voxels[:, None, :] + _NEIGHBOURS[None, :, :]).reshape(-1, 3)
    near = near[np.all((near >= 0) & (near < np.array(scored.shape)), axis=1)]
    near = near[~scored[tuple(near.T)]]
    flat = np.unique(np.ravel_multi_index(tuple(near.T), scored.shape))
    return np.stack(np.unravel_index(flat, scored.shape), axis=1).astype(np.int64)


def sweep_coarse_to_fine(
    image: Image,
    seed_ras,
    classifier: Classifier,
    *,
    box_mm: float = 20.0,
    coarse_stride: int = 3,
    lattice: str = "cubic",
    keep_threshold: float = 0.05,
    batch_size: int | None = None,
    progress: Callable[[float], Any] | None = None,
    centre_offset_vox=(0, 1, 1),
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    views: Sequence[View] = (SAGITTAL,),
    views_threshold: float = 0.1,
    island_threshold: float | None = None,
) -> tuple[dict[str, Image], int]:
    """Score a lattice of every ``coarse_stride``-th voxel (``lattice="cubic"``; ``"bcc"`` adds the cube centres,
    see ``_ball_lattice``) of the ball inscribed in the box (everything within ``box_mm / 2`` of the seed), then grow
    the scored set voxel by voxel through the landmark responses: each round scores the unscored 26-neighbours of every
    voxel where some landmark reached ``keep_threshold``, until no such voxel has an unscored neighbour. Growth may
    enter the box's corners to complete a region.

    Why a ball: what must be reached is a distance (the round window from a click a few mm off), and the
    cube's corners, 48 % of its volume, lie farther than that. Why growth rather than scoring whole cubes
    around hot lattice voxels: SMICNet is trained to fire only within a voxel or two of a landmark, so its
    responses are small, and cubes of 7^3 voxels around each hot lattice voxel scored mostly background.
    Growth is also exact where it matters: a voxel above ``keep_threshold`` always has all its neighbours
    scored, so every connected region of a class above ``keep_threshold`` (hence every island above any
    higher read-out threshold) that holds one scored voxel is scored completely, with the values of the dense
    :func:`sweep_probabilities`. What the lattice can miss is a region with no lattice voxel above
    ``keep_threshold``; on our phantoms, at stride 3 and 0.02, the points equal the dense sweep's.

    ``views`` (see smicnet_views; must include ``SAGITTAL``, the view the lattice and growth score): when more
    than one, every scored voxel where some landmark reached ``views_threshold`` in the sagittal view is scored
    in the other views too and holds the mean over ``views``; elsewhere the maps keep the sagittal value (below
    ``views_threshold``). The threshold is below the islands' 0.5 so that a landmark the sagittal view places a
    voxel or two off, which the other views place right, is still averaged where they agree. The other views are
    scored in two stages (:func:`view_stages`); with ``island_threshold`` (the read-out's), a voxel whose mean
    can no longer exceed it after the first stage is not scored in the second and holds the mean of the views it
    has (:func:`average_views_staged`): the islands above ``island_threshold`` and their values are those of all
    views, for about a quarter fewer view patches on our phantoms (27 % on the development suites).

    A classifier that ``runs_on_device`` (a GPU model) keeps the growth and the view average on its device
    (``smicnet_device_sweep``): same voxels, same values, one wait for the GPU per round.

    Voxels never scored hold probability 0 in the returned maps. Returns the maps (as
    :func:`sweep_probabilities`) and the number of patches scored (all views).
    """
    n = _box_size(box_mm)
    if int(coarse_stride) != coarse_stride or coarse_stride < 1:
        raise InvalidInputError(f"coarse_stride must be a whole number of voxels >= 1, got {coarse_stride}.")
    if not 0.0 < keep_threshold < 1.0:
        raise InvalidInputError(f"keep_threshold must lie between 0 and 1, got {keep_threshold}.")
    views = _check_views(views)
    if not 0.0 < views_threshold < 1.0:
        raise InvalidInputError(f"views_threshold must lie between 0 and 1, got {views_threshold}.")
    source = PatchSource(image, seed_ras, n, centre_offset_vox=centre_offset_vox, preprocess=preprocess,
                         all_views=len(views) > 1)
    share = 1.0 if len(views) == 1 else 0.85  # of the progress bar, for the sagittal sweep
    if progress is not None and share < 1.0:
        report, progress = progress, (lambda f: report(share * f))
    lattice_ijk = _ball_lattice(n, int(coarse_stride), lattice)
    views_progress = None if progress is None or share == 1.0 else (lambda f: report(share + (1.0 - share) * f))
    if runs_on_device(classifier):
        from .smicnet_device_sweep import grow_on_device

        probs, total = grow_on_device(source, classifier, lattice_ijk, keep_threshold, views, views_threshold,
                                      batch_size=batch_size, progress=progress, views_progress=views_progress,
                                      island_threshold=island_threshold)
    else:
        probs, visited, total = _grow_on_host(source, classifier, lattice_ijk, keep_threshold, batch_size, progress)
        if len(views) > 1:
            total += _average_views(source, classifier, probs, visited, views, views_threshold, batch_size,
                                    views_progress, island_threshold)
    maps = {name: source.box_image(probs[..., c]) for c, name in enumerate(LANDMARK_NAMES)}
    return maps, total


def level_span(level: int) -> tuple[float, float]:
    """The part of the sagittal sweep's progress bar that growth level ``level`` fills (0 is the lattice, most of
    the work: the first 80 %; each growth round then fills half of what is left)."""
    return (0.0, 0.8) if level == 0 else (1.0 - 0.2 * 0.5 ** (level - 1), 1.0 - 0.2 * 0.5 ** level)


def _grow_on_host(source: PatchSource, classifier: Classifier, lattice_ijk: np.ndarray, keep_threshold: float,
                  batch_size: int | None, progress: Callable[[float], Any] | None
                  ) -> tuple[np.ndarray, np.ndarray, int]:
    """The lattice and growth rounds of :func:`sweep_coarse_to_fine` (sagittal view), for a numpy classifier:
    the probabilities ``(n, n, n, 4)``, the scored voxels ``(M, 3)`` in scoring order, and M."""
    n = source.n
    probs = np.zeros((n, n, n, len(CLASS_NAMES)), dtype=np.float32)
    scored = np.zeros((n, n, n), dtype=bool)
    candidates, visited, level = lattice_ijk, [], 0
    while len(candidates):
        lo, hi = level_span(level)
        sub = None if progress is None else (lambda f, lo=lo, hi=hi: progress(lo + (hi - lo) * f))
        p = classify_voxels(source, classifier, candidates, batch_size=batch_size, progress=sub)
        probs[tuple(candidates.T)] = p
        scored[tuple(candidates.T)] = True
        visited.append(candidates)
        hot = candidates[p[:, :len(LANDMARK_NAMES)].max(axis=1) >= keep_threshold]
        candidates = _unscored_neighbours(hot, scored)
        level += 1
    if progress is not None:
        progress(1.0)
    visited_ijk = np.concatenate(visited) if visited else np.zeros((0, 3), dtype=np.int64)
    return probs, visited_ijk, len(visited_ijk)


def _check_views(views: Sequence[View]) -> tuple[View, ...]:
    checked = tuple(check_view(v) for v in views)
    if SAGITTAL not in checked or len(set(checked)) != len(checked):
        raise InvalidInputError(f"views must include the sagittal view {tuple(SAGITTAL)} and name each view once; "
                                f"got {[tuple(v) for v in checked]}.")
    return checked


def view_stages(views: Sequence[View]) -> tuple[tuple[View, ...], ...]:
    """The views other than the sagittal, in the stages :func:`average_views_staged` scores them: first those of
    another plane (the coronal), then the other quarter turns of the sagittal image. Why the coronal first: it is
    a second look at the anatomy, so it says most about a voxel the sagittal sweep rated; the turned sagittal
    images are the sweep's own slice again, whose answers follow the one already known."""
    others = tuple(v for v in views if v != SAGITTAL)
    first = tuple(v for v in others if v.plane != SAGITTAL.plane)
    second = tuple(v for v in others if v.plane == SAGITTAL.plane)
    return tuple(stage for stage in (first, second) if stage)


def island_out_of_reach(summed: Any, views_left: int, n_views: int, island_threshold: float) -> Any:
    """Which voxels cannot end above ``island_threshold`` for any landmark, whatever their ``views_left`` unscored
    views answer: ``summed`` ``(M, 4)`` holds the sums of the views scored (numpy or torch); each view adds at
    most 1, so the mean over ``n_views`` is at most ``(summed + views_left) / n_views``."""
    bound = summed[:, :len(LANDMARK_NAMES)] + float(views_left)
    return (bound <= float(island_threshold) * n_views).all(axis=1)


def average_views_staged(summed: Any, rows: Any, score_sum: Callable[[Any, tuple[View, ...], Any], Any],
                         views: Sequence[View], island_threshold: float | None,
                         progress: Callable[[float], Any] | None = None) -> int:
    """Turn ``summed`` ``(M, 4)``, float64, the sagittal answers of M voxels (numpy or torch), in place into their
    mean over ``views``, stage by stage (:func:`view_stages`); return the patches scored.

    ``rows`` indexes all M voxels (``arange(M)`` of the same kind); ``score_sum(rows, stage, progress)`` returns the
    float64 sum ``(len(rows), 4)`` of the answers of voxels ``rows`` in the views of ``stage``.

    ``island_threshold`` (the read-out's, islands being ``> island_threshold``): after the first stage, a voxel
    that cannot end above it for any landmark (:func:`island_out_of_reach`) leaves, holding the mean of the views
    it has; that mean is below the threshold too (with k of V views and s = V - k left, the bound says the k
    answers sum to at most tV - s, so their mean is at most 1 - V(1 - t)/k < t). Islands, their values and hence
    the points and confidences are exactly those of all views; only sub-threshold map values differ. ``None``:
    every voxel gets every view.
    """
    n_views = len(views)
    stages = view_stages(views)
    work = sum(len(stage) for stage in stages)
    counted, done_work, patches = 1, 0, 0
    for number, stage in enumerate(stages):
        if number and island_threshold is not None and len(rows):
            leaving = island_out_of_reach(summed[rows], n_views - counted, n_views, island_threshold)
            summed[rows[leaving]] /= counted
            rows = rows[~leaving]
        lo, hi = done_work / work, (done_work + len(stage)) / work
        sub = None if progress is None else (lambda f, lo=lo, hi=hi: progress(lo + (hi - lo) * f))
        if len(rows):
            summed[rows] += score_sum(rows, stage, sub)
            patches += len(rows) * len(stage)
        counted += len(stage)
        done_work += len(stage)
    summed[rows] /= counted
    return patches


def _average_views(source: PatchSource, classifier: Classifier, probs: np.ndarray, scored: np.ndarray,
                   views: tuple[View, ...], threshold: float, batch_size: int | None,
                   progress: Callable[[float], Any] | None, island_threshold: float | None = None) -> int:
    """Replace ``probs`` at the ``scored`` voxels ``(M, 3)`` where a landmark reached ``threshold`` by the mean
    over ``views`` (the sagittal answer is already there; see :func:`average_views_staged` for
    ``island_threshold``); return the number of patches scored.

    Why at the end, in one call per stage, rather than riding along in each growth round: cutting a view's patches
    is a dozen kernel launches, and paying them for seven views in every round doubled the GPU sweep. Only the
    scored voxels are searched (unscored ones hold 0): a max over the whole box's landmark channels took 13 ms
    on the host, a fifth of the GPU sweep."""
    promising = scored[probs[tuple(scored.T)][:, :len(LANDMARK_NAMES)].max(axis=1) >= threshold]
    if not len(promising):
        return 0

    def score_sum(rows: np.ndarray, stage: tuple[View, ...], sub: Callable[[float], Any] | None) -> np.ndarray:
        answers = classify_views(source, classifier, promising[rows], stage, batch_size=batch_size, progress=sub)
        return answers.sum(axis=0, dtype=np.float64)

    summed = probs[tuple(promising.T)].astype(np.float64)
    patches = average_views_staged(summed, np.arange(len(promising)), score_sum, views, island_threshold, progress)
    probs[tuple(promising.T)] = summed.astype(np.float32)
    return patches


def landmarks_from_probabilities(
    prob_images: dict[str, Image], threshold: float | dict[str, float] = 0.5, *, connectivity: int = 26
) -> dict[str, tuple[np.ndarray | None, float]]:
    """Per landmark: the probability-weighted centre of mass of the largest (most voxels) connected island
    of voxels above its threshold, in RAS mm, and a confidence (the island's peak probability).

    This is the authors' rule, used in parity mode. ``threshold`` is one value or one per landmark name;
    ``connectivity`` 26 (default) or 6 (the authors' ``ndimage.label`` default). ``(None, 0.0)`` when no
    voxel exceeds the threshold: no point is made up.
    """
    from .landmark_islands import find_islands

    result: dict[str, tuple[np.ndarray | None, float]] = {}
    for name, img in prob_images.items():
        thr = float(threshold[name]) if isinstance(threshold, dict) else float(threshold)
        islands = find_islands(img, thr, connectivity=connectivity)
        if not islands:
            result[name] = (None, 0.0)
            continue
        largest = max(islands, key=lambda isl: isl.voxels)
        result[name] = (largest.centre_ras, largest.peak)
    return result

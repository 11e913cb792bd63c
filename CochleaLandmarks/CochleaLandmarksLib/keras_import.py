"""Load SMICNet weights: the authors' Keras ``.h5`` files (imported by layer order) and our own ``.pt`` files.

Why by order: the six published files are the same network, but Keras numbered the layers per
session, so the names differ (the 7-volume file has ``depthwise_conv2d_5..9``, ``dense_2``, ...).
The weighted layers always come in the same topological order, so that order is the contract:
21 layers, checked one by one against :data:`LAYER_PLAN` (class, weight roles and shapes), and a file
that does not fit is refused with the layer, what it holds and what SMICNet expects there.

Why our own format: a ``.pt`` written by :func:`convert_keras_h5` (or by our training) loads without
h5py, carries what it is (architecture version, classes, input geometry, the SHA256 of the file it
came from) and is checked on load. Registry entries in Keras format are converted on first use and
the converted file is cached beside the model's per-user cache folder; later loads read the cache,
re-checking that it came from the same source file.

Keras -> torch tensor layouts (seed-methods.md section 1.5): depthwise (3,3,C,1) -> (C,1,3,3);
conv (1,1,Cin,Cout) -> (Cout,Cin,1,1); dense (in,out) -> (out,in); BatchNorm gamma/beta/moving
mean/moving variance -> weight/bias/running_mean/running_var. The optimizer state in the files is ignored.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from CochleaCommonLib.atomic import atomic_output
from CochleaCommonLib.devices import require_torch
from CochleaCommonLib.downloads import Fetcher, sha256_file
from CochleaCommonLib.errors import InputFileError, ModelWeightsError
from CochleaCommonLib.model_registry import ModelRegistry, ResolvedModel
from CochleaCommonLib.progress import Progress

from . import smicnet_model as sm

log = logging.getLogger(__name__)

#: Registry ``format`` values: the authors' Keras files, and our own weight files.
KERAS_FORMAT = "keras-h5"
TORCH_FORMAT = "smicnet-pt"
#: Identifies our weight files and the layout of their metadata.
WEIGHTS_FORMAT = "cochlea-toolkit/smicnet-weights"
WEIGHTS_FORMAT_VERSION = 1

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"
_KERAS_CLASS = {"depthwise": "DepthwiseConv2D", "batchnorm": "BatchNormalization", "conv": "Conv2D",
                "dense": "Dense"}
_ROLES = {"depthwise": ("depthwise_kernel", "bias"), "batchnorm": ("gamma", "beta", "moving_mean", "moving_variance"),
          "conv": ("kernel", "bias"), "dense": ("kernel", "bias")}


@dataclass(frozen=True)
class LayerSlot:
    """One weighted Keras layer of SMICNet, in file order: its kind, torch module and Keras weight shapes."""

    kind: str
    module: str
    shapes: dict[str, tuple[int, ...]]
    what: str


def _build_plan() -> tuple[LayerSlot, ...]:
    def dw(module: str, c: int, what: str) -> LayerSlot:
        return LayerSlot("depthwise", module, {"depthwise_kernel": (3, 3, c, 1), "bias": (c,)}, what)

    def bn(module: str, c: int, what: str) -> LayerSlot:
        return LayerSlot("batchnorm", module, {r: (c,) for r in _ROLES["batchnorm"]}, what)

    def conv(module: str, cin: int, cout: int, what: str) -> LayerSlot:
        return LayerSlot("conv", module, {"kernel": (1, 1, cin, cout), "bias": (cout,)}, what)

    plan = [dw("stem.depthwise", 1, "stem depthwise 3x3"), bn("stem.bn", 1, "stem batch normalisation"),
            conv("stem.pointwise", 1, sm.STEM_FILTERS, "stem 1x1 convolution")]
    cin = sm.STEM_FILTERS
    for s, filters in enumerate(sm.STAGE_FILTERS):
        p = f"stages.{s}"
        plan += [dw(f"{p}.block.depthwise", cin, f"stage {s + 1} depthwise 3x3"),
                 bn(f"{p}.block.bn", cin, f"stage {s + 1} batch normalisation"),
                 conv(f"{p}.block.pointwise", cin, filters, f"stage {s + 1} pointwise 1x1 convolution"),
                 conv(f"{p}.shortcut", cin, filters, f"stage {s + 1} strided 1x1 shortcut")]
        cin = filters
    plan += [LayerSlot("dense", "dense", {"kernel": (cin, sm.DENSE_UNITS), "bias": (sm.DENSE_UNITS,)},
                       f"dense {cin}->{sm.DENSE_UNITS}"),
             LayerSlot("dense", "classifier", {"kernel": (sm.DENSE_UNITS, sm.NUM_CLASSES), "bias": (sm.NUM_CLASSES,)},
                       f"dense {sm.DENSE_UNITS}->{sm.NUM_CLASSES} (softmax)")]
    return tuple(plan)


#: The 21 weighted layers of SMICNet in Keras topological order (stage: depthwise, BN, pointwise, shortcut).
LAYER_PLAN = _build_plan()


@dataclass
class KerasLayer:
    """A weighted layer read from a Keras ``.h5``: its name, class (if the file says) and weights by role."""

    name: str
    class_name: str | None
    weights: dict[str, np.ndarray]

    @property
    def kind(self) -> str:
        """depthwise / batchnorm / conv / dense, from the class or else from the weight roles and ranks."""
        for kind, cls in _KERAS_CLASS.items():
            if self.class_name == cls:
                return kind
        if "depthwise_kernel" in self.weights:
            return "depthwise"
        if "gamma" in self.weights or "moving_mean" in self.weights:
            return "batchnorm"
        kernel = self.weights.get("kernel")
        if kernel is not None and kernel.ndim == 2:
            return "dense"
        if kernel is not None and kernel.ndim == 4:
            return "conv"
        return self.class_name or "unknown"

    def describe(self) -> str:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in self.weights.items())
        return f"'{self.name}' ({self.class_name or self.kind}: {shapes})"


# --- reading the Keras file ---------------------------------------------------------------------
def _sniff(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(512)
    except OSError as exc:
        raise InputFileError(f"Cannot read the weights file {path}: {exc.strerror or exc}.") from exc


def _not_hdf5_error(path: Path, head: bytes) -> ModelWeightsError:
    if not head:
        why = "it is empty (an interrupted download?)"
    elif head.lstrip()[:1] == b"<":
        why = ("it is a web page (HTML), not weights: download the file's 'raw' address, not the GitHub page "
               "showing it")
    elif head.startswith(_ZIP_MAGIC):
        why = "it is a zip archive (a Keras 3 '.keras' file or a PyTorch file), not a Keras 2 HDF5 file"
    else:
        why = "it is not an HDF5 file (corrupt, truncated or another format)"
    return ModelWeightsError(f"{path} cannot be read as Keras SMICNet weights: {why}.")


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_keras_layers(path: str | os.PathLike) -> tuple[list[KerasLayer], dict[str, Any]]:
    """The weighted layers of a Keras 2 ``.h5`` (full model or ``save_weights``), in file order, plus file info.

    ``info`` holds ``keras_version``, ``backend`` and the parsed ``model_config`` (None when absent).
    Raises :class:`ModelWeightsError` for a file that is not readable Keras HDF5.
    """
    import h5py

    p = Path(path)
    head = _sniff(p)
    if not head.startswith(_HDF5_MAGIC) and not h5py.is_hdf5(p):
        raise _not_hdf5_error(p, head)
    try:
        with h5py.File(p, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in root.attrs:
                raise ModelWeightsError(
                    f"{p} is an HDF5 file but not a Keras model or weights file (it has no 'layer_names' list); "
                    "choose one of the SMICNet '.h5' files published by the authors.")
            config = None
            if "model_config" in f.attrs:
                try:
                    config = json.loads(_text(f.attrs["model_config"]))
                except (ValueError, TypeError):
                    config = None
            classes = {}
            if isinstance(config, dict):
                for layer in config.get("config", {}).get("layers", []):
                    classes[layer.get("config", {}).get("name", layer.get("name"))] = layer.get("class_name")
            layers = []
            for raw_name in root.attrs["layer_names"]:
                name = _text(raw_name)
                group = root[name]
                weights: dict[str, np.ndarray] = {}
                for raw_weight in group.attrs.get("weight_names", []):
                    weight = _text(raw_weight)
                    role = weight.rsplit("/", 1)[-1].split(":", 1)[0]
                    weights[role] = np.asarray(group[weight], dtype=np.float32)
                if weights:
                    layers.append(KerasLayer(name, classes.get(name), weights))
            info = {"keras_version": _text(f.attrs.get("keras_version", root.attrs.get("keras_version", ""))),
                    "backend": _text(f.attrs.get("backend", root.attrs.get("backend", ""))),
                    "model_config": config}
    except ModelWeightsError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise ModelWeightsError(f"{p} is a damaged Keras weights file (reading it failed: {exc}); download it "
                                "again or choose another file.") from exc
    return layers, info


def _check_config(config: dict[str, Any] | None, where: Path) -> None:
    """Refuse a Keras model whose non-weight settings differ from SMICNet (same shapes, other network)."""
    if not isinstance(config, dict):
        return
    layers = config.get("config", {}).get("layers", [])
    problems = []
    convs = [lay["config"] for lay in layers if lay.get("class_name") == "Conv2D"]
    strides = [tuple(c.get("strides", (1, 1))) for c in convs]
    expected = [(1, 1)] + [s for st in sm.SHORTCUT_STRIDES for s in ((1, 1), (st, st))]
    if len(strides) == len(expected) and strides != expected:
        problems.append(f"Conv2D strides {strides}, expected {expected}")
    for lay in layers:
        cfg, cls = lay.get("config", {}), lay.get("class_name")
        if cls == "LeakyReLU" and abs(float(cfg.get("alpha", cfg.get("negative_slope", 0.3))) - sm.LEAKY_SLOPE) > 1e-6:
            problems.append(f"'{cfg.get('name')}' has LeakyReLU slope {cfg.get('alpha')}, expected 0.3")
        if cls == "BatchNormalization" and abs(float(cfg.get("epsilon", sm.BN_EPS)) - sm.BN_EPS) > 1e-9:
            problems.append(f"'{cfg.get('name')}' has BatchNorm epsilon {cfg.get('epsilon')}, expected 0.001")
        if cls in ("DepthwiseConv2D", "Conv2D") and cfg.get("activation", "linear") != "linear":
            problems.append(f"'{cfg.get('name')}' has activation {cfg.get('activation')}, expected linear")
    dense = [lay["config"] for lay in layers if lay.get("class_name") == "Dense"]
    if len(dense) == 2 and [d.get("activation") for d in dense] != ["linear", "softmax"]:
        problems.append(f"dense activations {[d.get('activation') for d in dense]}, expected ['linear', 'softmax']")
    if problems:
        raise ModelWeightsError(f"{where} holds a Keras model that is not SMICNet: " + "; ".join(problems) + ".")


def keras_state_arrays(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Map a Keras SMICNet ``.h5`` onto our parameter names, by layer order; numpy only (no torch needed).

    Returns (state arrays in torch layout keyed like ``SMICNet.state_dict()`` minus ``num_batches_tracked``,
    file info). Raises :class:`ModelWeightsError` naming the first layer that does not fit, what it holds
    and what SMICNet expects there.
    """
    p = Path(path)
    layers, info = read_keras_layers(p)
    _check_config(info.get("model_config"), p)
    state: dict[str, np.ndarray] = {}
    for index, (slot, layer) in enumerate(zip(LAYER_PLAN, layers), start=1):
        place = f"weighted layer {index} of {len(LAYER_PLAN)} ({slot.what})"
        if layer.kind != slot.kind:
            raise ModelWeightsError(f"{p} is not an SMICNet weights file: {place} should be a "
                                    f"{_KERAS_CLASS[slot.kind]}, but the file has {layer.describe()}.")
        if set(layer.weights) != set(slot.shapes):
            raise ModelWeightsError(f"{p} is not an SMICNet weights file: {place} should hold "
                                    f"{sorted(slot.shapes)}, but the file has {layer.describe()}.")
        for role, shape in slot.shapes.items():
            value = layer.weights[role]
            if value.shape != shape:
                raise ModelWeightsError(f"{p} is not an SMICNet weights file: {place}, weight '{role}' should have "
                                        f"shape {shape}, but the file has {layer.describe()}.")
            if not np.isfinite(value).all():
                raise ModelWeightsError(f"{p} is corrupt: {place} ('{layer.name}'), weight '{role}' contains NaN "
                                        "or infinite values. Download the file again.")
        state.update(_to_torch_layout(slot, layer.weights))
    if len(layers) != len(LAYER_PLAN):
        n = len(LAYER_PLAN)
        extra = f" (the first extra one is {layers[n].describe()})" if len(layers) > n else ""
        raise ModelWeightsError(f"{p} is not an SMICNet weights file: it has {len(layers)} layers with weights, "
                                f"SMICNet has {len(LAYER_PLAN)}{extra}.")
    return state, info


def _to_torch_layout(slot: LayerSlot, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    m = slot.module
    if slot.kind == "depthwise":
        k = w["depthwise_kernel"]  # (kh, kw, C, mult) -> (C * mult, 1, kh, kw)
        return {f"{m}.weight": k.transpose(2, 3, 0, 1).reshape(-1, 1, k.shape[0], k.shape[1]), f"{m}.bias": w["bias"]}
    if slot.kind == "conv":
        return {f"{m}.weight": w["kernel"].transpose(3, 2, 0, 1), f"{m}.bias": w["bias"]}
    if slot.kind == "dense":
        return {f"{m}.weight": w["kernel"].T, f"{m}.bias": w["bias"]}
    return {f"{m}.weight": w["gamma"], f"{m}.bias": w["beta"], f"{m}.running_mean": w["moving_mean"],
            f"{m}.running_var": w["moving_variance"]}


# --- our weight format --------------------------------------------------------------------------
def _fill_model(state: dict[str, Any], where: Path, device: Any = None) -> Any:
    torch = require_torch()
    model = sm.build_smicnet()
    target = model.state_dict()
    missing = sorted(k for k in target if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in target)
    if missing or unexpected:
        raise ModelWeightsError(f"{where} does not fit SMICNet: missing {missing[:5]}, unexpected {unexpected[:5]}.")
    for key, value in state.items():
        tensor = torch.as_tensor(np.ascontiguousarray(value) if isinstance(value, np.ndarray) else value)
        if tuple(tensor.shape) != tuple(target[key].shape):
            raise ModelWeightsError(f"{where} does not fit SMICNet: '{key}' has shape {tuple(tensor.shape)}, "
                                    f"expected {tuple(target[key].shape)}.")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelWeightsError(f"{where} is corrupt: '{key}' contains NaN or infinite values.")
        target[key] = tensor.to(target[key].dtype)
    model.load_state_dict(target, strict=True)
    if device is not None:
        model = model.to(device)
    return model.eval()


def load_keras_h5(path: str | os.PathLike, *, device: Any = None) -> Any:
    """An eval-mode SMICNet holding the weights of an authors' Keras ``.h5`` (mapped by layer order)."""
    p = Path(path)
    state, info = keras_state_arrays(p)
    model = _fill_model(state, p, device)
    model.metadata = {"source_file": p.name, "source_format": KERAS_FORMAT,
                      "keras_version": info.get("keras_version", "")}
    return model


def _weights_document(state: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    return {"format": WEIGHTS_FORMAT, "format_version": WEIGHTS_FORMAT_VERSION, "architecture": sm.ARCHITECTURE,
            "architecture_version": sm.ARCHITECTURE_VERSION, "classes": list(sm.CLASS_NAMES),
            "input": {"patch": [sm.PATCH_SIZE, sm.PATCH_SIZE], "spacing_mm": sm.SPACING_MM,
                      "layout": "NCHW; H = patch rows = volume axis j, W = columns = axis k",
                      "preprocessing": "per-patch min-max, x255, uint8 truncation, /255 (Keras array_to_img)"},
            "source": source, "state_dict": state}


def save_smicnet_weights(model: Any, out_path: str | os.PathLike, *, source: dict[str, Any] | None = None) -> Path:
    """Write a model's weights in our format (torch ``.pt``: state_dict + metadata), atomically."""
    torch = require_torch()
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    doc = _weights_document(state, dict(source or {}))
    out = Path(out_path)
    try:
        with atomic_output(out) as tmp:
            torch.save(doc, tmp)
    except OSError as exc:
        raise InputFileError(f"Cannot write the weights file {out}: {exc}.") from exc
    return out


def convert_keras_h5(path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Convert an authors' Keras ``.h5`` into our ``.pt`` format, recording the source file's name and SHA256."""
    p = Path(path)
    model = load_keras_h5(p)
    source = {"file": p.name, "sha256": sha256_file(p), "format": KERAS_FORMAT,
              "keras_version": model.metadata.get("keras_version", "")}
    return save_smicnet_weights(model, out_path, source=source)


def read_smicnet_pt(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check one of our ``.pt`` weight files; returns its document (metadata + ``state_dict``)."""
    torch = require_torch()
    p = Path(path)
    head = _sniff(p)
    try:
        doc = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle and storage errors all mean: not a readable weights file
        raise ModelWeightsError(f"{p} cannot be read as SMICNet weights ({'empty file' if not head else exc}); "
                                "it is corrupt or not a CochleaToolkit weights file.") from exc
    if not isinstance(doc, dict) or doc.get("format") != WEIGHTS_FORMAT or "state_dict" not in doc:
        raise ModelWeightsError(f"{p} is a PyTorch file but not a CochleaToolkit SMICNet weights file "
                                f"(expected format '{WEIGHTS_FORMAT}').")
    if doc.get("architecture") != sm.ARCHITECTURE or doc.get("architecture_version") != sm.ARCHITECTURE_VERSION:
        raise ModelWeightsError(f"{p} holds weights of '{doc.get('architecture')}' version "
                                f"{doc.get('architecture_version')}; this CochleaToolkit reads {sm.ARCHITECTURE} "
                                f"version {sm.ARCHITECTURE_VERSION}. Update CochleaToolkit or convert the file again.")
    if list(doc.get("classes", [])) != list(sm.CLASS_NAMES):
        raise ModelWeightsError(f"{p} was trained for the classes {doc.get('classes')}, "
                                f"expected {list(sm.CLASS_NAMES)}.")
    return doc


def load_smicnet_pt(path: str | os.PathLike, *, device: Any = None) -> Any:
    """An eval-mode SMICNet from one of our ``.pt`` files (checked: format, architecture, classes, shapes)."""
    p = Path(path)
    return _model_from_document(read_smicnet_pt(p), p, device)


def _model_from_document(doc: dict[str, Any], p: Path, device: Any) -> Any:
    model = _fill_model(doc["state_dict"], p, device)
    source = doc.get("source") or {}
    model.metadata = {"source_file": source.get("file", p.name), "source_format": source.get("format", TORCH_FORMAT),
                      "source_sha256": source.get("sha256", "")}
    if source.get("landmark_pixel") is not None:  # our trained weights say where they see the landmark
        model.metadata["landmark_pixel"] = source["landmark_pixel"]
    return model


# --- by registry id or path ---------------------------------------------------------------------
def _detect_format(path: Path) -> str:
    head = _sniff(path)
    if head.startswith(_HDF5_MAGIC):
        return KERAS_FORMAT
    if head.startswith(_ZIP_MAGIC):
        return TORCH_FORMAT
    import h5py

    if h5py.is_hdf5(path):
        return KERAS_FORMAT
    if path.suffix.lower() in (".pt", ".pth"):
        return TORCH_FORMAT
    raise _not_hdf5_error(path, head)


def converted_cache_path(found: ResolvedModel, registry: ModelRegistry) -> Path:
    """Where the ``.pt`` converted from a Keras file is cached: beside the model's cache file (or by SHA256)."""
    tag = f"smicnet-v{sm.ARCHITECTURE_VERSION}.pt"
    if found.entry is not None:
        return registry.cache_path(found.entry).parent / f"{Path(found.entry.file).stem}.{tag}"
    return registry.cache_dir / "converted" / f"{found.path.stem}-{found.sha256[:16]}.{tag}"


def _load_keras_cached(found: ResolvedModel, registry: ModelRegistry, device: Any, cache: bool) -> Any:
    cached = converted_cache_path(found, registry)
    if cache and cached.is_file():
        try:
            doc = read_smicnet_pt(cached)
            if (doc.get("source") or {}).get("sha256") == found.sha256:
                return _model_from_document(doc, cached, device)
            log.info("The converted weights %s came from another file; converting again.", cached)
        except ModelWeightsError as exc:
            log.warning("Ignoring the damaged converted weights %s (%s); converting again.", cached, exc)
    model = load_keras_h5(found.path, device=device)
    if cache:
        source = {"file": found.path.name, "sha256": found.sha256, "format": KERAS_FORMAT,
                  "keras_version": model.metadata.get("keras_version", "")}
        try:
            save_smicnet_weights(model, cached, source=source)
        except InputFileError as exc:  # a read-only cache only costs a conversion next time
            log.info("Could not cache the converted weights (%s).", exc)
    return model


def load_smicnet_weights(path_or_id: str | os.PathLike, registry: ModelRegistry | None = None, *,
                         allow_download: bool = False, fetcher: Fetcher | None = None, device: Any = None,
                         cache: bool = True, progress: Progress | None = None) -> Any:
    """An eval-mode SMICNet from a registry id (``smicnet-published-5``) or a file (Keras ``.h5`` or our ``.pt``).

    Registry ids are found and SHA256-checked by :class:`ModelRegistry` (downloaded only when
    ``allow_download``). Keras files are converted, and the conversion is cached unless ``cache`` is False.
    A user's file named like a registered file but with another SHA256 is refused as corrupt (a damaged
    download of a published model must not run silently). ``model.metadata`` says what was loaded.
    Raises :class:`ModelWeightsError` (missing, corrupt or not SMICNet), :class:`InvalidInputError`
    (unknown id), :class:`InputFileError` (no such file), :class:`MissingDependencyError` (no torch).
    """
    require_torch()
    reg = registry if registry is not None else ModelRegistry.load()
    found = reg.locate(path_or_id, allow_download=allow_download, fetcher=fetcher, progress=progress)
    if found.entry is None:
        namesake = next((e for e in reg.entries if e.file == found.path.name), None)
        if namesake is not None:
            raise ModelWeightsError(
                f"{found.path} has the name of the weights of model '{namesake.id}' but not its content (SHA256 "
                f"{found.sha256}, expected {namesake.sha256}): the file is corrupt or incomplete. Download it again "
                f"(`cochlea models download {namesake.id}`) or rename it if it really is a different model.")
    fmt = found.entry.format if found.entry is not None and found.entry.format in (KERAS_FORMAT, TORCH_FORMAT) \
        else _detect_format(found.path)
    if fmt == KERAS_FORMAT:
        model = _load_keras_cached(found, reg, device, cache)
    else:
        model = load_smicnet_pt(found.path, device=device)
    model.metadata = {**getattr(model, "metadata", {}), "model_id": found.entry.id if found.entry else None,
                      "path": str(found.path), "sha256": found.sha256, "origin": found.origin, "format": fmt}
    return model
